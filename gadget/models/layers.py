"""Building blocks shared by the model architectures: norms, feed-forward, rotary embeddings, attention.

Every function takes the graph context first and names the nodes it makes (``name`` is a prefix
such as ``'blk3'``), so intermediate values can be read back with ``get_named_node``.
Shapes in comments are in ggml order (``ne[0]`` first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import ggml as G


def rms_norm(ctx: Any, x: Any, weight: Any, eps: float, name: str) -> Any:
    """``weight * x / rms(x)`` over each row of ``x`` (n_embd, n_tokens)."""
    return G.ggml_mul(ctx, G.ggml_rms_norm(ctx, x, eps), weight, name=name)


def layer_norm(ctx: Any, x: Any, weight: Any, bias: Any, eps: float, name: str) -> Any:
    """``weight * (x - mean(x)) / sqrt(var(x) + eps) + bias`` over each row of ``x`` (n_embd, n_tokens)."""
    return G.ggml_add(ctx, G.ggml_mul(ctx, G.ggml_norm(ctx, x, eps), weight), bias, name=name)


def linear(ctx: Any, x: Any, weight: Any, bias: Any, name: str) -> Any:
    """``weight @ x + bias``: ``x`` (n_in, n_tokens), ``weight`` (n_in, n_out), ``bias`` (n_out,) in
    ggml order."""
    return G.ggml_add(ctx, G.ggml_mul_mat(ctx, weight, x), bias, name=name)


def swiglu_feed_forward(ctx: Any, x: Any, *, up: Any, gate: Any, down: Any, name: str) -> Any:
    """``down @ (silu(gate @ x) * (up @ x))``: the Llama feed-forward block, in ggml order ``x``
    (n_embd, n_tokens), ``up`` and ``gate`` (n_embd, n_ff), ``down`` (n_ff, n_embd); returns
    (n_embd, n_tokens)."""
    g = G.ggml_mul_mat(ctx, gate, x, name=f'{name}_gate')          # (n_ff, n_tokens)
    u = G.ggml_mul_mat(ctx, up, x, name=f'{name}_up')              # (n_ff, n_tokens)
    h = G.ggml_swiglu_split(ctx, g, u, name=f'{name}_act')         # silu(g) * u
    return G.ggml_mul_mat(ctx, down, h, name=f'{name}_out')        # (n_embd, n_tokens)


@dataclass
class Rope:
    """Rotary position embedding settings (GGML's ``ggml_rope_ext`` arguments)."""
    n_rot: int
    mode: int = 0                 # 0: rotate adjacent pairs (llama.cpp's Llama); 2: NeoX halves
    n_ctx_orig: int = 0
    freq_base: float = 10000.0
    freq_scale: float = 1.0
    ext_factor: float = 0.0
    attn_factor: float = 1.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0

    def __call__(self, ctx: Any, x: Any, positions: Any, freq_factors: Any, name: str) -> Any:
        """Rotate ``x`` (head_dim, n_heads, n_tokens) by ``positions`` (I32, n_tokens)."""
        return G.ggml_rope_ext(ctx, x, positions, freq_factors if freq_factors is not None else G.ffi.NULL,
                               self.n_rot, self.mode, self.n_ctx_orig, self.freq_base, self.freq_scale,
                               self.ext_factor, self.attn_factor, self.beta_fast, self.beta_slow, name=name)


def kv_cache_write(ctx: Any, k: Any, v: Any, *, cache_k: Any, cache_v: Any, rows: Any, n_window: int,
                   name: str, v_index: Any = None) -> tuple[Any, Any, Any]:
    """Write new keys and values into a layer's KV cache; return views of its first ``n_window`` cells.

    Arguments:
        k, v: (head_dim, n_head_kv, n_tokens) new keys (rotated) and values.
        cache_k: (head_dim * n_head_kv, n_ctx); cells ``rows`` (I64, n_tokens) receive the keys.
        cache_v: like ``cache_k``, or, with ``v_index``, transposed: (n_ctx, head_dim * n_head_kv),
            written element by element at ``v_index`` (I64, n_tokens * head_dim * n_head_kv, the
            flat positions ``d * n_ctx + row`` in the order of the transposed new values). The
            transposed cache is what the unfused product needs, so no copy is made per step.

    Returns ``(keys, values, values_t)``: keys (head_dim, n_window, n_head_kv); values the same
    shape for a plain V cache (else None); values_t (n_window, head_dim, n_head_kv) for a
    transposed one (else None). The views are of the written cache, so the graph orders the
    writes before any read.
    """
    head_dim, n_head_kv, n_tokens = k.ne[0], k.ne[1], k.ne[2]
    row = head_dim * n_head_kv
    esize_k, esize_v = cache_k.nb[0], cache_v.nb[0]
    k_all = G.ggml_set_rows(ctx, cache_k, G.ggml_reshape_2d(ctx, k, row, n_tokens), rows,
                            name=f'{name}_k_write')
    # (head_dim, n_head_kv, n_window) view of the first cells, permuted to (head_dim, n_window, n_head_kv)
    keys = G.ggml_permute(ctx, G.ggml_view_3d(ctx, k_all, head_dim, n_head_kv, n_window, head_dim * esize_k,
                                              row * esize_k, 0), 0, 2, 1, 3)
    if v_index is None:
        v_all = G.ggml_set_rows(ctx, cache_v, G.ggml_reshape_2d(ctx, v, row, n_tokens), rows,
                                name=f'{name}_v_write')
        values = G.ggml_permute(ctx, G.ggml_view_3d(ctx, v_all, head_dim, n_head_kv, n_window,
                                                    head_dim * esize_v, row * esize_v, 0), 0, 2, 1, 3)
        return keys, values, None
    n_ctx = cache_v.ne[0]
    # (n_tokens, row): the new values transposed, in the order v_index addresses them
    v_t = G.ggml_cont(ctx, G.ggml_transpose(ctx, G.ggml_reshape_2d(ctx, v, row, n_tokens)))
    flat = G.ggml_view_2d(ctx, cache_v, 1, n_ctx * row, esize_v, 0)              # one element per "row"
    written = G.ggml_set_rows(ctx, flat, G.ggml_reshape_2d(ctx, v_t, 1, n_tokens * row), v_index,
                              name=f'{name}_v_write')
    values_t = G.ggml_view_3d(ctx, written, n_window, head_dim, n_head_kv, n_ctx * esize_v,
                              head_dim * n_ctx * esize_v, 0)          # (n_window, head_dim, n_head_kv)
    return keys, None, values_t


def attention(ctx: Any, q: Any, keys: Any, *, values: Any = None, values_t: Any = None, mask: Any,
              scale: float, name: str, fused: bool = False, scores: bool = False) -> Any:
    """Scaled dot-product attention of queries over keys and values (a cache's views, or a
    non-causal model's own keys and values), with grouped-query heads broadcast.

    Arguments:
        q: (head_dim, n_head, n_tokens); keys: (head_dim, n_kv, n_head_kv).
        values: (head_dim, n_kv, n_head_kv), or values_t: (n_kv, head_dim, n_head_kv) (transposed,
            what the unfused product reads; made from ``values`` when not given).
        mask: F16 or F32 (n_kv, n_tokens): 0 where a query may attend, -inf elsewhere.
        scale: the factor of the scores, usually ``1 / sqrt(head_dim)``.
        name: the prefix of the nodes made here.
        fused: GGML's flash attention (``ggml_flash_attn_ext``; needs ``values``); ``False``:
            matmul, softmax, matmul (llama.cpp's path without flash attention, with its numerics).
        scores: (unfused only) make the scaled, masked pre-softmax scores a node of their own,
            ``{name}_scores`` ((n_kv, n_tokens, n_head)), instead of folding scale and mask into
            the softmax.

    Every argument may have a fourth dimension, ``n_seq``: independent sequences side by side
    (q (head_dim, n_head, n_tokens, n_seq), keys (head_dim, n_kv, n_head_kv, n_seq), mask
    (n_kv, n_tokens, 1, n_seq)), attending only within themselves; the result is then
    (head_dim * n_head, n_tokens * n_seq).

    Returns (head_dim * n_head, n_tokens), in ggml order like every shape here.
    """
    if fused and values is None:
        raise ValueError('flash attention reads plain values: a transposed V (values_t) needs fused=False')
    head_dim, n_head, n_tokens = q.ne[0], q.ne[1], q.ne[2] * q.ne[3]
    queries = G.ggml_permute(ctx, q, 0, 2, 1, 3)                    # (head_dim, n_tokens, n_head)
    if fused:
        out = G.ggml_flash_attn_ext(ctx, queries, keys, values, mask, scale, 0.0, 0.0, name=f'{name}_fa')
        G.ggml_flash_attn_ext_set_prec(out, G.GGML_PREC_F32)
        # out: (head_dim, n_head, n_tokens)
        return G.ggml_reshape_2d(ctx, out, head_dim * n_head, n_tokens)
    if values_t is None:
        values_t = G.ggml_cont(ctx, G.ggml_transpose(ctx, values))          # (n_kv, head_dim, n_head_kv)
    kq = G.ggml_mul_mat(ctx, keys, queries, name=f'{name}_kq')               # (n_kv, n_tokens, n_head)
    if scores:
        masked = G.ggml_add(ctx, G.ggml_scale(ctx, kq, scale), G.ggml_cast(ctx, mask, G.GGML_TYPE_F32),
                            name=f'{name}_scores')
        probs = G.ggml_soft_max(ctx, masked, name=f'{name}_probs')
    else:
        probs = G.ggml_soft_max_ext(ctx, kq, mask, scale, 0.0, name=f'{name}_probs')
    # V transposed in the cache's type, as llama.cpp's unfused path keeps it: the product then
    # rounds the probabilities as llama.cpp does, and the two agree token for token.
    out = G.ggml_mul_mat(ctx, values_t, probs)                               # (head_dim, n_tokens, n_head)
    out = G.ggml_cont(ctx, G.ggml_permute(ctx, out, 0, 2, 1, 3))             # (head_dim, n_head, n_tokens)
    return G.ggml_reshape_2d(ctx, out, head_dim * n_head, n_tokens)
