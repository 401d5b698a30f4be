"""BERT (Devlin et al., 2018) as a sentence encoder: token + position + token-type embeddings, then
post-norm encoder layers (bidirectional attention, GELU feed-forward), then pooling.

Weights load by their GGUF (llama.cpp) names. Several texts run in one graph side by side: the
batch is ``n_seq`` sequences padded to one length ``n_len`` (texts of similar length are batched
together, so padding is small), laid out ``(n_embd, n_len, n_seq)``. Attention runs on blocks of
``group`` neighbouring sequences (``group * n_len`` >= 64 tokens, the size from which GGML's flash
attention uses its tiled kernel; one sequence per block from 64 tokens on), masked so that no
token attends to another text or to padding: the cost grows with each text's length, not with the
batch's. Pooling is a product with a
``(n_len * n_seq, n_seq)`` weight matrix (mean, first or last real token of each sequence).
Shapes in comments are in ggml order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import ggml as G
from ..gguf import keys as K
from ..model import (GgmlModel, Input, Parameter, State, Tensor, ggml_type_in, one_of, positive_float,
                     positive_int)
from .layers import attention, layer_norm, linear
from .registry import register

__all__ = ['BertModel', 'POOLINGS']

#: Tokens per attention block from which GGML's CPU flash attention runs its tiled kernel
#: (GGML_FA_TILE_Q); shorter sequences are grouped into blocks at least this long.
ATTENTION_BLOCK = 64

#: Pooling names: per-token vectors, their mean, the first ([CLS]) or the last token's.
POOLINGS = ('none', 'mean', 'cls', 'last')


def _head_dim(p: dict[str, Any]) -> int:
    if p['n_embd'] % p['n_head']:
        raise ValueError(f"embedding_length ({p['n_embd']}) is not a multiple of head_count ({p['n_head']})")
    return p['n_embd'] // p['n_head']


def _at_most(other: str) -> Callable[[Any, Any], str | None]:
    def check(value: Any, params: Any) -> str | None:
        ok = positive_int(value) is None and value <= params[other]
        return None if ok else f'a positive integer at most {other} ({params[other]})'
    return check


def _pooling_name(p: dict[str, Any]) -> str:
    return K.POOLING_TYPES[p['pooling_type']]


def _weight_type(value: Any, params: Any) -> str | None:
    return None if value is None else ggml_type_in('F32', 'F16', 'BF16', 'Q8_0')(value)


@register('bert')
class BertModel(GgmlModel):
    """A BERT encoder: ``model.embed(sequences)`` → one vector per token sequence.

    Parameters (from the GGUF file unless given): ``context_length`` (the longest sequence, at most
    the model's positions), ``batch_size`` (tokens per graph, padding included; default 2048),
    ``max_sequences`` (sequences per graph), ``weight_type`` (None: as stored; ``'BF16'``,
    ``'F16'``, ``'Q8_0'`` or ``'F32'``: the matrices converted once, when loaded).
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
    context_length: Parameter(lambda p: p['n_ctx_train'], check=_at_most('n_ctx_train'))
    batch_size: Parameter(lambda p: max(2048, p['context_length']), check=_at_most('max_batch'))
    max_batch: Parameter(1 << 16)
    max_sequences: Parameter(lambda p: min(p['batch_size'], 256), check=positive_int)
    weight_type: Parameter(None, check=_weight_type)
    mask_size: Parameter(lambda p: p['batch_size'] * (p['context_length'] + ATTENTION_BLOCK))
    pool_size: Parameter(lambda p: p['batch_size'] * p['max_sequences'])

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

    # per-call inputs: padded token ids, the padding mask, the pooling weights
    tokens: Input('I32', ('batch_size',))
    mask: Input('F16', ('mask_size',))
    pool: Input('F32', ('pool_size',))

    # what the graph is built for
    n_len: State(ATTENTION_BLOCK)      # (one block: the graph built at load)
    n_seq: State(1)
    pooling: State('mean')

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.params['n_vocab'] = int(self.tensors['token_embd.weight'].ne[1])

    def forward(self) -> Any:
        ctx, p, T = self.ctx_graph, self.params, self.tensors
        n_len, n_seq, n_embd, head_dim = self.state['n_len'], self.state['n_seq'], p['n_embd'], p['head_dim']
        n_tokens = n_len * n_seq
        tokens = G.ggml_view_1d(ctx, T['tokens'], n_tokens, 0)
        group = self.group(n_len)
        n_block, n_blocks = n_len * group, n_seq // group
        block_bytes = n_block * n_block * 2
        mask = G.ggml_view_4d(ctx, T['mask'], n_block, n_block, 1, n_blocks, n_block * 2, block_bytes,
                              block_bytes, 0, name='kq_mask')              # (n_block, n_block, 1, n_blocks)
        # exact GELU: gadget's vectorized kernel on the CPU, GGML's own elsewhere
        gelu = G.gadget_gelu_erf if self.backend.kind == 'cpu' else G.ggml_gelu_erf

        x = G.ggml_get_rows(ctx, T['token_embd.weight'], tokens)                # (n_embd, n_tokens)
        positions = G.ggml_view_2d(ctx, T['position_embd.weight'], n_embd, n_len,
                                   T['position_embd.weight'].nb[1], 0)           # (n_embd, n_len)
        x = G.ggml_add(ctx, G.ggml_reshape_3d(ctx, x, n_embd, n_len, n_seq), positions)
        # every token is of type 0 (one text per sequence): broadcast that row
        x = G.ggml_add(ctx, x, G.ggml_view_1d(ctx, T['token_types.weight'], n_embd, 0), name='inp_embd')
        x = layer_norm(ctx, G.ggml_reshape_2d(ctx, x, n_embd, n_tokens), T['token_embd_norm.weight'],
                       T['token_embd_norm.bias'], p['norm_eps'], name='inp_norm')

        def heads(t: Any) -> Any:                # (n_embd, n_tokens) -> (head_dim, n_head, n_block, n_blocks)
            return G.ggml_reshape_4d(ctx, t, head_dim, p['n_head'], n_block, n_blocks)

        for il in range(p['n_layer']):
            def w(name: str, il: int = il) -> Any:                 # this layer's weight by GGUF name
                return T[f'blk.{il}.{name}']

            q = heads(linear(ctx, x, w('attn_q.weight'), w('attn_q.bias'), name=f'q{il}'))
            k = heads(linear(ctx, x, w('attn_k.weight'), w('attn_k.bias'), name=f'k{il}'))
            v = heads(linear(ctx, x, w('attn_v.weight'), w('attn_v.bias'), name=f'v{il}'))
            keys = G.ggml_permute(ctx, k, 0, 2, 1, 3)                  # (head_dim, n_block, n_head, n_blocks)
            values = G.ggml_permute(ctx, v, 0, 2, 1, 3)                # (head_dim, n_block, n_head, n_blocks)
            attn = attention(ctx, q, keys, values=values, mask=mask, scale=1.0 / math.sqrt(head_dim),
                             name=f'attn{il}', fused=True)                       # (n_embd, n_tokens)
            attn = linear(ctx, attn, w('attn_output.weight'), w('attn_output.bias'), name=f'attn_out{il}')
            x = layer_norm(ctx, G.ggml_add(ctx, x, attn), w('attn_output_norm.weight'),
                           w('attn_output_norm.bias'), p['norm_eps'], name=f'attn_norm{il}')
            h = gelu(ctx, linear(ctx, x, w('ffn_up.weight'), w('ffn_up.bias'), name=f'ffn_up{il}'),
                     name=f'ffn_act{il}')                                        # (n_ff, n_tokens)
            h = linear(ctx, h, w('ffn_down.weight'), w('ffn_down.bias'), name=f'ffn_out{il}')
            x = layer_norm(ctx, G.ggml_add(ctx, x, h), w('layer_output_norm.weight'),
                           w('layer_output_norm.bias'), p['norm_eps'], name=f'l_out{il}')  # (n_embd, n_tok)
        if self.state['pooling'] == 'none':
            return x
        pool = G.ggml_view_2d(ctx, T['pool'], n_tokens, n_seq, n_tokens * 4, 0)    # (n_tokens, n_seq)
        x_t = G.ggml_cont(ctx, G.ggml_transpose(ctx, x))                             # (n_tokens, n_embd)
        return G.ggml_mul_mat(ctx, x_t, pool, name='result_embd_pooled')            # (n_embd, n_seq)

    # --- running it -------------------------------------------------------------------------------

    def group(self, n_len: int) -> int:
        """How many sequences of ``n_len`` tokens share an attention block (see the module docstring)."""
        p = self.params
        return max(1, min(-(-ATTENTION_BLOCK // n_len), p['batch_size'] // n_len, p['max_sequences']))

    def batches(self, lengths: Sequence[int]) -> list[np.ndarray]:
        """How :meth:`embed` groups sequences of these lengths: lists of indices, longest first, each
        group padded to its longest member, within ``batch_size`` tokens and ``max_sequences``; a
        sequence less than half as long as a group's first starts a new group (padding it would
        cost more than a graph of its own)."""
        p = self.params
        lengths = np.asarray(lengths, dtype=np.int64)
        order = np.argsort(-lengths, kind='stable')
        groups: list[np.ndarray] = []
        start = 0
        while start < len(order):
            n_len = int(lengths[order[start]])
            group = self.group(n_len)
            most = min(p['max_sequences'], p['batch_size'] // n_len) // group * group   # whole blocks
            count = max(1, min(most, len(order) - start))
            short = np.flatnonzero(lengths[order[start:start + count]] * 2 < n_len)
            count = int(short[0]) if short.size else count
            groups.append(order[start:start + count])
            start += count
        return groups

    def embed(self, sequences: Sequence[Any], pooling: str | None = None,
              progress: Callable[[int], None] | None = None) -> Any:
        """Encode token sequences (each a 1-D sequence of ids, ``[CLS] ... [SEP]`` included).

        Returns a float32 array ``(len(sequences), n_embd)`` of pooled vectors in input order, or
        with ``pooling='none'`` a list of ``(n_tokens_i, n_embd)`` arrays, one per sequence.
        ``pooling`` defaults to the file's (``default_pooling``). Sequences are grouped by
        :meth:`batches`, one graph each; ``progress(n)`` is called after each group of ``n``.
        """
        self._check_open()
        pooling = self.params['default_pooling'] if pooling is None else pooling
        if pooling not in POOLINGS:
            raise ValueError(f'pooling must be one of {", ".join(POOLINGS)}, got {pooling!r}')
        ids = [self._checked(seq, i) for i, seq in enumerate(sequences)]
        out: list[Any] = [None] * len(ids)
        with self.lock:
            self._check_open()
            for group in self.batches([len(s) for s in ids]):
                for i, vectors in zip(group, self._run([ids[i] for i in group], pooling)):
                    out[i] = vectors
                if progress is not None:
                    progress(len(group))
        if pooling == 'none':
            return out
        return np.stack(out) if out else np.zeros((0, self.params['n_embd']), dtype=np.float32)

    def _checked(self, seq: Any, index: int) -> np.ndarray:
        p = self.params
        ids = np.asarray(seq)
        if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
            raise TypeError(f'sequence {index}: expected a 1-D sequence of token ids, got shape {ids.shape} '
                            f'of {ids.dtype}')
        if not 1 <= ids.size <= p['context_length']:
            raise ValueError(f"sequence {index} has {ids.size} tokens; allowed: 1 to context_length "
                             f"({p['context_length']})")
        n_vocab = p['n_vocab']
        if ids.min() < 0 or ids.max() >= n_vocab:
            bad = ids[(ids < 0) | (ids >= n_vocab)][0]
            raise ValueError(f'sequence {index}: token id {bad} is outside the vocabulary '
                             f'(0 to {n_vocab - 1})')
        return ids.astype(np.int32)

    def _run(self, seqs: list[np.ndarray], pooling: str) -> list[np.ndarray]:
        n_len, n_real = max(s.size for s in seqs), len(seqs)
        group = self.group(n_len)
        n_seq = -(-n_real // group) * group
        # whole attention blocks: sequences of one padding token fill the last one (never all-masked)
        lengths = np.array([s.size for s in seqs] + [1] * (n_seq - n_real))
        for key, value in (('n_len', n_len), ('n_seq', n_seq), ('pooling', pooling)):
            if self.state[key] != value:
                self.state[key] = value
        self.ensure_graph()
        tokens = np.zeros((n_seq, n_len), dtype=np.int32)
        for j, s in enumerate(seqs):
            tokens[j, :s.size] = s
        real = np.arange(n_len)[None, :] < lengths[:, None]                      # (n_seq, n_len)
        # per block: a query sees the real keys of its own sequence only
        n_block = n_len * group
        owner = np.arange(n_block) // n_len
        allowed = (owner[:, None] == owner[None, :])[None] & real.reshape(-1, 1, n_block)  # (n_blocks, q, k)
        self.write('tokens', tokens)
        self.write('mask', np.where(allowed, np.float16(0), np.float16(-np.inf)))
        if pooling != 'none':
            pool = np.zeros((n_seq, n_seq, n_len), dtype=np.float32)    # numpy order of (n_tokens, n_seq)
            rows = np.arange(n_seq)
            if pooling == 'mean':
                pool[rows, rows] = real / lengths[:, None]
            else:
                pool[rows, rows, 0 if pooling == 'cls' else lengths - 1] = 1.0
            self.write('pool', pool)
        self.run()
        if pooling != 'none':
            return list(self.read(np.empty((n_seq, self.params['n_embd']), dtype=np.float32))[:n_real])
        states = self.read(np.empty((n_seq, n_len, self.params['n_embd']), dtype=np.float32))
        return [states[j, :n] for j, n in enumerate(lengths[:n_real])]
