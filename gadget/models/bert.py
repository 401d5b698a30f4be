"""BERT (Devlin et al., 2018) as a sentence encoder: token + position + token-type embeddings, then
post-norm encoder layers (bidirectional attention, GELU feed-forward), then pooling.

Weights load by their GGUF (llama.cpp) names. Batches of texts, attention within each text and
pooling come from :class:`~gadget.models.encoder.SequenceEncoder`. Shapes in
comments are in ggml order.
"""

from __future__ import annotations

from typing import Any

from .. import ggml as G
from ..gguf import keys as K
from ..model import Parameter, Tensor, one_of, optional_type_in, positive_float, positive_int
from .encoder import POOLINGS, SequenceEncoder
from .layers import layer_norm, linear
from .registry import register

__all__ = ['BertModel', 'POOLINGS']


def _head_dim(p: dict[str, Any]) -> int:
    if p['n_embd'] % p['n_head']:
        raise ValueError(f"embedding_length ({p['n_embd']}) is not a multiple of head_count ({p['n_head']})")
    return p['n_embd'] // p['n_head']


def _pooling_name(p: dict[str, Any]) -> str:
    return K.POOLING_TYPES[p['pooling_type']]


@register('bert')
class BertModel(SequenceEncoder):
    """A BERT encoder: ``model.embed(sequences)`` → one vector per token sequence.

    Parameters (from the GGUF file unless given), besides the encoder's (``context_length``,
    ``batch_size``, ``max_sequences``): ``weight_type`` (None: as stored; ``'BF16'``, ``'F16'``,
    ``'Q8_0'`` or ``'F32'``: the matrices converted once, when loaded).
    """

    n_layer: Parameter(K.BLOCK_COUNT, check=positive_int)
    n_embd: Parameter(K.EMBEDDING_LENGTH, check=positive_int)
    n_ff: Parameter(K.FEED_FORWARD_LENGTH, check=positive_int)
    n_head: Parameter(K.HEAD_COUNT, check=positive_int)
    n_ctx_train: Parameter(K.CONTEXT_LENGTH, check=positive_int)
    norm_eps: Parameter(K.LAYER_NORM_EPSILON, fallback=1e-12, check=positive_float)
    causal: Parameter(K.ATTENTION_CAUSAL, fallback=False, check=one_of(False))
    pooling_type: Parameter(K.POOLING_TYPE, fallback=0, check=one_of(*K.POOLING_TYPES))
    head_dim: Parameter(_head_dim)
    default_pooling: Parameter(_pooling_name)
    weight_type: Parameter(None, check=optional_type_in('F32', 'F16', 'BF16', 'Q8_0'))

    # weights, by their GGUF names; the matrices in weight_type (None: as stored)
    token_embd: Tensor(None, ('n_embd', None), name='token_embd.weight')
    # added to the F32 activations: F32, converted once when a file has them in another type
    token_types: Tensor('F32', ('n_embd', None), name='token_types.weight')
    position_embd: Tensor('F32', ('n_embd', 'n_ctx_train'), name='position_embd.weight')
    embd_norm: Tensor('F32', ('n_embd',), name='token_embd_norm.weight')
    embd_norm_b: Tensor('F32', ('n_embd',), name='token_embd_norm.bias')
    attn_q: Tensor('weight_type', ('n_embd', 'n_embd'), name='blk.{i}.attn_q.weight', repeat='n_layer')
    attn_q_b: Tensor('F32', ('n_embd',), name='blk.{i}.attn_q.bias', repeat='n_layer')
    attn_k: Tensor('weight_type', ('n_embd', 'n_embd'), name='blk.{i}.attn_k.weight', repeat='n_layer')
    attn_k_b: Tensor('F32', ('n_embd',), name='blk.{i}.attn_k.bias', repeat='n_layer')
    attn_v: Tensor('weight_type', ('n_embd', 'n_embd'), name='blk.{i}.attn_v.weight', repeat='n_layer')
    attn_v_b: Tensor('F32', ('n_embd',), name='blk.{i}.attn_v.bias', repeat='n_layer')
    attn_out: Tensor('weight_type', ('n_embd', 'n_embd'), name='blk.{i}.attn_output.weight', repeat='n_layer')
    attn_out_b: Tensor('F32', ('n_embd',), name='blk.{i}.attn_output.bias', repeat='n_layer')
    attn_norm: Tensor('F32', ('n_embd',), name='blk.{i}.attn_output_norm.weight', repeat='n_layer')
    attn_norm_b: Tensor('F32', ('n_embd',), name='blk.{i}.attn_output_norm.bias', repeat='n_layer')
    ffn_up: Tensor('weight_type', ('n_embd', 'n_ff'), name='blk.{i}.ffn_up.weight', repeat='n_layer')
    ffn_up_b: Tensor('F32', ('n_ff',), name='blk.{i}.ffn_up.bias', repeat='n_layer')
    ffn_down: Tensor('weight_type', ('n_ff', 'n_embd'), name='blk.{i}.ffn_down.weight', repeat='n_layer')
    ffn_down_b: Tensor('F32', ('n_embd',), name='blk.{i}.ffn_down.bias', repeat='n_layer')
    out_norm: Tensor('F32', ('n_embd',), name='blk.{i}.layer_output_norm.weight', repeat='n_layer')
    out_norm_b: Tensor('F32', ('n_embd',), name='blk.{i}.layer_output_norm.bias', repeat='n_layer')

    def forward(self) -> Any:
        """The encoder graph: post-norm BERT layers over ``n_seq`` sequences of ``n_len`` tokens
        (the states), returning the hidden states ``(n_embd, n_len * n_seq)`` in ggml order, which
        :meth:`~gadget.models.encoder.SequenceEncoder.embed` reads back and pools."""
        ctx, p, T = self.ctx_graph, self.params, self.tensors
        n_len, n_seq, n_embd, head_dim = self.state['n_len'], self.state['n_seq'], p['n_embd'], p['head_dim']
        n_tokens = n_len * n_seq
        tokens = self.call_inputs()                                              # (n_tokens,)
        # exact GELU: gadget's vectorized kernel on the CPU, GGML's own elsewhere
        gelu = G.gadget_gelu_erf if self.custom_ops else G.ggml_gelu_erf

        x = G.ggml_get_rows(ctx, T['token_embd.weight'], tokens)                # (n_embd, n_tokens)
        positions = G.ggml_view_2d(ctx, T['position_embd.weight'], n_embd, n_len,
                                   T['position_embd.weight'].nb[1], 0)           # (n_embd, n_len)
        x = G.ggml_add(ctx, G.ggml_reshape_3d(ctx, x, n_embd, n_len, n_seq), positions)
        # every token is of type 0 (one text per sequence): broadcast that row
        x = G.ggml_add(ctx, x, G.ggml_view_1d(ctx, T['token_types.weight'], n_embd, 0), name='inp_embd')
        x = layer_norm(ctx, G.ggml_reshape_2d(ctx, x, n_embd, n_tokens), T['token_embd_norm.weight'],
                       T['token_embd_norm.bias'], p['norm_eps'], name='inp_norm')

        def heads(t: Any) -> Any:                    # (n_embd, n_tokens) -> (head_dim, n_head, n_len, n_seq)
            return G.ggml_reshape_4d(ctx, t, head_dim, p['n_head'], n_len, n_seq)

        for il in range(p['n_layer']):
            def w(name: str, il: int = il) -> Any:                 # this layer's weight by GGUF name
                return T[f'blk.{il}.{name}']

            q = heads(linear(ctx, x, w('attn_q.weight'), w('attn_q.bias'), name=f'q{il}'))
            k = heads(linear(ctx, x, w('attn_k.weight'), w('attn_k.bias'), name=f'k{il}'))
            v = heads(linear(ctx, x, w('attn_v.weight'), w('attn_v.bias'), name=f'v{il}'))
            attn = self.attention(q, k, v, name=f'attn{il}')                     # (n_embd, n_tokens)
            attn = linear(ctx, attn, w('attn_output.weight'), w('attn_output.bias'), name=f'attn_out{il}')
            x = layer_norm(ctx, G.ggml_add(ctx, x, attn), w('attn_output_norm.weight'),
                           w('attn_output_norm.bias'), p['norm_eps'], name=f'attn_norm{il}')
            h = gelu(ctx, linear(ctx, x, w('ffn_up.weight'), w('ffn_up.bias'), name=f'ffn_up{il}'),
                     name=f'ffn_act{il}')                                        # (n_ff, n_tokens)
            h = linear(ctx, h, w('ffn_down.weight'), w('ffn_down.bias'), name=f'ffn_out{il}')
            x = layer_norm(ctx, G.ggml_add(ctx, x, h), w('layer_output_norm.weight'),
                           w('layer_output_norm.bias'), p['norm_eps'], name=f'l_out{il}')  # (n_embd, n_tok)
        return x                                                 # pooled by SequenceEncoder.embed
