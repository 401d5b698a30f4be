"""What every converter shares: the output types, tensor sources (safetensors folders, state
dicts), streamed tensors, and the tokenizer's metadata (``tokenizer.ggml.*``, llama.cpp's layout).

An architecture's converter (``llama.py``) maps its checkpoint's tensor names and config to
llama.cpp's, and uses these for the rest.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..ggml import GgmlType
from ..gguf import GgufFile, GgufTensor
from ..gguf import keys as K
from ..types import is_quantized, numpy_dtype, quantize, row_size

logger = logging.getLogger('gadget.convert')

# outtype -> (GGML type of the 2-D weights, llama.cpp's LLAMA_FTYPE value for general.file_type)
OUTTYPES: dict[str, tuple[GgmlType, int]] = {
    'F32': (GgmlType.F32, 0),     # LLAMA_FTYPE_ALL_F32
    'F16': (GgmlType.F16, 1),     # LLAMA_FTYPE_MOSTLY_F16
    'Q8_0': (GgmlType.Q8_0, 7),   # LLAMA_FTYPE_MOSTLY_Q8_0
    'BF16': (GgmlType.BF16, 32),  # LLAMA_FTYPE_MOSTLY_BF16
}
QUANTIZATION_VERSION = 2         # GGML_QNT_VERSION

# GGUF token types (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


# Pre-tokenizer regexes llama.cpp knows by name (from the GPT-2 and Llama 3 tokenizers).
_GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"""
_LLAMA3_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"""
                 r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
_BYTE_TOKEN = re.compile(r'^<0x[0-9A-Fa-f]{2}>$')



# --------------------------------------------------------------------------------------------
# Sources of tensors
# --------------------------------------------------------------------------------------------

class TensorSource:
    """Names, shapes (numpy order) and float32 data of a checkpoint's tensors, read one at a time."""

    def names(self) -> list[str]:
        """The checkpoint's tensor names (Hugging Face names), in its own order."""
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor ``name`` in numpy order, without reading its data."""
        raise NotImplementedError

    def load(self, name: str) -> np.ndarray:
        """The data of tensor ``name`` as a float32 numpy array (numpy order)."""
        raise NotImplementedError


def optional(module: str, name: str) -> Any:
    """``module.name`` of one of the converter's optional dependencies, or an ImportError that says
    how to install them."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        raise ImportError(f'converting a Hugging Face checkpoint needs {module}: '
                          "pip install 'gadget[convert]' "
                          '(safetensors and transformers)') from None


def torch_to_float32(tensor: Any, name: str) -> np.ndarray:
    """A torch tensor as a float32 numpy array on the CPU (same shape); a tensor on the meta device
    (no data) is refused naming ``name``."""
    import torch

    if tensor.device.type == 'meta':
        raise ValueError(f'tensor {name!r} is on the meta device (no data): load the model with weights')
    return tensor.detach().to(device='cpu', dtype=torch.float32).numpy()


class SafetensorsSource(TensorSource):
    """The ``*.safetensors`` files of a folder, opened with ``safe_open`` as numpy arrays (data read
    per tensor; BF16 through ml_dtypes), so no torch is needed."""

    def __init__(self, folder: Path, stack: ExitStack):
        from safetensors import safe_open

        from ..types import bfloat16
        bfloat16()            # registers numpy's bfloat16 dtype, which BF16 checkpoints need

        index = folder / 'model.safetensors.index.json'
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding='utf-8')).get('weight_map')
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index}: no 'weight_map' object")
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (folder / f).is_file()]
            if missing:
                raise FileNotFoundError(f'{folder}: shards listed in {index.name} are missing: '
                                        f'{", ".join(missing)}')
        else:
            files = sorted(p.name for p in folder.glob('*.safetensors'))
        if not files:
            found = sorted(p.name for p in folder.glob('*.bin'))
            hint = (f' (found {", ".join(found[:3])}: re-save the model with save_pretrained(..., '
                    'safe_serialization=True), or pass the loaded model object)') if found else ''
            raise FileNotFoundError(f'{folder}: no *.safetensors weights{hint}')
        self._where: dict[str, Any] = {}
        for file in files:
            handle = stack.enter_context(safe_open(str(folder / file), framework='numpy'))
            for name in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                if name in self._where:
                    raise ValueError(f'{folder}: tensor {name!r} appears in more than one shard')
                self._where[name] = handle

    def names(self) -> list[str]:
        """The tensor names of every shard, shard by shard."""
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor ``name`` in numpy order, read from its shard's header."""
        return tuple(self._where[name].get_slice(name).get_shape())

    def load(self, name: str) -> np.ndarray:
        """Tensor ``name`` read from its shard as float32 (numpy order)."""
        return np.asarray(self._where[name].get_tensor(name), dtype=np.float32)


