"""numpy reference implementations of GGML ops, and the error bounds the op tests allow.

Everything here works in numpy order (the last axis is ggml's ``ne[0]``) and computes in float64,
from the published definitions of the ops; nothing calls GGML. The ``*_bound`` helpers turn the
rounding that GGML's CPU kernels do by design (documented type conversions, float32
accumulation) into per-element absolute tolerances, so that each test can say exactly what it
allows and why.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

U32 = 2.0 ** -24    # unit roundoff of float32 (round to nearest)
U16 = 2.0 ** -11    # unit roundoff of float16
UBF16 = 2.0 ** -8   # unit roundoff of bfloat16


def assert_within(actual, desired, bound, what: str = '') -> None:
    """Assert ``|actual - desired| <= bound`` elementwise (``bound`` broadcasts; NaN fails).

    ``numpy.testing.assert_allclose`` only takes a scalar ``atol``; the op tests need per-element
    bounds, so this reports like it: how many elements fail and the worst one.
    """
    actual = np.asarray(actual, np.float64)
    desired = np.asarray(desired, np.float64)
    assert actual.shape == desired.shape, (what, actual.shape, desired.shape)
    bound = np.broadcast_to(np.asarray(bound, np.float64), actual.shape)
    err = np.abs(actual - desired)
    bad = ~(err <= bound)
    if bad.any():
        ratio = np.where(bad, np.nan_to_num(err, nan=np.inf) / np.maximum(bound, 1e-300), 0)
        worst = np.unravel_index(np.argmax(ratio), ratio.shape)
        raise AssertionError(
            f'{what}: {int(bad.sum())} of {bad.size} elements outside the bound; worst at {worst}: '
            f'actual {actual[worst]!r}, desired {desired[worst]!r}, |error| {err[worst]:.3g} > '
            f'bound {bound[worst]:.3g}')


# --------------------------------------------------------------------------------------------
# matrix multiplication and its error bound

def mul_mat(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``ggml_mul_mat(a, b)`` in numpy terms: ``b @ a.T`` over the last two axes.

    ``a`` is (..., M, K) and ``b`` (..., N, K); the leading (batch) axes of ``a`` are repeated
    to those of ``b`` the way GGML broadcasts them: ``a``'s batch ``i`` serves ``b``'s batches
    ``i*r .. i*r + r - 1`` (``np.repeat``, not ``np.tile``).
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    for axis in range(a.ndim - 2):
        r = b.shape[axis] // a.shape[axis]
        a = np.repeat(a, r, axis=axis)
    return b @ np.swapaxes(a, -1, -2)


def _block_amax(x: np.ndarray, block: int) -> np.ndarray:
    """max |x| over consecutive blocks of ``block`` elements of the last axis, per element."""
    blocks = np.abs(x).reshape(*x.shape[:-1], x.shape[-1] // block, block)
    return np.repeat(blocks.max(axis=-1), block, axis=-1)


def _block_min(x: np.ndarray, block: int) -> np.ndarray:
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // block, block)
    return np.repeat(blocks.min(axis=-1), block, axis=-1)


# Per-element bound on |b' - b| when GGML converts the activations ``b`` to the weight's
# ``vec_dot_type`` (ggml-cpu.c type traits) before the dot products:
#
# * Q8_0 / Q8_1 (blocks of 32): d = amax/127, q = round(b/d) so |q*d - b| <= d/2; the scale is
#   stored as float16, which moves each q*d by at most |q| * d * 2^-11 <= 127 * 2^-11 * d, or,
#   for a scale in float16's subnormal range (d < 2^-14), by 127 * 2^-25 absolute.
#   Together 0.5625 * d + 127 * 2^-25; 0.57 * d leaves room for the float32 rounding of b/d.
# * Q8_K (blocks of 256): same rounding, but the scale is stored as float32: 0.5 * d, plus
#   float32 slack.
_Q8_0_COEF = 0.57
_Q8_K_COEF = 0.501
_Q8_0_SUBNORMAL = 127 * 2.0 ** -25


def q8_0_error(x: np.ndarray) -> np.ndarray:
    """Per-element bound on |dequant(quant_Q8_0(x)) - x| (x's last axis in blocks of 32)."""
    return _Q8_0_COEF * _block_amax(np.asarray(x, np.float64), 32) / 127 + _Q8_0_SUBNORMAL


def mul_mat_bound(a: np.ndarray, b: np.ndarray, kind: str, b_on_grid: bool = False) -> np.ndarray:
    """Absolute error bound, per output element, of ``ggml_mul_mat`` against ``mul_mat(a, b)``.

    ``a`` (M, K) is the weight exactly as GGML holds it (dequantized for a quantized type), ``b``
    (N, K) the float32 activations. GGML computes ``sum_k a_k * b'_k`` where ``b'`` is ``b``
    converted to the weight's vec_dot_type, so the error is at most ``sum_k |a_k| * e_k`` where
    ``e_k`` bounds ``|b'_k - b_k|``. To that comes the float32 accumulation, bounded by
    ``gamma_(K+8) * sum_k |a_k| |b_k|`` (Higham's bound for any summation order, with 8 spare
    roundings for the block scales; the factor K also covers the few roundings of
    dequantization's ``d*q - m``, which can cancel, for Q4_1 / Q4_K).

    ``kind``: 'f32' (no conversion), 'f16' (b rounded to float16: relative 2^-11, plus 2^-25
    absolute for float16 subnormals), 'bf16' (relative 2^-8), 'q8_0' (Q4_0, Q5_0, Q8_0 weights),
    'q8_1' (Q4_1), 'q8_k' (K-quants).

    ``b_on_grid``: ``b`` is exactly representable in the vec_dot_type (``activations_on_grid``),
    so ``e = 0``; only the float32 terms (and Q8_1's rounded block sum, below) remain.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    k = a.shape[-1]
    bound = (k + 8) * U32 * (np.abs(b) @ np.abs(a).T)
    if kind == 'f32':
        return bound
    if kind in ('f16', 'bf16'):
        if b_on_grid:
            return bound
        e = U16 * np.abs(b) + 2.0 ** -25 if kind == 'f16' else UBF16 * np.abs(b)
        return bound + e @ np.abs(a).T
    block = 256 if kind == 'q8_k' else 32
    d = _block_amax(b, block) / 127
    if not b_on_grid:
        e = _Q8_K_COEF * d if kind == 'q8_k' else q8_0_error(b)
        bound = bound + e @ np.abs(a).T
    if kind == 'q8_1':
        # Q4_1 x Q8_1: GGML computes sum_blocks d_a*d_b*sum(qa*qb) + m_a*s_b, i.e.
        # sum_k a_k b'_k + m_a * (s_b - d_b*sum(qb)) per block, where a = d_a*qa + m_a (m_a is the
        # block's minimum: Q4_1's quantizer maps the minimum to qa = 0) and s_b = fp16(d*sum(qb))
        # stands in for the block sum of b'. So each block adds |m_a| * |s_b - d_b sum(qb)|
        # <= |m_a| * (2 * 2^-11 + 2 * 2^-24) * |d sum(qb)|, and |d sum(qb)| <= |sum(b)| + 16 d
        # (exactly |sum(b)| on the grid).
        n_blocks = k // 32
        m = np.abs(_block_min(a, 32)[:, ::32])                                # (M, n_blocks)
        block_sum = np.abs(b.reshape(*b.shape[:-1], n_blocks, 32).sum(axis=-1))  # (N, n_blocks)
        if not b_on_grid:
            block_sum = block_sum + 16.1 * d[..., ::32]
        # (+ 2 * 2^-25 for the float16 roundings of d and s when they are subnormal)
        bound = bound + (2.01 * U16) * (block_sum @ m.T) + 2 * 2.0 ** -25 * m.sum(axis=-1)
    return bound


def activations_on_grid(rng: np.random.Generator, shape: tuple[int, int], kind: str) -> np.ndarray:
    """float32 activations that GGML's conversion to ``kind`` (see ``mul_mat_bound``) represents
    exactly: float16 / bfloat16 values; for Q8_0/Q8_1 blocks of 32 integers q in [-127, 127]
    (one of them +-127, so amax = 127 d) times a float16 scale d; for Q8_K blocks of 256 times
    a power-of-two scale (Q8_K computes d as 1 / (127 / max), exact only for powers of two)."""
    n, k = shape
    if kind in ('f32', 'f16', 'bf16'):
        dtype = {'f32': np.float32, 'f16': np.float16, 'bf16': ml_dtypes.bfloat16}[kind]
        return rng.standard_normal(shape).astype(dtype).astype(np.float32)
    block = 256 if kind == 'q8_k' else 32
    n_blocks = k // block
    q = rng.integers(-127, 128, (n, n_blocks, block))
    q[np.arange(n)[:, None], np.arange(n_blocks)[None, :], rng.integers(block, size=(n, n_blocks))] = \
        rng.choice([-127, 127], (n, n_blocks))
    expo = rng.integers(-9, 2, (n, n_blocks, 1)).astype(np.float64)
    if kind == 'q8_k':
        d = 2.0 ** expo
    else:
        d = (2.0 ** expo * (1 + rng.integers(0, 1024, (n, n_blocks, 1)) / 1024)).astype(np.float16)
    return (q * d.astype(np.float64)).astype(np.float32).reshape(n, k)


# --------------------------------------------------------------------------------------------
# softmax and normalisations

def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(axis=axis, keepdims=True)


def broadcast_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A soft_max / flash_attn mask of numpy shape (n3, n2, rows >= shape[-2], cols) brought to
    the 4D ``shape`` the GGML way: extra rows ignored, dims 2/3 tiled (index ``i % n``)."""
    mask = np.asarray(mask, np.float64)[..., :shape[-2], :]
    reps = [s // m for s, m in zip(shape[:-2], mask.shape[:-2])] + [1, 1]
    return np.tile(mask, reps)


def norm(x: np.ndarray, eps: float) -> np.ndarray:
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def rms_norm(x: np.ndarray, eps: float) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.sqrt((x ** 2).mean(axis=-1, keepdims=True) + eps)


def l2_norm(x: np.ndarray, eps: float) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.sqrt((x ** 2).sum(axis=-1, keepdims=True)), eps)


def group_norm(x: np.ndarray, n_groups: int, eps: float) -> np.ndarray:
    """GGML's group norm of x (N, C, H, W): channels split into groups of ceil(C / n_groups)
    (the last group takes the remainder), each group normalised over its (C_g, H, W) elements."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    c = x.shape[1]
    per = -(-c // n_groups)
    for start in range(0, c, per):
        g = x[:, start:start + per]
        mean = g.mean(axis=(1, 2, 3), keepdims=True)
        var = ((g - mean) ** 2).mean(axis=(1, 2, 3), keepdims=True)
        out[:, start:start + per] = (g - mean) / np.sqrt(var + eps)
    return out


# --------------------------------------------------------------------------------------------
# rotary position embedding

def rope_angles(pos: np.ndarray, n_dims: int, base: float, freq_scale: float) -> np.ndarray:
    """theta[t, i] = freq_scale * pos[t] * base^(-2i / n_dims), i < n_dims / 2."""
    i = np.arange(n_dims // 2, dtype=np.float64)
    return freq_scale * np.asarray(pos, np.float64)[:, None] * base ** (-2.0 * i / n_dims)


def rope_pairs(head_dim: int, n_dims: int, neox: bool) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the rotated pairs: (2i, 2i+1) normally, (i, i + n_dims/2) for NeoX."""
    i = np.arange(n_dims // 2)
    return (i, i + n_dims // 2) if neox else (2 * i, 2 * i + 1)


def rope(x: np.ndarray, pos: np.ndarray, n_dims: int, base: float, freq_scale: float,
         neox: bool) -> np.ndarray:
    """RoPE of x (n_tokens, n_head, head_dim): the first n_dims of each head rotated by
    theta[t, i], the rest passed through."""
    x = np.asarray(x, np.float64)
    theta = rope_angles(pos, n_dims, base, freq_scale)[:, None, :]   # (t, 1, n_dims/2)
    i0, i1 = rope_pairs(x.shape[-1], n_dims, neox)
    x0, x1 = x[..., i0], x[..., i1]
    out = x.copy()
    out[..., i0] = x0 * np.cos(theta) - x1 * np.sin(theta)
    out[..., i1] = x0 * np.sin(theta) + x1 * np.cos(theta)
    return out


def rope_bound(x: np.ndarray, pos: np.ndarray, n_dims: int, base: float, freq_scale: float,
               neox: bool) -> np.ndarray:
    """Per-element error bound of GGML's float32 RoPE.

    The CPU kernel builds theta_i by repeated multiplication, theta_i = theta_(i-1) * s with
    s = powf(base, -2/n_dims) (within 2 ulp), then multiplies by freq_scale: theta_i carries a
    relative error of at most (3i + 3) * 2^-24. A phase error dtheta moves the rotated pair by at
    most |(x0, x1)| * dtheta; cosf/sinf and the rotation's float32 products and sum add a few
    2^-24 of |(x0, x1)|. The bound doubles this; untouched dimensions must match exactly.
    """
    x = np.asarray(x, np.float64)
    theta = rope_angles(pos, n_dims, base, freq_scale)[:, None, :]
    i = np.arange(n_dims // 2)
    dtheta = theta * (3 * i + 3) * U32
    i0, i1 = rope_pairs(x.shape[-1], n_dims, neox)
    radius = np.hypot(x[..., i0], x[..., i1])
    pair = 2 * radius * (dtheta + 6 * U32)
    out = np.zeros_like(x)
    out[..., i0] = pair
    out[..., i1] = pair
    return out


# --------------------------------------------------------------------------------------------
# attention

def attention(q, k, v, mask, scale):
    """Naive attention in GGML's layout, numpy order.

    q (B, H, N, D), k (B, Hkv, L, D), v (B, Hkv, L, Dv), mask broadcastable to (B, H, N, L) or
    None. Head h of q uses kv head h // (H / Hkv) (GGML repeats kv heads, as for mul_mat).
    Returns (out (B, H, N, Dv), probabilities (B, H, N, L), and k, v with their heads repeated
    to H).
    """
    q = np.asarray(q, np.float64)
    r = q.shape[1] // k.shape[1]
    k = np.repeat(np.asarray(k, np.float64), r, axis=1)
    v = np.repeat(np.asarray(v, np.float64), r, axis=1)
    kq = scale * q @ np.swapaxes(k, -1, -2)
    s = kq if mask is None else kq + mask
    p = softmax(s)
    return p @ v, p, k, v


def attention_bound(q, k, v, mask, scale, q_unit: float, acc: str) -> np.ndarray:
    """Error bound of GGML's flash attention per output element (B, H, N, Dv).

    * Scores: Q is converted to K's vec_dot_type before the K·Q products (F16 for F16 K on the
      one-row-at-a-time kernel; ``q_unit`` = 2^-11, or 0 where Q stays float32). Each score then
      moves by at most ``scale * (q_unit + (D+2) 2^-24) * sum_d |q_d k_d|`` (with the float32
      dot product), and a perturbation ds of the scores moves a softmax average by at most
      ``2 max|ds| * sum_j p_j |v_j|``.
    * ``acc='f32'``: the V accumulator is float32; 2 roundings per key give at most
      ``2 L 2^-24 * sum_j p_j |v_j|``.
    * ``acc='f16'`` / ``'f16_chunked'``: the accumulator is F16 (V is F16), rounded after each
      multiply-add and each rescale on a new maximum. In the final frame (divided by S) the
      rounding at key t errs by delta_t * P_t, |delta_t| <= 2^-11, where P_t = sum_(j<=t) p_j v_j
      is the running partial sum (restarting where the keys are split between threads for
      'f16_chunked', so there R_t = |P_t| + max_(s<=t) |P_s| bounds any restarted partial sum).
      The worst case, 2^-11 * sum_t R_t, grows like L and would hide real errors at L ~ 500;
      this uses the probabilistic model of rounding (independent, mean-zero delta_t; Higham &
      Mary, SIAM J. Sci. Comput. 2019) with Hoeffding's inequality: the error exceeds
      ``8 * 2^-11 * sqrt(2 sum_t R_t^2)`` with probability < 2 exp(-32) per element.
    * expf and the float32 running sum S add a few 2^-24 relative; 64 * 2^-24 covers them.
    """
    _, p, k_rep, v_rep = attention(q, k, v, mask, scale)
    q = np.asarray(q, np.float64)
    d = q.shape[-1]
    n_kv = k_rep.shape[-2]
    abs_qk = np.abs(q) @ np.abs(np.swapaxes(k_rep, -1, -2))          # (B, H, N, L)
    ds = scale * (q_unit + (d + 2) * U32) * abs_qk
    if mask is not None:
        ds = np.where(np.isneginf(mask + np.zeros_like(ds)), 0.0, ds)
    ds_max = ds.max(axis=-1, keepdims=True)
    weighted_v = p @ np.abs(v_rep)                                   # (B, H, N, Dv)
    bound = (2 * ds_max + 64 * U32) * weighted_v + 1e-7
    if acc == 'f32':
        return bound + 2 * n_kv * U32 * weighted_v
    partial = np.cumsum(p[..., :, None] * v_rep[..., None, :, :], axis=-2)   # (B, H, N, L, Dv)
    r = np.abs(partial)
    if acc == 'f16_chunked':
        r = r + np.maximum.accumulate(r, axis=-2)
    return bound + 8 * U16 * np.sqrt(2 * (r ** 2).sum(axis=-2))


# --------------------------------------------------------------------------------------------
# convolutions and pooling

def conv2d(x: np.ndarray, w: np.ndarray, stride, padding, dilation) -> np.ndarray:
    """x (N, C, H, W), w (OC, C, KH, KW); zero padding; returns (N, OC, OH, OW)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    (s1, s0), (p1, p0), (d1, d0) = stride, padding, dilation
    kh, kw = w.shape[-2:]
    xp = np.pad(x, ((0, 0), (0, 0), (p1, p1), (p0, p0)))
    span_h, span_w = d1 * (kh - 1) + 1, d0 * (kw - 1) + 1
    win = sliding_window_view(xp, (span_h, span_w), axis=(2, 3))     # N, C, H', W', span_h, span_w
    win = win[:, :, ::s1, ::s0, ::d1, ::d0]                          # N, C, OH, OW, KH, KW
    return np.einsum('nchwij,ocij->nohw', win, w)


def conv1d(x: np.ndarray, w: np.ndarray, stride: int, padding: int, dilation: int) -> np.ndarray:
    """x (N, C, L), w (OC, C, K); returns (N, OC, OL)."""
    return conv2d(np.asarray(x)[:, :, None, :], np.asarray(w)[:, :, None, :],
                  (1, stride), (0, padding), (1, dilation))[:, :, 0, :]


def im2col(x: np.ndarray, kh: int, kw: int, stride, padding, dilation) -> np.ndarray:
    """GGML's im2col of x (N, C, H, W): (N, OH, OW, C*KH*KW), the last axis ordered (c, ky, kx)."""
    (s1, s0), (p1, p0), (d1, d0) = stride, padding, dilation
    xp = np.pad(np.asarray(x), ((0, 0), (0, 0), (p1, p1), (p0, p0)))
    span_h, span_w = d1 * (kh - 1) + 1, d0 * (kw - 1) + 1
    win = sliding_window_view(xp, (span_h, span_w), axis=(2, 3))[:, :, ::s1, ::s0, ::d1, ::d0]
    n, c, oh, ow = win.shape[:4]
    return np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(n, oh, ow, c * kh * kw)


def pool1d(x: np.ndarray, op: str, k: int, s: int, p: int) -> np.ndarray:
    """GGML's pool_1d over the last axis: padding cells are skipped, AVG divides by the number
    of real cells in the window."""
    x = np.asarray(x, np.float64)
    n = x.shape[-1]
    out_n = (n + 2 * p - k) // s + 1
    out = np.empty(x.shape[:-1] + (out_n,))
    for o in range(out_n):
        lo, hi = max(o * s - p, 0), min(o * s - p + k, n)
        window = x[..., lo:hi]
        out[..., o] = window.max(axis=-1) if op == 'max' else window.mean(axis=-1)
    return out


def pool2d(x: np.ndarray, op: str, k, s, p) -> np.ndarray:
    """GGML's pool_2d over the last two axes (k, s, p as (dim1, dim0)): padding cells are
    skipped for MAX; AVG divides by KH*KW, padding cells counting as zeros."""
    x = np.asarray(x, np.float64)
    (k1, k0), (s1, s0), (p1, p0) = k, s, p
    h, w = x.shape[-2:]
    oh, ow = (h + 2 * p1 - k1) // s1 + 1, (w + 2 * p0 - k0) // s0 + 1
    out = np.empty(x.shape[:-2] + (oh, ow))
    for oy in range(oh):
        y0, y1 = max(oy * s1 - p1, 0), min(oy * s1 - p1 + k1, h)
        for ox in range(ow):
            x0, x1 = max(ox * s0 - p0, 0), min(ox * s0 - p0 + k0, w)
            window = x[..., y0:y1, x0:x1]
            if op == 'max':
                out[..., oy, ox] = window.max(axis=(-2, -1))
            else:
                out[..., oy, ox] = window.sum(axis=(-2, -1)) / (k0 * k1)
    return out


# --------------------------------------------------------------------------------------------
# odds and ends

def permute(x: np.ndarray, axes_ggml: tuple[int, int, int, int]) -> np.ndarray:
    """``ggml_permute(a, ax0, ax1, ax2, ax3)`` of a 4D numpy array: ggml dim i of ``a`` becomes
    ggml dim ax_i of the result (numpy axis j is ggml dim 3 - j)."""
    src_of = [0] * 4
    for i, ax in enumerate(axes_ggml):
        src_of[ax] = i                       # result ggml dim ax comes from source ggml dim i
    return np.transpose(x, [3 - src_of[3 - j] for j in range(4)])


def diag_mask(x: np.ndarray, n_past: int, value: float) -> np.ndarray:
    """Elements of each (rows, cols) matrix with col > n_past + row set to ``value``."""
    x = np.array(x, np.float64)
    rows, cols = x.shape[-2:]
    above = np.arange(cols)[None, :] > n_past + np.arange(rows)[:, None]
    x[..., above] = value
    return x


def timestep_embedding(t: np.ndarray, dim: int, max_period: int) -> np.ndarray:
    """[cos(t f_j), sin(t f_j)] with f_j = max_period^(-j / half), j < half = dim // 2; a zero
    column is appended for odd ``dim``."""
    half = dim // 2
    freqs = np.exp(-np.log(max_period) * np.arange(half) / half)
    args = np.asarray(t, np.float64)[:, None] * freqs[None, :]
    out = np.concatenate([np.cos(args), np.sin(args)], axis=-1)
    if dim % 2:
        out = np.concatenate([out, np.zeros((len(t), 1))], axis=-1)
    return out


def ssm_conv(sx: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Mamba's causal depthwise conv: sx (S, D, K-1+T), c (D, K) -> (S, T, D),
    out[s, t, d] = sum_k sx[s, d, t + k] * c[d, k]."""
    sx = np.asarray(sx, np.float64)
    k = c.shape[-1]
    win = sliding_window_view(sx, k, axis=-1)                        # S, D, T, K
    return np.einsum('sdtk,dk->std', win, np.asarray(c, np.float64))


def win_part(x: np.ndarray, w: int) -> np.ndarray:
    """SAM's window partition of x (H, W, C): zero-pad H, W to multiples of w and cut w x w
    windows, numbered row-major: (n_windows, w, w, C)."""
    h, wd, c = x.shape
    nh, nw = -(-h // w), -(-wd // w)
    xp = np.zeros((nh * w, nw * w, c), x.dtype)
    xp[:h, :wd] = x
    return xp.reshape(nh, w, nw, w, c).transpose(0, 2, 1, 3, 4).reshape(nh * nw, w, w, c)
