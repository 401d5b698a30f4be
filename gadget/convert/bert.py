"""Hugging Face BERT checkpoints (sentence-transformers models included) → GGUF files that gadget's
:class:`~gadget.models.BertModel` and llama.cpp (llama-cpp-python) load.

:func:`convert_bert` reads a checkpoint folder (``config.json``, ``*.safetensors``,
``tokenizer.json``; for a sentence-transformers model also ``modules.json``, the pooling config and
``sentence_bert_config.json``) or an in-memory ``transformers`` model, and writes llama.cpp's
tensor names (``token_embd.weight``, ``position_embd.weight``, ``token_types.weight``,
``blk.{i}.attn_q.weight``, ``blk.{i}.attn_output_norm.weight``, ``blk.{i}.layer_output_norm.weight``,
...) and metadata (``bert.*`` with ``bert.attention.causal = false`` and ``bert.pooling_type``).

The WordPiece vocabulary is written as llama.cpp writes it: a token that starts a word gets a
``▁`` prefix, a continuation (``##ing``) loses its ``##``, special tokens stay as they are;
``tokenizer.ggml.model = 'bert'``. Only the ``tokenizers`` library is needed (no
transformers): the converter runs with gadget's own dependencies, which is how the default
embedding model is prepared offline. Tensors are streamed, as for Llama (``core.save_streamed``).
"""

from __future__ import annotations

import json
import os
import re
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..gguf import GgufFile
from ..gguf import keys as K
from ..types import is_quantized
from .core import (CONTROL, NORMAL, OUTTYPES, QUANTIZATION_VERSION, UNUSED, Planned, SafetensorsSource,
                   StateDictSource, TensorSource, check_tensor_names, components, normalise_outtype,
                   save_streamed, weight_type)

__all__ = ['BertHparams', 'bert_hparams', 'convert_bert', 'wordpiece_to_gguf_tokens']

_EMBEDDING_NAMES = {  # HF (after an optional 'bert.' prefix) -> llama.cpp, in llama.cpp's order
    'embeddings.word_embeddings.weight': 'token_embd.weight',
    'embeddings.token_type_embeddings.weight': 'token_types.weight',
    'embeddings.position_embeddings.weight': 'position_embd.weight',
    'embeddings.LayerNorm.weight': 'token_embd_norm.weight',
    'embeddings.LayerNorm.bias': 'token_embd_norm.bias',
}
_LAYER_NAMES = {
    'attention.self.query': 'attn_q', 'attention.self.key': 'attn_k', 'attention.self.value': 'attn_v',
    'attention.output.dense': 'attn_output', 'attention.output.LayerNorm': 'attn_output_norm',
    'intermediate.dense': 'ffn_up', 'output.dense': 'ffn_down', 'output.LayerNorm': 'layer_output_norm',
}
_LAYER_RE = re.compile(r'^(?:bert\.)?encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$')
# Not part of the encoder: the pooler and pre-training heads, and buffers some checkpoints save.
_IGNORED_RE = re.compile(r'^(?:bert\.)?(pooler\.|embeddings\.position_ids$)|^cls\.')
_POOLING_MODES = {'pooling_mode_mean_tokens': 1, 'pooling_mode_cls_token': 2, 'pooling_mode_lasttoken': 3}


@dataclass(frozen=True)
class BertHparams:
    """A BERT config in llama.cpp's terms."""
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_ctx: int
    norm_eps: float


def bert_hparams(config: Mapping[str, Any]) -> BertHparams:
    """Validate a BERT ``config.json`` dict and return its hyper-parameters.

    Raises:
        ValueError: another architecture, an activation other than exact GELU, or relative
            position embeddings.
    """
    if config.get('model_type') != 'bert':
        raise ValueError(f"unsupported architecture {config.get('model_type')!r}: convert_bert converts "
                         "'bert' checkpoints")
    act = config.get('hidden_act', 'gelu')
    if act != 'gelu':
        raise ValueError(f"hidden_act {act!r} is not supported: BertModel's feed-forward uses 'gelu' (erf)")
    position = config.get('position_embedding_type', 'absolute')
    if position != 'absolute':
        raise ValueError(f'position_embedding_type {position!r} is not supported: only absolute positions')
    try:
        hp = BertHparams(n_embd=int(config['hidden_size']), n_layer=int(config['num_hidden_layers']),
                         n_ff=int(config['intermediate_size']), n_head=int(config['num_attention_heads']),
                         n_ctx=int(config['max_position_embeddings']),
                         norm_eps=float(config.get('layer_norm_eps', 1e-12)))
    except KeyError as exc:
        raise ValueError(f'the config has no {exc.args[0]!r}: is it a BERT config.json?') from None
    if hp.n_head <= 0 or hp.n_embd % hp.n_head:
        raise ValueError(f'hidden_size ({hp.n_embd}) is not a multiple of num_attention_heads ({hp.n_head})')
    return hp