class StateDictSource(TensorSource):
    """The ``state_dict()`` of an in-memory ``torch.nn.Module``."""

    def __init__(self, state: Mapping[str, Any]):
        self._state = state

    def names(self) -> list[str]:
        """The state dict's keys, in its order."""
        return list(self._state)

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor ``name`` (torch's order, which is numpy's)."""
        return tuple(self._state[name].shape)

    def load(self, name: str) -> np.ndarray:
        """Tensor ``name`` copied to the CPU as float32 (numpy order)."""
        return torch_to_float32(self._state[name], name)


# --------------------------------------------------------------------------------------------
# The tensor plan
# --------------------------------------------------------------------------------------------

@dataclass
class Planned:
    """One tensor of the output file: its name, numpy-order shape and GGML type, and how to load
    its float32 data (called once, when the file is written)."""
    name: str                                 # llama.cpp's name
    shape: tuple[int, ...]                    # numpy order
    type: GgmlType
    load: Callable[[], np.ndarray]            # float32 data, numpy order, already permuted


class StreamedTensor(GgufTensor):
    """A tensor whose data are produced when :meth:`GgufFile.save` writes them and then dropped,
    so the writer never holds more than one converted tensor."""

    __slots__ = ('_produce',)

    def __init__(self, name: str, type: GgmlType, shape: tuple[int, ...], produce: Callable[[], np.ndarray]):
        n_rows = int(np.prod(shape[:-1], dtype=np.int64))
        super().__init__(name, type, tuple(reversed(shape)), row_size(type, shape[-1]) * n_rows)
        self._produce = produce

    @property
    def array(self) -> np.ndarray:
        """The encoded data, produced anew on every access (not cached, unlike GgufTensor.array)."""
        return self._produce()


def encode(data: np.ndarray, gtype: GgmlType) -> np.ndarray:
    """float32 ``data`` (numpy order) as the bytes of a ``gtype`` tensor: quantized blocks (a uint8
    array of rows) for a quantized type, else a C-contiguous array of the type's numpy dtype."""
    if is_quantized(gtype):
        return quantize(data, gtype)
    return np.ascontiguousarray(data, dtype=numpy_dtype(gtype))


def save_streamed(gguf: GgufFile, plan: Sequence[Planned], out_path: Path, progress: bool = True) -> None:
    """Save ``gguf`` with the ``plan``'s tensors, each loaded, checked, encoded and written in turn
    (peak memory about one tensor), with a tqdm progress bar unless ``progress`` is False."""
    with tqdm(total=len(plan), desc=f'converting to {out_path.name}', unit='tensor',
              disable=not progress) as bar:
        def produce(p: Planned) -> np.ndarray:
            data = p.load()
            if data.shape != p.shape:
                raise ValueError(f'{p.name}: read shape {data.shape}, expected {p.shape}')
            encoded = encode(data, p.type)
            bar.set_postfix_str(p.name, refresh=False)
            bar.update()
            return encoded

        for p in plan:
            gguf.tensors[p.name] = StreamedTensor(p.name, p.type, p.shape, partial(produce, p))
        gguf.save(out_path)


def check_tensor_names(unknown: Sequence[str], found: Sequence[Planned], required: Sequence[str], model: str,
                       hint: Callable[[list[str]], str] = lambda missing: '') -> None:
    """Refuse a checkpoint with tensors no llama.cpp name maps (``unknown``) or without a tensor the
    ``model`` needs (``required`` llama.cpp names not in ``found``); ``hint(missing)`` adds to the
    message."""
    if unknown:
        raise ValueError(f'{len(unknown)} tensors of the checkpoint have no llama.cpp name: '
                         f'{", ".join(unknown[:8])}{", ..." if len(unknown) > 8 else ""}')
    names = {p.name for p in found}
    missing = [n for n in required if n not in names]
    if missing:
        raise ValueError(f'the checkpoint lacks {len(missing)} tensors {model} needs: '
                         f'{", ".join(missing[:8])}{", ..." if len(missing) > 8 else ""}' + hint(missing))


def weight_type(name: str, shape: tuple[int, ...], outtype: str) -> GgmlType:
    """The GGML type tensor ``name`` of numpy ``shape`` is written as for ``outtype`` (a key of
    ``OUTTYPES``), as llama.cpp chooses: 1-D tensors stay F32, and Q8_0 falls back to F16 where
    rows (``shape[-1]``, ggml's ``ne[0]``) are not whole blocks of 32."""
    if len(shape) < 2:
        return GgmlType.F32          # norms, biases and rope_freqs stay F32, as in llama.cpp
    gtype = OUTTYPES[outtype][0]
    if gtype == GgmlType.Q8_0 and shape[-1] % 32:
        logger.info('%s: rows of %d are not a multiple of 32, written as F16 instead of Q8_0',
                    name, shape[-1])
        return GgmlType.F16
    return gtype



