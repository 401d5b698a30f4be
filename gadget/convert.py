"""Hugging Face Llama checkpoints → GGUF files that llama.cpp (and llama-cpp-python) load.

:func:`convert_llama` reads a checkpoint folder (``config.json``, ``*.safetensors`` — one file or
shards with ``model.safetensors.index.json`` — and the tokenizer files) or an in-memory
``transformers`` model, and writes one GGUF file with llama.cpp's tensor names
(``token_embd.weight``, ``blk.{i}.attn_q.weight``, ...) and metadata keys (``llama.*``,
``tokenizer.ggml.*``, ``general.*``).

Tensors are streamed: each is read from its safetensors shard, converted (``q``/``k`` rows
permuted, cast or quantized) and written before the next one is read, so peak memory is about one
tensor, not the model. The vocabulary comes from the Hugging Face tokenizer (``tokenizer.json``),
never from the hub.

Conventions that matter for llama.cpp:

* HF applies RoPE with ``rotate_half`` (the two halves of each head rotate together); GGML's normal
  RoPE mode rotates adjacent pairs. The rows of ``q_proj`` and ``k_proj`` are reordered per head,
  ``(n_head, 2, head_dim / 2, n_in) → (n_head, head_dim / 2, 2, n_in)``, so both compute the same
  thing (``k`` uses ``n_head_kv``).
* 1-D tensors (norms, ``rope_freqs``) stay F32 whatever ``outtype`` says; with ``'Q8_0'`` a 2-D
  weight whose rows are not a multiple of 32 falls back to F16.
* The vocabulary in the file has exactly as many tokens as the embedding has rows: missing ids
  become ``[PAD{i}]`` tokens of type UNUSED.

Command line: ``gadget convert SOURCE OUT.gguf --outtype F16`` (see ``gadget.__main__``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .ggml import GgmlType
from .gguf import GgufFile, GgufTensor
from .gguf import keys as K
from .types import is_quantized, numpy_dtype, quantize, row_size

__all__ = ['OUTTYPES', 'LlamaHparams', 'convert_llama', 'llama3_rope_factors', 'llama_hparams']

logger = logging.getLogger(__name__)

# outtype -> (GGML type of the 2-D weights, llama.cpp's LLAMA_FTYPE value for general.file_type)
OUTTYPES: dict[str, tuple[GgmlType, int]] = {
    'F32': (GgmlType.F32, 0),     # LLAMA_FTYPE_ALL_F32
    'F16': (GgmlType.F16, 1),     # LLAMA_FTYPE_MOSTLY_F16
    'Q8_0': (GgmlType.Q8_0, 7),   # LLAMA_FTYPE_MOSTLY_Q8_0
    'BF16': (GgmlType.BF16, 32),  # LLAMA_FTYPE_MOSTLY_BF16
}
_QUANTIZATION_VERSION = 2         # GGML_QNT_VERSION

# GGUF token types (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Tensor names: HF (with or without the ``model.`` prefix) -> llama.cpp.
_GLOBAL_NAMES = {'embed_tokens': 'token_embd', 'norm': 'output_norm', 'lm_head': 'output'}
_LAYER_NAMES = {  # in the order llama.cpp writes them
    'input_layernorm': 'attn_norm',
    'self_attn.q_proj': 'attn_q', 'self_attn.k_proj': 'attn_k', 'self_attn.v_proj': 'attn_v',
    'self_attn.o_proj': 'attn_output',
    'post_attention_layernorm': 'ffn_norm',
    'mlp.gate_proj': 'ffn_gate', 'mlp.up_proj': 'ffn_up', 'mlp.down_proj': 'ffn_down',
}
_LAYER_RE = re.compile(r'^(?:model\.)?layers\.(\d+)\.(.+)\.(weight|bias)$')
_GLOBAL_RE = re.compile(r'^(?:model\.)?(embed_tokens|norm|lm_head)\.(weight)$')
_IGNORED_RE = re.compile(r'(^|\.)rotary_emb\.inv_freq$')   # a buffer some old checkpoints saved

# Pre-tokenizer regexes llama.cpp knows by name (from the GPT-2 and Llama 3 tokenizers).
_GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"""
_LLAMA3_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"""
                 r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
_BYTE_TOKEN = re.compile(r'^<0x[0-9A-Fa-f]{2}>$')


# --------------------------------------------------------------------------------------------
# Hyper-parameters
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LlamaHparams:
    """A Llama config in llama.cpp's terms (read from ``config.json`` or ``model.config``)."""
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx: int
    rms_eps: float
    rope_base: float
    rope: Mapping[str, Any]          # rope_parameters / rope_scaling, {} when absent
    tie_embeddings: bool
    bos_token_id: int | None
    eos_token_id: int | None

    @property
    def rope_type(self) -> str:
        return str(self.rope.get('rope_type', self.rope.get('type', 'default')))