def _plan_tensors(source: TensorSource, hp: BertHparams, outtype: str) -> list[Planned]:
    found: dict[tuple[int, int, str], Planned] = {}
    unknown = []
    embedding_order, layer_order = list(_EMBEDDING_NAMES), list(_LAYER_NAMES)
    for hf_name in source.names():
        plain = hf_name[len('bert.'):] if hf_name.startswith('bert.') else hf_name
        if _IGNORED_RE.search(hf_name):
            continue
        if plain in _EMBEDDING_NAMES:
            name, key = _EMBEDDING_NAMES[plain], (0, embedding_order.index(plain), '')
        elif (m := _LAYER_RE.match(hf_name)) and m.group(2) in _LAYER_NAMES and int(m.group(1)) < hp.n_layer:
            layer, module, suffix = int(m.group(1)), m.group(2), m.group(3)
            name, key = f'blk.{layer}.{_LAYER_NAMES[module]}.{suffix}', (1 + layer, layer_order.index(module),
                                                                          suffix)
        else:
            unknown.append(hf_name)
            continue
        if key in found:
            raise ValueError(f'two tensors of the checkpoint map to {name!r} (one is {hf_name!r})')
        shape = source.shape(hf_name)
        # As llama.cpp writes them: the position and token-type tables (added to activations)
        # stay F32; the token table (read by rows) is 16-bit where the matrices are quantized.
        gtype = weight_type(name, shape, outtype)
        if name.startswith(('token_types.', 'position_embd.')):
            gtype = OUTTYPES['F32'][0]
        elif name.startswith('token_embd.') and is_quantized(gtype):
            gtype = OUTTYPES['F16'][0]
        found[key] = Planned(name, shape, gtype, partial(source.load, hf_name))
    required = list(_EMBEDDING_NAMES.values()) + [
        f'blk.{i}.{n}.{s}' for i in range(hp.n_layer) for n in _LAYER_NAMES.values()
        for s in ('weight', 'bias')]
    check_tensor_names(unknown, list(found.values()), required, 'BERT')
    return [found[k] for k in sorted(found)]


# --- the vocabulary -----------------------------------------------------------------------------

def wordpiece_to_gguf_tokens(vocab: Mapping[str, int], special: set[str], n_vocab: int) -> list[str]:
    """A WordPiece vocabulary (``token -> id``) in llama.cpp's spelling (see the module docstring):
    ``special`` tokens as they are, indexed by id; ids the vocabulary lacks become ``[PAD{i}]``."""
    tokens = [f'[PAD{i}]' for i in range(n_vocab)]
    for text, i in vocab.items():
        if text in special:
            tokens[i] = text
        elif text.startswith('##'):
            tokens[i] = text[2:]
        else:
            tokens[i] = '\u2581' + text
    return tokens


