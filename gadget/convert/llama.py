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

Command line: ``gadget convert SOURCE OUT.gguf --outtype F16`` (see ``gadget.__main__``). The
parts every converter shares are in ``core.py``.
"""
from __future__ import annotations

import json
import math
import os
import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..ggml import GgmlType
from ..gguf import GgufFile
from ..gguf import keys as K
from ..types import is_quantized
from .core import (OUTTYPES, QUANTIZATION_VERSION, Planned, SafetensorsSource, StateDictSource,
                   TensorSource, check_tensor_names, load_tokenizer, normalise_outtype, save_streamed,
                   set_tokenizer_fields, weight_type)

__all__ = ['LlamaHparams', 'convert_llama', 'llama3_rope_factors', 'llama_hparams']

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
        """The checkpoint's RoPE scaling type (``'default'``, ``'llama3'``, ``'linear'``, ...)."""
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



def _plan_tensors(source: TensorSource, hp: LlamaHparams, outtype: str) -> list[Planned]:
    found: dict[tuple[int, int, str], Planned] = {}   # (group, position, suffix) -> planned tensor
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

        found[key] = Planned(name, shape, weight_type(name, shape, outtype), load)
    required = ['token_embd.weight', 'output_norm.weight'] + [
        f'blk.{i}.{n}.weight' for i in range(hp.n_layer) for n in _LAYER_NAMES.values()]
    if not hp.tie_embeddings:
        required.append('output.weight')
    untied = ' (tie_word_embeddings is false but there is no lm_head.weight)'
    check_tensor_names(unknown, list(found.values()), required, 'llama.cpp',
                       hint=lambda missing: untied if 'output.weight' in missing else '')
    plan = [found[k] for k in sorted(found)]
    if hp.rope_type == 'llama3':
        factors = llama3_rope_factors(hp)
        plan.insert(0, Planned('rope_freqs.weight', factors.shape, GgmlType.F32, lambda: factors))
    return plan



def _set_model_fields(gguf: GgufFile, hp: LlamaHparams, name: str, n_vocab: int, outtype: str) -> None:
    u32, f32 = 'UINT32', 'FLOAT32'
    gguf.set_field(K.ARCHITECTURE, 'llama')
    gguf.set_field(K.TYPE, 'model')
    gguf.set_field(K.NAME, name)
    gguf.set_field(K.FILE_TYPE, OUTTYPES[outtype][1], type=u32)
    if is_quantized(OUTTYPES[outtype][0]):
        gguf.set_field(K.QUANTIZATION_VERSION, QUANTIZATION_VERSION, type=u32)
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
    outtype = normalise_outtype(outtype)
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
            tensors: TensorSource = SafetensorsSource(folder, stack)
            if tokenizer is None:
                tokenizer = load_tokenizer(folder)
            default_name = folder.resolve().name
        elif hasattr(source, 'state_dict') and hasattr(source, 'config'):
            config = source.config.to_dict()
            hp = llama_hparams(config)
            tensors = StateDictSource(source.state_dict())
            name_or_path = getattr(source.config, 'name_or_path', '') or ''
            if tokenizer is None:
                if name_or_path and Path(name_or_path).is_dir():
                    tokenizer = load_tokenizer(Path(name_or_path))
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
        set_tokenizer_fields(gguf, tokenizer, n_vocab, hp.bos_token_id, hp.eos_token_id)

        save_streamed(gguf, plan, out_path, progress)
    return out_path