def _tokenizer_json(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, 'backend_tokenizer', None)
    if backend is None:
        raise ValueError(f'{type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer: '
                         'convert needs the tokenizer.json model; load it with AutoTokenizer (use_fast=True)')
    return json.loads(backend.to_str())


def components(node: Mapping[str, Any] | None) -> Iterator[Mapping[str, Any]]:
    """A normalizer / pre-tokenizer / decoder and, for a Sequence, its members, flattened."""
    if not node:
        return
    if node.get('type') == 'Sequence':
        for child in node.get('pretokenizers') or node.get('normalizers') or node.get('decoders') or []:
            yield from components(child)
    else:
        yield node


def _pre_tokenizer_name(pre: Mapping[str, Any] | None) -> str:
    """llama.cpp's name for a byte-level BPE pre-tokenizer, found from its structure."""
    parts = list(components(pre))
    splits = [p for p in parts if p.get('type') == 'Split']
    byte_level = [p for p in parts if p.get('type') == 'ByteLevel']
    if not splits and len(byte_level) == 1 and byte_level[0].get('use_regex', True):
        return 'gpt-2'                      # ByteLevel's built-in regex is GPT-2's
    if len(splits) == 1 and len(parts) == 2 and byte_level and not byte_level[0].get('use_regex', True):
        pattern = splits[0].get('pattern', {}).get('Regex')
        if pattern == _LLAMA3_REGEX:
            return 'llama-bpe'
        if pattern == _GPT2_REGEX:
            return 'gpt-2'
    logger.warning("pre-tokenizer %s is not one llama.cpp knows by name; writing 'default'",
                   [p.get('type') for p in parts])
    return 'default'


def _merge_strings(merges: Sequence[Any]) -> list[str]:
    # tokenizers >= 0.20 saves merges as [left, right] pairs, older versions as 'left right'.
    return [m if isinstance(m, str) else f'{m[0]} {m[1]}' for m in merges]


def _add_space_prefix(spec: Mapping[str, Any]) -> bool:
    for part in components(spec.get('normalizer')):
        if part.get('type') == 'Prepend' and part.get('prepend') == '\u2581':
            return True
    for part in components(spec.get('pre_tokenizer')):
        if part.get('type') == 'Metaspace':
            legacy = 'always' if part.get('add_prefix_space', True) else 'never'   # tokenizers < 0.14
            return part.get('prepend_scheme', legacy) != 'never'
        if part.get('type') == 'ByteLevel':
            return bool(part.get('add_prefix_space', False))
    return False