def _set_tokenizer_fields(gguf: GgufFile, tokenizer: Any, n_vocab: int) -> None:
    """tokenizer.ggml.* for a WordPiece ``tokenizers.Tokenizer``."""
    spec = json.loads(tokenizer.to_str())
    model = spec.get('model', {})
    if model.get('type') != 'WordPiece':
        raise ValueError(f"convert_bert writes WordPiece vocabularies; this tokenizer is "
                         f"{model.get('type')!r}")
    if model.get('continuing_subword_prefix', '##') != '##':
        raise ValueError("the WordPiece continuation prefix must be '##' (llama.cpp's BERT vocabulary)")
    vocab: dict[str, int] = tokenizer.get_vocab(with_added_tokens=True)
    too_big = {t: i for t, i in vocab.items() if not 0 <= i < n_vocab}
    if too_big:
        raise ValueError(f'the tokenizer has ids the embedding ({n_vocab} rows) does not cover: '
                         f'{list(too_big.items())[:5]}; is this the tokenizer of this model?')
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    tokens = wordpiece_to_gguf_tokens(vocab, special, n_vocab)
    types = np.full(n_vocab, UNUSED, dtype=np.int32)
    for text, i in vocab.items():
        types[i] = CONTROL if text in special else NORMAL
    normalizer = spec.get('normalizer') or {}
    lowercase = [part.get('lowercase') for part in components(normalizer)
                 if part.get('type') == 'BertNormalizer']
    gguf.set_field(K.TOKENIZER_MODEL, 'bert')
    gguf.set_field(K.TOKENIZER_PRE, 'default')
    gguf.set_field(K.TOKENS, tokens, type='ARRAY', element_type='STRING')
    gguf.set_field(K.TOKEN_TYPE, types, type='ARRAY', element_type='INT32')
    gguf.set_field(K.TOKEN_TYPE_COUNT, 2, type='UINT32')
    # [CLS] ... [SEP] around every text: llama.cpp's BERT vocabulary has CLS as BOS and SEP as EOS.
    for key, text in ((K.BOS_ID, '[CLS]'), (K.EOS_ID, '[SEP]'), (K.UNK_ID, model.get('unk_token', '[UNK]')),
                      (K.SEP_ID, '[SEP]'), (K.PAD_ID, '[PAD]'), (K.MASK_ID, '[MASK]')):
        if text in vocab:
            gguf.set_field(key, int(vocab[text]), type='UINT32')
    gguf.set_field(K.ADD_BOS, True)
    gguf.set_field(K.ADD_EOS, True)
    gguf.set_field(K.LOWERCASE, bool(lowercase[0]) if lowercase else False)


def _sentence_transformers_fields(gguf: GgufFile, folder: Path | None) -> None:
    """``bert.pooling_type`` from a sentence-transformers folder's pooling module (none: no
    pooling), and the ``max_seq_length`` it truncates texts to."""
    pooling = 0
    modules_file = folder / 'modules.json' if folder is not None else None
    if modules_file is not None and modules_file.is_file():
        for module in json.loads(modules_file.read_text(encoding='utf-8')):
            if str(module.get('type', '')).endswith('.Pooling'):
                config_file = folder / module.get('path', '') / 'config.json'
                config = json.loads(config_file.read_text(encoding='utf-8'))
                modes = [mode for mode in _POOLING_MODES if config.get(mode)]
                others = [k for k, v in config.items()
                          if k.startswith('pooling_mode') and v and k not in modes]
                if others or len(modes) != 1:
                    raise ValueError(f'{folder}: the pooling {others or modes} is not one llama.cpp has '
                                     '(mean, CLS or last token, one of them)')
                pooling = _POOLING_MODES[modes[0]]
    gguf.set_field(K.arch_key(K.POOLING_TYPE, 'bert'), pooling, type='UINT32')
    st_config = folder / 'sentence_bert_config.json' if folder is not None else None
    if st_config is not None and st_config.is_file():
        length = json.loads(st_config.read_text(encoding='utf-8')).get('max_seq_length')
        if isinstance(length, int) and length > 0:
            gguf.set_field(K.MAX_SEQUENCE_LENGTH, length, type='UINT32')