def _first_id(value: Any) -> int | None:
    """A token id from a config entry that may be an int, a list of ints (Llama 3.1's eos) or None."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return int(value) if isinstance(value, int) else None


def llama_hparams(config: Mapping[str, Any]) -> LlamaHparams:
    """Validate a Llama (or Llama-equivalent Mistral) config dict and return its hyper-parameters.

    Raises:
        ValueError: another architecture, an activation other than SiLU, sliding-window attention,
            or a RoPE scaling llama.cpp's ``llama`` architecture cannot express.
    """
    model_type = config.get('model_type')
    if model_type not in ('llama', 'mistral'):
        raise ValueError(f"unsupported architecture {model_type!r}: convert_llama converts 'llama' "
                         "checkpoints (and 'mistral' ones without sliding-window attention)")
    n_ctx = int(config.get('max_position_embeddings') or 0)
    if model_type == 'mistral':
        window = config.get('sliding_window')
        if window is not None and window < n_ctx:
            raise ValueError('this Mistral checkpoint uses sliding-window attention (sliding_window='
                             f'{window} < max_position_embeddings={n_ctx}), which the llama architecture '
                             'does not have; only Mistral configs with sliding_window null convert as llama')
    act = config.get('hidden_act', 'silu')
    if act != 'silu':
        raise ValueError(f"hidden_act {act!r} is not supported: llama's feed-forward uses 'silu'")
    try:
        n_embd = int(config['hidden_size'])
        n_head = int(config['num_attention_heads'])
        hp = {'n_embd': n_embd, 'n_layer': int(config['num_hidden_layers']),
              'n_ff': int(config['intermediate_size']), 'n_head': n_head}
    except KeyError as exc:
        raise ValueError(f'the config has no {exc.args[0]!r}: is it a Llama config.json?') from None
    n_head_kv = int(config.get('num_key_value_heads') or n_head)
    head_dim = int(config.get('head_dim') or n_embd // n_head)
    # transformers 5 keeps RoPE settings (theta included) in rope_parameters; older configs have
    # rope_theta and rope_scaling at the top level.
    rope = dict(config.get('rope_parameters') or config.get('rope_scaling') or {})
    rope_base = float(rope.get('rope_theta', config.get('rope_theta', 10000.0)))
    params = LlamaHparams(
        **hp, n_head_kv=n_head_kv, head_dim=head_dim, n_ctx=n_ctx,
        rms_eps=float(config.get('rms_norm_eps', 1e-6)), rope_base=rope_base, rope=rope,
        tie_embeddings=bool(config.get('tie_word_embeddings', False)),
        bos_token_id=_first_id(config.get('bos_token_id')),
        eos_token_id=_first_id(config.get('eos_token_id')))
    if params.rope_type not in ('default', 'linear', 'llama3'):
        raise ValueError(f"RoPE scaling {params.rope_type!r} is not supported; supported: none ('default'), "
                         "'linear' and 'llama3'")
    if n_head % n_head_kv:
        raise ValueError(f'num_attention_heads ({n_head}) is not a multiple of '
                         f'num_key_value_heads ({n_head_kv})')
    return params


def llama3_rope_factors(hp: LlamaHparams) -> np.ndarray:
    """``rope_freqs.weight`` for Llama 3.1 RoPE scaling: one divisor per rotated pair, shape (head_dim / 2,).

    Meta's published rule: wavelengths shorter than ``original / high_freq_factor`` keep their
    frequency, those longer than ``original / low_freq_factor`` are slowed by ``factor``, and
    those between interpolate smoothly. GGML divides each frequency by its factor, so the factor is
    ``original frequency / scaled frequency``.
    """
    factor = float(hp.rope.get('factor', 8.0))
    low = float(hp.rope.get('low_freq_factor', 1.0))
    high = float(hp.rope.get('high_freq_factor', 4.0))
    original = float(hp.rope.get('original_max_position_embeddings', 8192))
    freqs = 1.0 / hp.rope_base ** (np.arange(0, hp.head_dim, 2, dtype=np.float64) / hp.head_dim)
    wavelen = 2 * math.pi / freqs
    smooth = (original / wavelen - low) / (high - low)
    factors = np.where(wavelen < original / high, 1.0,
                       np.where(wavelen > original / low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    return factors.astype(np.float32)


def _permute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder the output rows of a q/k projection (weight or bias) from HF's half-split RoPE
    layout to GGML's adjacent-pair layout: per head, row ``j`` and ``j + head_dim/2`` become rows
    ``2j`` and ``2j + 1``."""
    rows = w.shape[0]
    # (n_head, 2, head_dim/2, ...) -> (n_head, head_dim/2, 2, ...), numpy order
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# --------------------------------------------------------------------------------------------
# Sources of tensors
# --------------------------------------------------------------------------------------------

