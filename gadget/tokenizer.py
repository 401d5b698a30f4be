"""Hugging Face tokenizers for gadget's front ends: from a model id / local folder, or from a GGUF file.

From a GGUF file, transformers builds the tokenizer (and its chat template) from the file's own
metadata, offline (``AutoTokenizer.from_pretrained(folder, gguf_file=name)``). That reads the
whole vocabulary through gguf-py and takes seconds, so the result is saved once in a cache folder
(``$GADGET_CACHE`` or ``~/.cache/gadget/tokenizers``) keyed by the file's identity, and loaded from
there (tens of milliseconds) afterwards. gadget never writes a tokenizer of its own.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

__all__ = ['load_tokenizer', 'cache_dir', 'eog_token_ids']

# Token texts that end a generation in the chat formats in common use (llama.cpp marks the same
# kinds of tokens as end-of-generation).
_EOG_TEXTS = {'<|endoftext|>', '<|im_end|>', '<|eot_id|>', '<|eom_id|>', '<|end|>', '<end_of_turn>',
              '</s>', '<|end_of_text|>', '<|return|>', '<|call|>', '<EOT>', '<|END_OF_TURN_TOKEN|>'}


def cache_dir() -> Path:
    """Where gadget caches derived files (tokenizers, the default model)."""
    root = os.environ.get('GADGET_CACHE')
    return Path(root) if root else Path.home() / '.cache' / 'gadget'


def _file_key(path: Path) -> str:
    stat = path.stat()
    ident = f'{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}'.encode()
    return hashlib.sha256(ident).hexdigest()[:24]


def load_tokenizer(gguf_path: str | os.PathLike | None = None, model_id: str | os.PathLike | None = None,
                   use_cache: bool = True) -> Any:
    """A ``transformers`` tokenizer: from ``model_id`` (a Hugging Face id or a local folder) when
    given, else built from the GGUF file's metadata (cached after the first time)."""
    from transformers import AutoTokenizer

    if model_id is not None:
        return AutoTokenizer.from_pretrained(str(model_id))
    if gguf_path is None:
        raise ValueError('load_tokenizer needs a GGUF path or a model_id')
    path = Path(gguf_path)
    target = cache_dir() / 'tokenizers' / _file_key(path)
    if use_cache and (target / 'tokenizer.json').exists():
        return AutoTokenizer.from_pretrained(str(target))
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if use_cache:
        # Written to a private folder and renamed, so a concurrent or interrupted save never leaves
        # a half-written tokenizer where the next load would find it.
        tmp = target.with_name(target.name + f'.tmp{os.getpid()}')
        try:
            tokenizer.save_pretrained(str(tmp))
            os.replace(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # read-only home or a concurrent save: no cache
    return tokenizer


def eog_token_ids(tokenizer: Any, gguf: Any = None) -> set[int]:
    """Every token id that ends a generation: the tokenizer's EOS, the GGUF file's EOS/EOT/EOM ids,
    and special tokens whose text marks an end of turn."""
    ids: set[int] = set()
    if getattr(tokenizer, 'eos_token_id', None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    if gguf is not None:
        for key in ('tokenizer.ggml.eos_token_id', 'tokenizer.ggml.eot_token_id',
                    'tokenizer.ggml.eom_token_id'):
            value = gguf.get_field(key, None)
            if value is not None:
                ids.add(int(value))
    vocab = tokenizer.get_vocab()
    for text in _EOG_TEXTS:
        if text in vocab:
            ids.add(int(vocab[text]))
    return ids