def _set_model_fields(gguf: GgufFile, hp: BertHparams, name: str, outtype: str) -> None:
    u32, f32, arch = 'UINT32', 'FLOAT32', 'bert'
    gguf.set_field(K.ARCHITECTURE, arch)
    gguf.set_field(K.TYPE, 'model')
    gguf.set_field(K.NAME, name)
    gguf.set_field(K.FILE_TYPE, OUTTYPES[outtype][1], type=u32)
    if is_quantized(OUTTYPES[outtype][0]):
        gguf.set_field(K.QUANTIZATION_VERSION, QUANTIZATION_VERSION, type=u32)
    gguf.set_field(K.arch_key(K.CONTEXT_LENGTH, arch), hp.n_ctx, type=u32)
    gguf.set_field(K.arch_key(K.EMBEDDING_LENGTH, arch), hp.n_embd, type=u32)
    gguf.set_field(K.arch_key(K.FEED_FORWARD_LENGTH, arch), hp.n_ff, type=u32)
    gguf.set_field(K.arch_key(K.BLOCK_COUNT, arch), hp.n_layer, type=u32)
    gguf.set_field(K.arch_key(K.HEAD_COUNT, arch), hp.n_head, type=u32)
    gguf.set_field(K.arch_key(K.LAYER_NORM_EPSILON, arch), hp.norm_eps, type=f32)
    gguf.set_field(K.arch_key(K.ATTENTION_CAUSAL, arch), False)


def _load_tokenizer(folder: Path) -> Any:
    from tokenizers import Tokenizer

    path = folder / 'tokenizer.json'
    if not path.is_file():
        raise FileNotFoundError(f'{folder}: no tokenizer.json (save the tokenizer next to the model with '
                                'save_pretrained, or pass tokenizer=)')
    return Tokenizer.from_file(str(path))


def convert_bert(source: str | os.PathLike | Any, out_path: str | os.PathLike, outtype: str = 'F16',
                 progress: bool = True, tokenizer: Any = None, name: str | None = None) -> Path:
    """Convert a Hugging Face BERT checkpoint (or sentence-transformers model folder) to GGUF.

    Arguments:
        source: a checkpoint folder, or a ``transformers`` ``BertModel`` object.
        out_path: the ``.gguf`` file to write (written to a temporary file, then renamed).
        outtype: ``'F32'``, ``'F16'``, ``'BF16'`` or ``'Q8_0'`` for the matrices; 1-D tensors stay F32.
        progress: show a tqdm progress bar over the tensors.
        tokenizer: a ``tokenizers.Tokenizer`` or a transformers fast tokenizer (WordPiece); by
            default ``tokenizer.json`` of the folder (or of the model's ``name_or_path``).
        name: ``general.name``; default the folder's name.

    Returns:
        The path written.
    """
    outtype = normalise_outtype(outtype)
    out_path = Path(out_path)
    with ExitStack() as stack:
        folder: Path | None
        if isinstance(source, (str, os.PathLike)):
            folder = Path(source)
            if not folder.is_dir():
                raise FileNotFoundError(f'{folder}: not a folder; pass a BERT checkpoint folder '
                                        '(config.json, *.safetensors, tokenizer.json) or a model object')
            if not (folder / 'config.json').is_file():
                raise FileNotFoundError(f'{folder}: no config.json')
            hp = bert_hparams(json.loads((folder / 'config.json').read_text(encoding='utf-8')))
            tensors: TensorSource = SafetensorsSource(folder, stack)
        elif hasattr(source, 'state_dict') and hasattr(source, 'config'):
            hp = bert_hparams(source.config.to_dict())
            tensors = StateDictSource(source.state_dict())
            name_or_path = getattr(source.config, 'name_or_path', '') or ''
            folder = Path(name_or_path) if name_or_path and Path(name_or_path).is_dir() else None
        else:
            raise TypeError('source must be a folder path or a transformers model, '
                            f'got {type(source).__name__}')
        if tokenizer is None:
            if folder is None:
                raise ValueError('a model object carries no tokenizer: pass tokenizer= to convert_bert')
            tokenizer = _load_tokenizer(folder)
        tokenizer = getattr(tokenizer, 'backend_tokenizer', tokenizer)   # a transformers fast tokenizer

        plan = _plan_tensors(tensors, hp, outtype)
        embd = next(p for p in plan if p.name == 'token_embd.weight')
        if embd.shape[1] != hp.n_embd:
            raise ValueError(f'token_embd has {embd.shape[1]} columns but hidden_size is {hp.n_embd}')
        gguf = GgufFile()
        default_name = folder.resolve().name if folder is not None else 'bert'
        _set_model_fields(gguf, hp, name or default_name, outtype)
        _sentence_transformers_fields(gguf, folder)
        _set_tokenizer_fields(gguf, tokenizer, embd.shape[0])
        save_streamed(gguf, plan, out_path, progress)
    return out_path