class _TensorSource:
    """Names, shapes (numpy order) and float32 data of a checkpoint's tensors, read one at a time."""

    def names(self) -> list[str]:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def load(self, name: str) -> np.ndarray:
        raise NotImplementedError


def _optional(module: str, name: str) -> Any:
    """``module.name`` of one of the converter's optional dependencies, or an ImportError that says
    how to install them."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        raise ImportError(f'converting a Hugging Face checkpoint needs {module}: '
                          "pip install 'gadget[convert]' "
                          '(safetensors and transformers)') from None


def _torch_to_float32(tensor: Any, name: str) -> np.ndarray:
    import torch

    if tensor.device.type == 'meta':
        raise ValueError(f'tensor {name!r} is on the meta device (no data): load the model with weights')
    return tensor.detach().to(device='cpu', dtype=torch.float32).numpy()


class _SafetensorsSource(_TensorSource):
    """The ``*.safetensors`` files of a folder, opened with ``safe_open`` (data read per tensor)."""

    def __init__(self, folder: Path, stack: ExitStack):
        safe_open = _optional('safetensors', 'safe_open')

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
            handle = stack.enter_context(safe_open(str(folder / file), framework='pt'))
            for name in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                if name in self._where:
                    raise ValueError(f'{folder}: tensor {name!r} appears in more than one shard')
                self._where[name] = handle

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._where[name].get_slice(name).get_shape())

    def load(self, name: str) -> np.ndarray:
        return _torch_to_float32(self._where[name].get_tensor(name), name)


class _StateDictSource(_TensorSource):
    """The ``state_dict()`` of an in-memory ``torch.nn.Module``."""

    def __init__(self, state: Mapping[str, Any]):
        self._state = state

    def names(self) -> list[str]:
        return list(self._state)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._state[name].shape)

    def load(self, name: str) -> np.ndarray:
        return _torch_to_float32(self._state[name], name)


# --------------------------------------------------------------------------------------------
# The tensor plan
# --------------------------------------------------------------------------------------------

@dataclass
class _Planned:
    name: str                                 # llama.cpp's name
    shape: tuple[int, ...]                    # numpy order
    type: GgmlType
    load: Callable[[], np.ndarray]            # float32 data, numpy order, already permuted


class _StreamedTensor(GgufTensor):
    """A tensor whose data are produced when :meth:`GgufFile.save` writes them and then dropped,
    so the writer never holds more than one converted tensor."""

    __slots__ = ('_produce',)

    def __init__(self, name: str, type: GgmlType, shape: tuple[int, ...], produce: Callable[[], np.ndarray]):
        n_rows = int(np.prod(shape[:-1], dtype=np.int64))
        super().__init__(name, type, tuple(reversed(shape)), row_size(type, shape[-1]) * n_rows)
        self._produce = produce

    @property
    def array(self) -> np.ndarray:  # not cached, unlike GgufTensor.array
        return self._produce()


def _encode(data: np.ndarray, gtype: GgmlType) -> np.ndarray:
    if is_quantized(gtype):
        return quantize(data, gtype)
    return np.ascontiguousarray(data, dtype=numpy_dtype(gtype))


def _weight_type(name: str, shape: tuple[int, ...], outtype: str) -> GgmlType:
    if len(shape) < 2:
        return GgmlType.F32          # norms, biases and rope_freqs stay F32, as in llama.cpp
    gtype = OUTTYPES[outtype][0]
    if gtype == GgmlType.Q8_0 and shape[-1] % 32:
        logger.info('%s: rows of %d are not a multiple of 32, written as F16 instead of Q8_0',
                    name, shape[-1])
        return GgmlType.F16
    return gtype


def _plan_tensors(source: _TensorSource, hp: LlamaHparams, outtype: str) -> list[_Planned]:
    found: dict[tuple[int, int, str], _Planned] = {}   # (group, position, suffix) -> planned tensor
    unknown = []
    layer_order = list(_LAYER_NAMES)
    for hf_name in source.names():
        if _IGNORED_RE.search(hf_name):
            continue
        if m := _LAYER_RE.match(hf_name):
            layer, module, suffix = int(m.group(1)), m.group(2), m.group(3)
            if module not in _LAYER_NAMES or layer >= hp.n_layer:
                unknown.append(hf_name)
                continue
            name = f'blk.{layer}.{_LAYER_NAMES[module]}.{suffix}'
            key = (1 + layer, layer_order.index(module), suffix)
            n_perm = {'self_attn.q_proj': hp.n_head, 'self_attn.k_proj': hp.n_head_kv}.get(module)
        elif m := _GLOBAL_RE.match(hf_name):
            module, suffix = m.group(1), m.group(2)
            if module == 'lm_head' and hp.tie_embeddings:
                continue   # the output projection is token_embd; llama.cpp reuses it
            name = f'{_GLOBAL_NAMES[module]}.{suffix}'
            key = ({'embed_tokens': 0, 'norm': hp.n_layer + 1, 'lm_head': hp.n_layer + 2}[module], 0, suffix)
            n_perm = None
        else:
            unknown.append(hf_name)
            continue
        if key in found:
            raise ValueError(f'two tensors of the checkpoint map to {name!r} (one is {hf_name!r})')
        shape = source.shape(hf_name)

        def load(hf_name: str = hf_name, n_perm: int | None = n_perm) -> np.ndarray:
            data = source.load(hf_name)
            return _permute_rope_rows(data, n_perm) if n_perm else data

        found[key] = _Planned(name, shape, _weight_type(name, shape, outtype), load)
    if unknown:
        raise ValueError(f'{len(unknown)} tensors of the checkpoint have no llama.cpp name: '
                         f'{", ".join(unknown[:8])}{", ..." if len(unknown) > 8 else ""}')
    names = {p.name for p in found.values()}
    required = ['token_embd.weight', 'output_norm.weight'] + [
        f'blk.{i}.{n}.weight' for i in range(hp.n_layer) for n in _LAYER_NAMES.values()]
    if not hp.tie_embeddings:
        required.append('output.weight')
    missing = [n for n in required if n not in names]
    if missing:
        raise ValueError(f'the checkpoint lacks {len(missing)} tensors llama.cpp needs: '
                         f'{", ".join(missing[:8])}{", ..." if len(missing) > 8 else ""}'
                         + (' (tie_word_embeddings is false but there is no lm_head.weight)'
                            if 'output.weight' in missing else ''))
    plan = [found[k] for k in sorted(found)]
    if hp.rope_type == 'llama3':
        factors = llama3_rope_factors(hp)
        plan.insert(0, _Planned('rope_freqs.weight', factors.shape, GgmlType.F32, lambda: factors))
    return plan


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------

def _set_model_fields(gguf: GgufFile, hp: LlamaHparams, name: str, n_vocab: int, outtype: str) -> None:
    u32, f32 = 'UINT32', 'FLOAT32'
    gguf.set_field(K.ARCHITECTURE, 'llama')
    gguf.set_field(K.TYPE, 'model')
    gguf.set_field(K.NAME, name)
    gguf.set_field(K.FILE_TYPE, OUTTYPES[outtype][1], type=u32)
    if is_quantized(OUTTYPES[outtype][0]):
        gguf.set_field(K.QUANTIZATION_VERSION, _QUANTIZATION_VERSION, type=u32)
    gguf.set_field(K.arch_key(K.VOCAB_SIZE, 'llama'), n_vocab, type=u32)
    gguf.set_field(K.arch_key(K.CONTEXT_LENGTH, 'llama'), hp.n_ctx, type=u32)
    gguf.set_field(K.arch_key(K.EMBEDDING_LENGTH, 'llama'), hp.n_embd, type=u32)
    gguf.set_field(K.arch_key(K.BLOCK_COUNT, 'llama'), hp.n_layer, type=u32)
    gguf.set_field(K.arch_key(K.FEED_FORWARD_LENGTH, 'llama'), hp.n_ff, type=u32)
    gguf.set_field(K.arch_key(K.HEAD_COUNT, 'llama'), hp.n_head, type=u32)
    gguf.set_field(K.arch_key(K.HEAD_COUNT_KV, 'llama'), hp.n_head_kv, type=u32)
    if hp.head_dim != hp.n_embd // hp.n_head:
        gguf.set_field(K.arch_key(K.KEY_LENGTH, 'llama'), hp.head_dim, type=u32)
        gguf.set_field(K.arch_key(K.VALUE_LENGTH, 'llama'), hp.head_dim, type=u32)
    gguf.set_field(K.arch_key(K.LAYER_NORM_RMS_EPSILON, 'llama'), hp.rms_eps, type=f32)
    gguf.set_field(K.arch_key(K.ROPE_FREQ_BASE, 'llama'), hp.rope_base, type=f32)
    gguf.set_field(K.arch_key(K.ROPE_DIMENSION_COUNT, 'llama'), hp.head_dim, type=u32)
    if hp.rope_type == 'linear':
        gguf.set_field(K.arch_key(K.ROPE_SCALING_TYPE, 'llama'), 'linear')
        gguf.set_field(K.arch_key(K.ROPE_SCALING_FACTOR, 'llama'), float(hp.rope['factor']), type=f32)
        original = hp.rope.get('original_max_position_embeddings')
        if original:
            gguf.set_field(K.arch_key(K.ROPE_SCALING_ORIGINAL_CONTEXT_LENGTH, 'llama'), int(original),
                           type=u32)
    # 'llama3' scaling is carried by the rope_freqs.weight tensor alone, as llama.cpp writes it.


def _tokenizer_json(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, 'backend_tokenizer', None)
    if backend is None:
        raise ValueError(f'{type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer: '
                         'convert needs the tokenizer.json model; load it with AutoTokenizer (use_fast=True)')
    return json.loads(backend.to_str())


def _components(node: Mapping[str, Any] | None) -> Iterator[Mapping[str, Any]]:
    """A normalizer / pre-tokenizer / decoder and, for a Sequence, its members, flattened."""
    if not node:
        return
    if node.get('type') == 'Sequence':
        for child in node.get('pretokenizers') or node.get('normalizers') or node.get('decoders') or []:
            yield from _components(child)
    else:
        yield node


def _pre_tokenizer_name(pre: Mapping[str, Any] | None) -> str:
    """llama.cpp's name for a byte-level BPE pre-tokenizer, found from its structure."""
    parts = list(_components(pre))
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
    for part in _components(spec.get('normalizer')):
        if part.get('type') == 'Prepend' and part.get('prepend') == '\u2581':
            return True
    for part in _components(spec.get('pre_tokenizer')):
        if part.get('type') == 'Metaspace':
            legacy = 'always' if part.get('add_prefix_space', True) else 'never'   # tokenizers < 0.14
            return part.get('prepend_scheme', legacy) != 'never'
        if part.get('type') == 'ByteLevel':
            return bool(part.get('add_prefix_space', False))
    return False


