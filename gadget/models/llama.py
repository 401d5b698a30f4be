"""Llama: RMS norm, rotary embeddings, grouped-query attention over a KV cache, SwiGLU.

Weights load by their GGUF (llama.cpp) names. The graph is built for a (batch length, attention
window, outputs) triple and reused for every call with the same triple: decoding builds it once,
then only sets a few small inputs per token (token ids, positions, cache rows, mask), which the
KV cache's bookkeeping (:class:`~gadget.models.cache.KVCache`) plans; the attention window grows
in steps of ``KV_STEP`` cells, so the graph is rebuilt once per ``KV_STEP`` tokens. Shapes in
comments are in ggml order.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from .. import ggml as G
from ..errors import ContextOverflowError, ModelFileError
from ..gguf import keys as K
from ..model import (Parameter, State, Tensor, divides, even_at_most, one_of, optional_type_in,
                     positive_float, positive_int)
from .decoder import DEFAULT_CONTEXT, KV_STEP, CachedDecoder
from .layers import Rope, attention, kv_cache_write, rms_norm, swiglu_feed_forward
from .registry import register

__all__ = ['LlamaModel', 'ContextOverflowError', 'KV_STEP']

_SCORES = re.compile(r'attn\d+_scores')


def _split(n_embd: int, n_head: int) -> int:
    if n_head <= 0 or n_embd % n_head:
        raise ValueError(f'embedding_length ({n_embd}) is not a multiple of head_count ({n_head}), and the '
                         'file has no attention.key_length')
    return n_embd // n_head


@register('llama')
class LlamaModel(CachedDecoder):
    """A Llama-architecture language model with a KV cache.

    Parameters (from the GGUF file unless given): ``context_length`` (KV cache rows; default the
    model's, capped at 4096), ``batch_size`` (tokens per graph; longer prompts are chunked; default
    512), ``kv_type`` (``'F16'``; ``'F32'`` for exact comparisons), ``flash_attn`` (default True:
    GGML's fused flash attention, as llama.cpp computes attention by default and llama-cpp-python with
    ``flash_attn=True``; False: matmul + softmax over a transposed V cache, llama-cpp-python's
    default). Each gives the same greedy tokens as its llama.cpp counterpart.
    ``weight_type`` (None: as stored; ``'BF16'``, ``'F16'``, ``'Q8_0'`` or ``'F32'``: each layer's
    matrices converted once, when loaded; the embedding and the head stay as stored).

    Call it with token ids: ``logits = model(tokens)`` returns the logits of the last position
    (numpy ``(n_vocab,)``), or of every new position with ``all_logits=True`` (``(n, n_vocab)``).
    The cache keeps the tokens seen so far (``n_past``); ``reset()`` empties it and ``rewind(n)``
    keeps only the first ``n``.
    """

    # hyper-parameters, each checked when the model is loaded
    n_layer: Parameter(K.BLOCK_COUNT, check=positive_int)
    n_embd: Parameter(K.EMBEDDING_LENGTH, check=positive_int)
    n_ff: Parameter(K.FEED_FORWARD_LENGTH, check=positive_int)
    n_head: Parameter(K.HEAD_COUNT, check=positive_int)
    n_head_kv: Parameter(K.HEAD_COUNT_KV, fallback=lambda p: p['n_head'], check=divides('n_head'))
    head_dim: Parameter(K.KEY_LENGTH, fallback=lambda p: _split(p['n_embd'], p['n_head']), check=positive_int)
    n_rot: Parameter(K.ROPE_DIMENSION_COUNT, fallback=lambda p: p['head_dim'], check=even_at_most('head_dim'))
    n_ctx_train: Parameter(K.CONTEXT_LENGTH, fallback=DEFAULT_CONTEXT, check=positive_int)
    n_ctx_orig: Parameter(K.ROPE_SCALING_ORIGINAL_CONTEXT_LENGTH, fallback=lambda p: p['n_ctx_train'],
                          check=positive_int)
    rope_base: Parameter(K.ROPE_FREQ_BASE, fallback=10000.0, check=positive_float)
    rope_scaling: Parameter(K.ROPE_SCALING_TYPE, fallback='none', check=one_of('none', 'linear'))
    rope_factor: Parameter(K.ROPE_SCALING_FACTOR, fallback=1.0, check=positive_float)
    norm_eps: Parameter(K.LAYER_NORM_RMS_EPSILON, fallback=1e-5, check=positive_float)
    n_vocab_declared: Parameter(K.VOCAB_SIZE, fallback=None)
    n_q: Parameter(lambda p: p['n_head'] * p['head_dim'])
    n_kv: Parameter(lambda p: p['n_head_kv'] * p['head_dim'])
    n_rot_half: Parameter(lambda p: p['n_rot'] // 2)
    # None: the matrices as stored; a type: each layer's matrices converted once, when loaded
    # (e.g. 'BF16': GGML's BF16 kernels, the fastest for long prompts on CPUs with AVX-512-BF16)
    weight_type: Parameter(None, check=optional_type_in('F32', 'F16', 'BF16', 'Q8_0'))

    # weights, by their GGUF names; each layer's matrices in weight_type (None: as stored)
    token_embd: Tensor(None, ('n_embd', None), name='token_embd.weight')
    attn_norm: Tensor('F32', ('n_embd',), name='blk.{i}.attn_norm.weight', repeat='n_layer')
    attn_q: Tensor('weight_type', ('n_embd', 'n_q'), name='blk.{i}.attn_q.weight', repeat='n_layer')
    attn_k: Tensor('weight_type', ('n_embd', 'n_kv'), name='blk.{i}.attn_k.weight', repeat='n_layer')
    attn_v: Tensor('weight_type', ('n_embd', 'n_kv'), name='blk.{i}.attn_v.weight', repeat='n_layer')
    attn_output: Tensor('weight_type', ('n_q', 'n_embd'), name='blk.{i}.attn_output.weight', repeat='n_layer')
    ffn_norm: Tensor('F32', ('n_embd',), name='blk.{i}.ffn_norm.weight', repeat='n_layer')
    ffn_gate: Tensor('weight_type', ('n_embd', 'n_ff'), name='blk.{i}.ffn_gate.weight', repeat='n_layer')
    ffn_up: Tensor('weight_type', ('n_embd', 'n_ff'), name='blk.{i}.ffn_up.weight', repeat='n_layer')
    ffn_down: Tensor('weight_type', ('n_ff', 'n_embd'), name='blk.{i}.ffn_down.weight', repeat='n_layer')
    output_norm: Tensor('F32', ('n_embd',), name='output_norm.weight')
    output: Tensor(None, ('n_embd', None), name='output.weight', optional=True)   # absent: tied
    rope_freqs: Tensor('F32', ('n_rot_half',), name='rope_freqs.weight', optional=True)

    unfused_attention: State(())   # layers whose attention is built unfused (scores readable)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        p = self.params
        p['n_vocab'] = int(self.tensors['token_embd.weight'].ne[1])
        declared = p['n_vocab_declared']
        if declared is not None and declared != p['n_vocab']:
            self.close()
            raise ModelFileError(f'{K.arch_key(K.VOCAB_SIZE, "llama")} = {declared} but token_embd.weight '
                                 f'has '
                                 f"{p['n_vocab']} rows: the vocabulary and the embedding must match")
        factor = float(p['rope_factor'] or 1.0)
        self.rope = Rope(
            n_rot=int(p['n_rot']), mode=0, n_ctx_orig=int(p['n_ctx_orig']), freq_base=float(p['rope_base']),
            freq_scale=1.0 / factor if p['rope_scaling'] == 'linear' and factor > 0 else 1.0)

    # --- the graph ------------------------------------------------------------------------------

    def forward(self) -> Any:
        ctx, p, T = self.ctx_graph, self.params, self.tensors
        n_tokens, n_window, n_outputs = (self.state['n_tokens'], self.state['n_window'],
                                         self.state['n_outputs'])
        unfused = {il % p['n_layer'] for il in self.state['unfused_attention']}
        # Keep exactly the score nodes this graph has: those of layers no longer unfused are gone.
        self.keep.difference_update([k for k in self.keep if _SCORES.fullmatch(k)])
        self.keep.update(f'attn{il}_scores' for il in unfused)
        n_layer, head_dim = p['n_layer'], p['head_dim']
        tokens, positions, kv_index, out_index, v_index, mask = self.call_inputs()
        freq_factors = T['rope_freqs.weight'] if 'rope_freqs.weight' in T else None
        scale = 1.0 / math.sqrt(head_dim)

        x = G.ggml_get_rows(ctx, T['token_embd.weight'], tokens, name='inp_embd')      # (n_embd, n_tokens)
        for il in range(n_layer):
            h = rms_norm(ctx, x, T[f'blk.{il}.attn_norm.weight'], p['norm_eps'], name=f'attn_norm{il}')
            # (head_dim, n_head, n_tokens)
            q = G.ggml_reshape_3d(ctx, G.ggml_mul_mat(ctx, T[f'blk.{il}.attn_q.weight'], h),
                                  head_dim, p['n_head'], n_tokens)
            # (head_dim, n_head_kv, n_tokens)
            k = G.ggml_reshape_3d(ctx, G.ggml_mul_mat(ctx, T[f'blk.{il}.attn_k.weight'], h),
                                  head_dim, p['n_head_kv'], n_tokens)
            v = G.ggml_reshape_3d(ctx, G.ggml_mul_mat(ctx, T[f'blk.{il}.attn_v.weight'], h),
                                  head_dim, p['n_head_kv'], n_tokens)
            q = self.rope(ctx, q, positions, freq_factors, name=f'q_rope{il}')
            k = self.rope(ctx, k, positions, freq_factors, name=f'k_rope{il}')
            keys, values, values_t = kv_cache_write(
                ctx, k, v, cache_k=T[f'cache_k.{il}'], cache_v=T[f'cache_v.{il}'], rows=kv_index,
                n_window=n_window, v_index=v_index, name=f'attn{il}')
            attn = attention(ctx, q, keys, values=values, values_t=values_t, mask=mask, scale=scale,
                             name=f'attn{il}', fused=p['flash_attn'] and il not in unfused,
                             scores=il in unfused)                                  # (n_q, n_tokens)
            attn = G.ggml_mul_mat(ctx, T[f'blk.{il}.attn_output.weight'], attn, name=f'attn_out{il}')
            if il == n_layer - 1 and n_outputs < n_tokens:
                # Only the output positions go through the last feed-forward block and the head.
                attn = G.ggml_get_rows(ctx, attn, out_index)
                x = G.ggml_get_rows(ctx, x, out_index)
            x = G.ggml_add(ctx, x, attn, name=f'attn_res{il}')
            h = rms_norm(ctx, x, T[f'blk.{il}.ffn_norm.weight'], p['norm_eps'], name=f'ffn_norm{il}')
            ffn = swiglu_feed_forward(ctx, h, up=T[f'blk.{il}.ffn_up.weight'],
                                      gate=T[f'blk.{il}.ffn_gate.weight'],
                                      down=T[f'blk.{il}.ffn_down.weight'], name=f'ffn{il}')
            x = G.ggml_add(ctx, x, ffn, name=f'l_out{il}')                          # (n_embd, n_tokens)
        x = rms_norm(ctx, x, T['output_norm.weight'], p['norm_eps'], name='result_norm')
        head = T['output.weight'] if 'output.weight' in T else T['token_embd.weight']
        return G.ggml_mul_mat(ctx, head, x, name='result_output')                   # (n_vocab, n_outputs)

    def attention_scores(self, layer: int = -1) -> np.ndarray:
        """The last call's scaled, masked pre-softmax attention scores of ``layer`` (numpy
        ``(n_head, n_tokens, n_window)``), which must have been built unfused:
        ``model.unfused_attention = (layer,)`` before the call."""
        n_layer = self.params['n_layer']
        layer = layer % n_layer
        if layer not in {il % n_layer for il in self.state['unfused_attention']}:
            raise ValueError(f'layer {layer} attention is fused: set model.unfused_attention = ({layer},) '
                             'before the call to read its scores')
        return self.get_named_node(f'attn{layer}_scores')