def set_tokenizer_fields(gguf: GgufFile, tokenizer: Any, n_vocab: int, bos_token_id: int | None = None,
                         eos_token_id: int | None = None) -> None:
    """tokenizer.ggml.* and tokenizer.chat_template from a Hugging Face fast tokenizer.

    Byte-level BPE becomes llama.cpp's 'gpt2' vocabulary (tokens, types, merges); BPE with byte
    fallback and Unigram become its 'llama' (SentencePiece) vocabulary (tokens, types, scores).
    """
    spec = _tokenizer_json(tokenizer)
    model = spec['model']
    kind = model.get('type')
    vocab: dict[str, int] = tokenizer.get_vocab()
    too_big = {t: i for t, i in vocab.items() if not 0 <= i < n_vocab}
    if too_big:
        raise ValueError(f'the tokenizer has ids the embedding ({n_vocab} rows) does not cover: '
                         f'{list(too_big.items())[:5]}; is this the tokenizer of this model?')
    added = {i: tok for i, tok in tokenizer.added_tokens_decoder.items()}
    unk_id = tokenizer.unk_token_id

    tokens: list[str] = [f'[PAD{i}]' for i in range(n_vocab)]
    types = np.full(n_vocab, UNUSED, dtype=np.int32)
    for text, i in vocab.items():
        tokens[i] = text
        if i in added:
            # llama.cpp stores added tokens as raw text (not byte-level encoded), like the HF vocab
            types[i] = CONTROL if added[i].special else USER_DEFINED
        else:
            types[i] = NORMAL

    if kind == 'BPE' and not model.get('byte_fallback'):
        decoders = [p.get('type') for p in components(spec.get('decoder'))]
        pres = [p.get('type') for p in components(spec.get('pre_tokenizer'))]
        if 'ByteLevel' not in decoders and 'ByteLevel' not in pres:
            raise ValueError('unsupported tokenizer: BPE that is neither byte-level nor byte-fallback')
        gguf.set_field(K.TOKENIZER_MODEL, 'gpt2')
        gguf.set_field(K.TOKENIZER_PRE, _pre_tokenizer_name(spec.get('pre_tokenizer')))
        gguf.set_field(K.TOKENS, tokens, type='ARRAY', element_type='STRING')
        gguf.set_field(K.TOKEN_TYPE, types, type='ARRAY', element_type='INT32')
        gguf.set_field(K.MERGES, _merge_strings(model.get('merges', [])),
                       type='ARRAY', element_type='STRING')
    elif kind in ('BPE', 'Unigram'):
        scores = np.full(n_vocab, -1000.0, dtype=np.float32)   # llama.cpp's score for padding
        for i in vocab.values():
            scores[i] = 0.0
        if kind == 'Unigram':
            for i, (_piece, score) in enumerate(model['vocab']):
                scores[i] = score
            unk_id = model.get('unk_id', unk_id)
        else:
            # SentencePiece-style merging in llama.cpp takes the best-scoring pair first: score each
            # merged token by its merge rank so the order matches the BPE merges.
            scored: set[int] = set()
            for rank, merge in enumerate(_merge_strings(model.get('merges', []))):
                merged = vocab.get(merge.replace(' ', '', 1))
                if merged is not None and merged not in added and merged not in scored:
                    scores[merged] = -float(rank)
                    scored.add(merged)
        for text, i in vocab.items():
            if i not in added and _BYTE_TOKEN.match(text):
                types[i] = BYTE
        if unk_id is not None and 0 <= unk_id < n_vocab:
            types[unk_id] = UNKNOWN
        gguf.set_field(K.TOKENIZER_MODEL, 'llama')
        gguf.set_field(K.TOKENIZER_PRE, 'default')
        gguf.set_field(K.TOKENS, tokens, type='ARRAY', element_type='STRING')
        gguf.set_field(K.SCORES, scores, type='ARRAY', element_type='FLOAT32')
        gguf.set_field(K.TOKEN_TYPE, types, type='ARRAY', element_type='INT32')
    else:
        raise ValueError(f'unsupported tokenizer model {kind!r}: convert_llama writes byte-level BPE, '
                         'BPE with byte fallback and Unigram vocabularies')

    ids = {'bos': tokenizer.bos_token_id if tokenizer.bos_token_id is not None else bos_token_id,
           'eos': tokenizer.eos_token_id if tokenizer.eos_token_id is not None else eos_token_id,
           'unknown': unk_id, 'padding': tokenizer.pad_token_id}
    for key, value in ids.items():
        if value is not None and 0 <= value < n_vocab:
            gguf.set_field(f'tokenizer.ggml.{key}_token_id', int(value), type='UINT32')
    # Whether encoding adds BOS/EOS lives in the post-processor (or slow-tokenizer flags): ask the
    # tokenizer itself rather than guess from the files.
    plain = tokenizer.encode('a', add_special_tokens=False)
    full = tokenizer.encode('a', add_special_tokens=True)
    extra = len(full) > len(plain)
    gguf.set_field(K.ADD_BOS,
                   bool(extra and ids['bos'] is not None and full[0] == ids['bos']))
    gguf.set_field(K.ADD_EOS,
                   bool(extra and ids['eos'] is not None and full[-1] == ids['eos']))
    gguf.set_field(K.ADD_SPACE_PREFIX, _add_space_prefix(spec))

    template = getattr(tokenizer, 'chat_template', None)
    if isinstance(template, str):
        gguf.set_field(K.CHAT_TEMPLATE, template)
    elif isinstance(template, dict):   # named templates: 'default' is the main one
        for tname, text in template.items():
            key = K.CHAT_TEMPLATE if tname == 'default' else f'tokenizer.chat_template.{tname}'
            gguf.set_field(key, text)



def normalise_outtype(outtype: str) -> str:
    """``outtype`` as a key of ``OUTTYPES`` (any case: ``'q8_0'`` -> ``'Q8_0'``); a ValueError
    listing them for any other."""
    key = str(outtype).upper()
    if key not in OUTTYPES:
        raise ValueError(f'unknown outtype {outtype!r}; choose one of {", ".join(OUTTYPES)}')
    return key


def load_tokenizer(folder: Path) -> Any:
    """The transformers tokenizer saved in ``folder`` (offline: ``local_files_only``); a
    FileNotFoundError when the folder has no tokenizer files."""
    AutoTokenizer = optional('transformers', 'AutoTokenizer')

    files = ('tokenizer.json', 'tokenizer.model', 'tokenizer_config.json')
    if not any((folder / f).is_file() for f in files):
        raise FileNotFoundError(f'{folder}: no tokenizer files (tokenizer.json / tokenizer_config.json); '
                                'save the tokenizer next to the model, or pass tokenizer=')
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