def _set_tokenizer_fields(gguf: GgufFile, tokenizer: Any, n_vocab: int, hp: LlamaHparams) -> None:
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
        decoders = [p.get('type') for p in _components(spec.get('decoder'))]
        pres = [p.get('type') for p in _components(spec.get('pre_tokenizer'))]
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
                i = vocab.get(merge.replace(' ', '', 1))
                if i is not None and i not in added and i not in scored:
                    scores[i] = -float(rank)
                    scored.add(i)
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

    ids = {'bos': tokenizer.bos_token_id if tokenizer.bos_token_id is not None else hp.bos_token_id,
           'eos': tokenizer.eos_token_id if tokenizer.eos_token_id is not None else hp.eos_token_id,
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


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------

def _normalise_outtype(outtype: str) -> str:
    key = str(outtype).upper()
    if key not in OUTTYPES:
        raise ValueError(f'unknown outtype {outtype!r}; choose one of {", ".join(OUTTYPES)}')
    return key


def _load_tokenizer(folder: Path) -> Any:
    AutoTokenizer = _optional('transformers', 'AutoTokenizer')

    files = ('tokenizer.json', 'tokenizer.model', 'tokenizer_config.json')
    if not any((folder / f).is_file() for f in files):
        raise FileNotFoundError(f'{folder}: no tokenizer files (tokenizer.json / tokenizer_config.json); '
                                'save the tokenizer next to the model, or pass tokenizer=')
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def convert_llama(source: str | os.PathLike | Any, out_path: str | os.PathLike, outtype: str = 'F16',
                  progress: bool = True, tokenizer: Any = None, name: str | None = None) -> Path:
    """Convert a Hugging Face Llama checkpoint to a GGUF file llama.cpp can load.

    Arguments:
        source: a checkpoint folder (``config.json``, ``*.safetensors``, tokenizer files), or a
            ``transformers`` model object (its ``state_dict()`` and ``config`` are used).
        out_path: the ``.gguf`` file to write (written to a temporary file, then renamed).
        outtype: ``'F32'``, ``'F16'``, ``'BF16'`` or ``'Q8_0'`` for the 2-D weights; 1-D tensors
            stay F32, and Q8_0 falls back to F16 for rows that are not a multiple of 32.
        progress: show a tqdm progress bar over the tensors.
        tokenizer: the Hugging Face (fast) tokenizer; by default it is loaded from the folder
            (``source``, or the model's ``config.name_or_path`` when that is a local folder).
        name: ``general.name``; by default the folder's name or the model's ``name_or_path``.

    Returns:
        The path written.

    Raises:
        FileNotFoundError: missing folder, ``config.json``, weights or tokenizer files.
        ValueError: not a Llama model, an unsupported RoPE scaling or tokenizer, an unknown
            ``outtype``, or a checkpoint whose tensors do not match its config.
    """
    outtype = _normalise_outtype(outtype)
    out_path = Path(out_path)
    with ExitStack() as stack:
        if isinstance(source, (str, os.PathLike)):
            folder = Path(source)
            if not folder.is_dir():
                raise FileNotFoundError(f'{folder}: not a folder; pass a Hugging Face checkpoint folder '
                                        '(config.json, *.safetensors, tokenizer files) or a model object')
            config_file = folder / 'config.json'
            if not config_file.is_file():
                raise FileNotFoundError(f'{folder}: no config.json')
            config = json.loads(config_file.read_text(encoding='utf-8'))
            hp = llama_hparams(config)
            tensors: _TensorSource = _SafetensorsSource(folder, stack)
            if tokenizer is None:
                tokenizer = _load_tokenizer(folder)
            default_name = folder.resolve().name
        elif hasattr(source, 'state_dict') and hasattr(source, 'config'):
            config = source.config.to_dict()
            hp = llama_hparams(config)
            tensors = _StateDictSource(source.state_dict())
            name_or_path = getattr(source.config, 'name_or_path', '') or ''
            if tokenizer is None:
                if name_or_path and Path(name_or_path).is_dir():
                    tokenizer = _load_tokenizer(Path(name_or_path))
                else:
                    raise ValueError('a model object carries no tokenizer: pass tokenizer= (a Hugging Face '
                                     'fast tokenizer) to convert_llama')
            default_name = Path(name_or_path).name if name_or_path else 'llama'
        else:
            raise TypeError('source must be a folder path or a transformers model, '
                            f'got {type(source).__name__}')

        plan = _plan_tensors(tensors, hp, outtype)
        embd = next(p for p in plan if p.name == 'token_embd.weight')
        n_vocab = embd.shape[0]
        if embd.shape[1] != hp.n_embd:
            raise ValueError(f'token_embd has {embd.shape[1]} columns but hidden_size is {hp.n_embd}')

        gguf = GgufFile()
        _set_model_fields(gguf, hp, name or default_name, n_vocab, outtype)
        _set_tokenizer_fields(gguf, tokenizer, n_vocab, hp)

        bar = stack.enter_context(tqdm(total=len(plan), desc=f'converting to {out_path.name}',
                                       unit='tensor', disable=not progress))

        def produce(p: _Planned) -> np.ndarray:
            data = p.load()
            if data.shape != p.shape:
                raise ValueError(f'{p.name}: read shape {data.shape}, expected {p.shape}')
            encoded = _encode(data, p.type)
            bar.set_postfix_str(p.name, refresh=False)
            bar.update()
            return encoded

        for p in plan:
            gguf.tensors[p.name] = _StreamedTensor(p.name, p.type, p.shape, lambda p=p: produce(p))
        gguf.save(out_path)
    return out_path
