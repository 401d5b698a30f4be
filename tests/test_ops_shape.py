"""Property tests of GGML's shape, copy and indexing ops on the CPU against numpy.

These ops move or convert values without arithmetic, so almost every check is exact: a copy must
reproduce its source bit for bit, and a conversion must match numpy's round-to-nearest-even
(float16, ml_dtypes.bfloat16). The one lossy conversion, to Q8_0, is held to its format's bound.
Shapes are in numpy order (ggml's ne[0] is numpy's last axis).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numpy_ref as ref
from gadget import ggml as G
from ggml_graph import Graph, to_numpy

seeds = st.integers(0, 2 ** 32 - 1)
dims = st.integers(1, 5)
shape4 = st.tuples(dims, dims, dims, dims)


def normal(rng, shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def q8_0_bound(x: np.ndarray) -> np.ndarray:
    """|x - dequant(quant_Q8_0(x))| per element: d = amax/127 per 32-block, q = round(x/d),
    d stored as float16: |q d' - x| <= d/2 + 127 d 2^-11 < 0.57 d, plus 127 * 2^-25 when d is
    a float16 subnormal (see numpy_ref.q8_0_error)."""
    return ref.q8_0_error(x)


# --------------------------------------------------------------------------------------------
# get_rows / set_rows

GET_ROWS_TYPES = {
    'f32': (G.GGML_TYPE_F32, np.float32, 1),
    'f16': (G.GGML_TYPE_F16, np.float16, 1),
    'bf16': (G.GGML_TYPE_BF16, ml_dtypes.bfloat16, 1),
    'q4_0': (G.GGML_TYPE_Q4_0, None, 32),
    'q8_0': (G.GGML_TYPE_Q8_0, None, 32),
    'q4_k': (G.GGML_TYPE_Q4_K, None, 256),
}


@pytest.mark.parametrize('name', list(GET_ROWS_TYPES))
@settings(max_examples=15, deadline=None)
@given(batch=st.tuples(st.integers(1, 2), st.integers(1, 3)), n_src=st.integers(1, 6),
       n_rows=st.integers(1, 8), width=st.integers(1, 40), seed=seeds)
def test_get_rows(name, batch, n_src, n_rows, width, seed):
    """get_rows(a (B3, B2, R, n), idx I32 (B3, B2, n_rows)) -> F32 (B3, B2, n_rows, n) with
    out[i3, i2, r] = a[i3, i2, idx[i3, i2, r]]; quantized rows are dequantized with GGML's own
    to_float, so every type must match exactly."""
    ggml_type, dtype, block = GET_ROWS_TYPES[name]
    rng = np.random.default_rng(seed)
    n = width if block == 1 else block * (1 + width % 2)
    a32 = normal(rng, (*batch, n_src, n))
    idx = rng.integers(0, n_src, (*batch, n_rows)).astype(np.int32)
    with Graph() as g:
        ta = g.input(a32, ggml_type) if dtype is None else g.input(a32.astype(dtype))
        held = to_numpy(ta, ndim=4).astype(np.float32)        # a as GGML holds it
        out = g.compute(G.ggml_get_rows(g.ctx, ta, g.input(idx)), ndim=4)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.take_along_axis(held, idx[..., None], axis=2))


@pytest.mark.parametrize('idx_dtype', [np.int64, np.int32])
@pytest.mark.parametrize('src_dtype', [np.float32, np.float16])
@pytest.mark.parametrize('dst', ['f32', 'f16', 'q8_0'])
@settings(max_examples=15, deadline=None)
@given(batch=st.tuples(st.integers(1, 2), st.integers(1, 4)),
       idx_batch=st.tuples(st.booleans(), st.booleans()),
       n_dst=st.integers(1, 8), frac=st.floats(0, 1), width=st.integers(1, 40), seed=seeds)
def test_set_rows(dst, src_dtype, idx_dtype, batch, idx_batch, n_dst, frac, width, seed):
    """set_rows(a (B3, B2, R, n), b (B3, B2, n_rows, n), idx (C3, C2, n_rows), C3 | B3, C2 | B2)
    writes b[i3, i2, r] into a[i3, i2, idx[i3 % C3, i2 % C2, r]] (converted to a's type) and
    leaves the other rows of a alone; the result is a view of a. F32/F16 destinations are
    exact (float16 by round-to-nearest-even); a Q8_0 destination holds each written row
    within the Q8_0 bound of b's row and keeps the others' blocks bit for bit."""
    rng = np.random.default_rng(seed)
    n = 32 * (1 + width % 2) if dst == 'q8_0' else width
    n_rows = max(1, round(frac * n_dst))
    c3, c2 = (batch[0] if idx_batch[0] else 1), (batch[1] if idx_batch[1] else 1)
    a = normal(rng, (*batch, n_dst, n))
    b = normal(rng, (*batch, n_rows, n), src_dtype)
    idx = np.stack([rng.permutation(n_dst)[:n_rows] for _ in range(c3 * c2)]).reshape(c3, c2, n_rows)
    idx = idx.astype(idx_dtype)
    with Graph() as g:
        if dst == 'q8_0':
            ta = g.input(a, G.GGML_TYPE_Q8_0)
        else:
            ta = g.input(a.astype(np.float16) if dst == 'f16' else a)
        before = to_numpy(ta, ndim=4).astype(np.float64)
        out = g.compute(G.ggml_set_rows(g.ctx, ta, g.input(b), g.input(idx)), ndim=4)
    expected = before.copy()
    written = np.zeros(expected.shape[:3], bool)
    for i3 in range(batch[0]):
        for i2 in range(batch[1]):
            rows = idx[i3 % c3, i2 % c2]
            written[i3, i2, rows] = True
            value = b[i3, i2].astype(np.float32)
            expected[i3, i2, rows] = value.astype(np.float16) if dst == 'f16' else value
    if dst == 'q8_0':
        np.testing.assert_array_equal(out[~written], before[~written])
        bound = q8_0_bound(expected[written])
        ref.assert_within(out[written], expected[written], bound, 'set_rows into Q8_0')
    else:
        np.testing.assert_array_equal(out, expected)


# --------------------------------------------------------------------------------------------
# cpy / cast

CASTS = {
    # name: (source dtype, destination ggml type, numpy conversion or None for Q8_0)
    'f32->f16': (np.float32, G.GGML_TYPE_F16, np.float16),
    'f16->f32': (np.float16, G.GGML_TYPE_F32, np.float32),
    'f32->bf16': (np.float32, G.GGML_TYPE_BF16, ml_dtypes.bfloat16),
    'bf16->f32': (ml_dtypes.bfloat16, G.GGML_TYPE_F32, np.float32),
    'f16->bf16': (np.float16, G.GGML_TYPE_BF16, ml_dtypes.bfloat16),
    'f32->q8_0': (np.float32, G.GGML_TYPE_Q8_0, None),
}


@pytest.mark.parametrize('name', list(CASTS))
@settings(max_examples=15, deadline=None)
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 3)),
       scale=st.sampled_from([1e-3, 1.0, 1e4]), seed=seeds)
def test_cast(name, shape, scale, seed):
    """ggml_cast to another type: float16 / bfloat16 by round-to-nearest-even, exactly as numpy
    and ml_dtypes convert (widening is exact); Q8_0 (read back through GGML's dequantization)
    within q8_0_bound. The magnitudes reach float16's subnormals (1e-3 * N(0,1))."""
    src_dtype, dst_type, conv = CASTS[name]
    rng = np.random.default_rng(seed)
    n = shape[-1] * 32 if conv is None else shape[-1] * 7
    x = (rng.standard_normal(shape[:-1] + (n,)) * scale).astype(src_dtype)
    with Graph() as g:
        out = g.compute(G.ggml_cast(g.ctx, g.input(x), dst_type), ndim=3)
    if conv is None:
        ref.assert_within(out, x, q8_0_bound(x), 'f32 -> q8_0 -> f32')
    else:
        assert out.dtype == np.dtype(conv)
        np.testing.assert_array_equal(out.view(np.uint8), x.astype(np.float32).astype(conv).view(np.uint8))


@pytest.mark.parametrize('dst', [np.float32, np.float16])
@settings(max_examples=15, deadline=None)
@given(shape=shape4, perm=st.permutations(range(4)), seed=seeds)
def test_cpy_noncontiguous(dst, shape, perm, seed):
    """ggml_cpy(permuted a, b): b (any shape with as many elements) receives a's elements in the
    permuted view's logical order, converted to b's type."""
    rng = np.random.default_rng(seed)
    x = normal(rng, shape)
    view_np = ref.permute(x, tuple(perm))
    out_shape = (view_np.size // view_np.shape[-1], view_np.shape[-1])
    with Graph() as g:
        v = G.ggml_permute(g.ctx, g.input(x), *perm)
        tb = g.new(G.GGML_TYPE_F32 if dst == np.float32 else G.GGML_TYPE_F16, out_shape)
        out = g.compute(G.ggml_cpy(g.ctx, v, tb), ndim=2)
    np.testing.assert_array_equal(out, view_np.reshape(out_shape).astype(dst))


# --------------------------------------------------------------------------------------------
# reshape / view / permute / transpose / cont

def _factor(rng, n: int, parts: int) -> list[int]:
    """A random factorisation of n into ``parts`` factors."""
    out = []
    for _ in range(parts - 1):
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        d = int(rng.choice(divisors))
        out.append(d)
        n //= d
    return out + [n]


@pytest.mark.parametrize('nd', [1, 2, 3, 4])
@settings(max_examples=15, deadline=None)
@given(shape=shape4, seed=seeds)
def test_reshape(nd, shape, seed):
    """ggml_reshape_{1,2,3,4}d and ggml_reshape(a, b) relabel a contiguous tensor: numpy's
    reshape of the row-major data (ne given in ggml order)."""
    rng = np.random.default_rng(seed)
    x = normal(rng, shape)
    new = tuple(_factor(rng, x.size, nd))          # numpy order
    ne = new[::-1]
    with Graph() as g:
        t = g.input(x)
        r = getattr(G, f'ggml_reshape_{nd}d')(g.ctx, t, *ne)
        r2 = G.ggml_reshape(g.ctx, t, g.new(G.GGML_TYPE_F32, new))
        assert [r.ne[i] for i in range(nd)] == list(ne)
        out, out2 = g.compute(G.ggml_cont(g.ctx, r), r2, ndim=nd)
    np.testing.assert_array_equal(out, x.reshape(new))
    np.testing.assert_array_equal(out2, x.reshape(new))


@pytest.mark.parametrize('nd', [1, 2, 3, 4])
@settings(max_examples=20, deadline=None)
@given(ne=st.lists(st.integers(1, 4), min_size=4, max_size=4),
       gaps=st.lists(st.integers(0, 3), min_size=4, max_size=4),
       offset=st.integers(0, 10), seed=seeds)
def test_view(nd, ne, gaps, offset, seed):
    """ggml_view_{1,2,3,4}d(a, ne..., nb1.., offset) reads element (i0, i1, i2, i3) from byte
    offset + i0 * 4 + i1 * nb1 + i2 * nb2 + i3 * nb3 of a's data; strides here leave gaps, so
    the view is not contiguous, and ggml_cont copies it out."""
    rng = np.random.default_rng(seed)
    ne = ne[:nd]
    strides = [1]                                   # element strides, ggml order
    for i in range(1, nd):
        strides.append(strides[-1] * ne[i - 1] + gaps[i])
    span = offset + sum((n - 1) * s for n, s in zip(ne, strides)) + 1
    flat = normal(rng, (span + gaps[0],))
    index = offset + sum(np.arange(n).reshape([-1] + [1] * i) * s
                         for i, (n, s) in enumerate(zip(ne, strides)))   # numpy order, shape ne[::-1]
    with Graph() as g:
        t = g.input(flat)
        nb = [s * 4 for s in strides[1:]]
        v = getattr(G, f'ggml_view_{nd}d')(g.ctx, t, *ne, *nb, offset * 4)
        out_view, out_cont = g.compute(v, G.ggml_cont(g.ctx, v), ndim=nd)
    np.testing.assert_array_equal(out_view, flat[index])
    np.testing.assert_array_equal(out_cont, flat[index])


@settings(max_examples=25, deadline=None)
@given(shape=shape4, perm=st.permutations(range(4)), seed=seeds)
def test_permute(shape, perm, seed):
    """ggml_permute(a, ax0..ax3) sends ggml dim i of a to dim ax_i; ggml_cont materialises it."""
    rng = np.random.default_rng(seed)
    x = normal(rng, shape)
    with Graph() as g:
        p = G.ggml_permute(g.ctx, g.input(x), *perm)
        out = g.compute(G.ggml_cont(g.ctx, p), ndim=4)
    np.testing.assert_array_equal(out, ref.permute(x, tuple(perm)))


@settings(max_examples=20, deadline=None)
@given(shape=shape4, seed=seeds)
def test_transpose(shape, seed):
    """ggml_transpose swaps ggml dims 0 and 1 (numpy's last two axes); transposing twice is the
    identity."""
    rng = np.random.default_rng(seed)
    x = normal(rng, shape)
    with Graph() as g:
        t = G.ggml_transpose(g.ctx, g.input(x))
        out, back = g.compute(G.ggml_cont(g.ctx, t), G.ggml_cont(g.ctx, G.ggml_transpose(g.ctx, t)), ndim=4)
    np.testing.assert_array_equal(out, np.swapaxes(x, -1, -2))
    np.testing.assert_array_equal(back, x)


@settings(max_examples=20, deadline=None)
@given(shape=shape4, perm=st.permutations(range(4)), seed=seeds)
def test_cont_4d(shape, perm, seed):
    """ggml_cont_4d copies a (here permuted) tensor out contiguously under a new shape of the
    same size: numpy's reshape of the permuted array."""
    rng = np.random.default_rng(seed)
    x = normal(rng, shape)
    permuted = ref.permute(x, tuple(perm))
    new = tuple(_factor(rng, x.size, 4))
    with Graph() as g:
        p = G.ggml_permute(g.ctx, g.input(x), *perm)
        out = g.compute(G.ggml_cont_4d(g.ctx, p, *new[::-1]), ndim=4)
    np.testing.assert_array_equal(out, permuted.reshape(new))


# --------------------------------------------------------------------------------------------
# concat / repeat / pad

@pytest.mark.parametrize('dtype', [np.float32, np.float16])
@pytest.mark.parametrize('dim', [0, 1, 2, 3])
@settings(max_examples=15, deadline=None)
@given(shape=shape4, extra=dims, transposed_b=st.booleans(), seed=seeds)
def test_concat(dim, dtype, shape, extra, transposed_b, seed):
    """ggml_concat(a, b, dim) joins along ggml dim ``dim`` (numpy axis 3 - dim); b may be a
    non-contiguous (transposed) view."""
    rng = np.random.default_rng(seed)
    a = normal(rng, shape, dtype)
    bshape = list(shape)
    bshape[3 - dim] = extra
    b = normal(rng, tuple(bshape), dtype)
    with Graph() as g:
        if transposed_b:
            tb = G.ggml_transpose(g.ctx, g.input(np.ascontiguousarray(np.swapaxes(b, -1, -2))))
        else:
            tb = g.input(b)
        out = g.compute(G.ggml_concat(g.ctx, g.input(a), tb, dim), ndim=4)
    np.testing.assert_array_equal(out, np.concatenate([a, b], axis=3 - dim))


@settings(max_examples=20, deadline=None)
@given(shape=st.tuples(dims, dims, dims, dims), reps=st.tuples(*[st.integers(1, 3)] * 4), seed=seeds)
def test_repeat(shape, reps, seed):
    """ggml_repeat(a, b) and ggml_repeat_4d(a, ne...) tile a to b's shape (np.tile)."""
    rng = np.random.default_rng(seed)
    x = normal(rng, shape)
    target = tuple(s * r for s, r in zip(shape, reps))
    with Graph() as g:
        t = g.input(x)
        r1 = G.ggml_repeat(g.ctx, t, g.new(G.GGML_TYPE_F32, target))
        r2 = G.ggml_repeat_4d(g.ctx, t, *target[::-1])
        out1, out2 = g.compute(r1, r2, ndim=4)
    np.testing.assert_array_equal(out1, np.tile(x, reps))
    np.testing.assert_array_equal(out2, np.tile(x, reps))


@settings(max_examples=20, deadline=None)
@given(shape=shape4, pads=st.lists(st.integers(0, 3), min_size=8, max_size=8), seed=seeds)
def test_pad(shape, pads, seed):
    """ggml_pad(a, p0..p3) appends zeros at the end of each ggml dim; ggml_pad_ext(a, lp0, rp0,
    ..., lp3, rp3) pads both sides (np.pad with zeros)."""
    rng = np.random.default_rng(seed)
    x = normal(rng, shape)
    lp, rp = pads[:4], pads[4:]                      # ggml order
    with Graph() as g:
        t = g.input(x)
        p1 = G.ggml_pad(g.ctx, t, *rp)
        p2 = G.ggml_pad_ext(g.ctx, t, lp[0], rp[0], lp[1], rp[1], lp[2], rp[2], lp[3], rp[3])
        out1, out2 = g.compute(p1, p2, ndim=4)
    np.testing.assert_array_equal(out1, np.pad(x, [(0, rp[3 - j]) for j in range(4)]))
    np.testing.assert_array_equal(out2, np.pad(x, [(lp[3 - j], rp[3 - j]) for j in range(4)]))


# --------------------------------------------------------------------------------------------
# masks, sorting, arange

@pytest.mark.parametrize('op', ['inf', 'zero'])
@settings(max_examples=20, deadline=None)
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 8), st.integers(1, 12)), n_past=st.integers(0, 6),
       seed=seeds)
def test_diag_mask(op, shape, n_past, seed):
    """ggml_diag_mask_{inf,zero}(a, n_past): in every (rows, cols) matrix, entries with
    col > n_past + row become -inf / 0; the rest are copied."""
    rng = np.random.default_rng(seed)
    x = normal(rng, shape)
    with Graph() as g:
        f = G.ggml_diag_mask_inf if op == 'inf' else G.ggml_diag_mask_zero
        out = g.compute(f(g.ctx, g.input(x), n_past), ndim=3)
    np.testing.assert_array_equal(out, ref.diag_mask(x, n_past, -np.inf if op == 'inf' else 0.0))


def _row_values(rng, shape, ties: bool) -> np.ndarray:
    """Rows of distinct normals, or of a few repeated values (ties) when ``ties``."""
    if ties:
        return rng.integers(-3, 4, shape).astype(np.float32)
    return normal(rng, shape)


@pytest.mark.parametrize('order', ['asc', 'desc'])
@settings(max_examples=20, deadline=None)
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 100)), ties=st.booleans(),
       seed=seeds)
def test_argsort(order, shape, ties, seed):
    """ggml_argsort -> I32 indices that sort each row (ascending or descending); with ties the
    order among equal values is unspecified, so the check is: a permutation of the row whose
    gathered values are sorted."""
    rng = np.random.default_rng(seed)
    x = _row_values(rng, shape, ties)
    gorder = G.GGML_SORT_ORDER_ASC if order == 'asc' else G.GGML_SORT_ORDER_DESC
    with Graph() as g:
        idx = g.compute(G.ggml_argsort(g.ctx, g.input(x), gorder), ndim=3)
    assert idx.dtype == np.int32
    np.testing.assert_array_equal(np.sort(idx, axis=-1), np.broadcast_to(np.arange(shape[-1]), shape))
    expected = np.sort(x, axis=-1)
    if order == 'desc':
        expected = expected[..., ::-1]
    np.testing.assert_array_equal(np.take_along_axis(x, idx, -1), expected)


@settings(max_examples=20, deadline=None)
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 100)), frac=st.floats(0, 1),
       ties=st.booleans(), seed=seeds)
def test_top_k(shape, frac, ties, seed):
    """ggml_top_k(a, k) -> I32 (..., k) indices of the k largest entries of each row, in no
    particular order: distinct, in range, and their values are the k largest (as a multiset)."""
    rng = np.random.default_rng(seed)
    x = _row_values(rng, shape, ties)
    k = max(1, round(frac * shape[-1]))
    with Graph() as g:
        idx = g.compute(G.ggml_top_k(g.ctx, g.input(x), k), ndim=3)
    assert idx.shape == shape[:-1] + (k,) and idx.dtype == np.int32
    assert ((idx >= 0) & (idx < shape[-1])).all()
    assert (np.diff(np.sort(idx, axis=-1), axis=-1) > 0).all()
    got = np.sort(np.take_along_axis(x, idx, -1), axis=-1)
    np.testing.assert_array_equal(got, np.sort(x, axis=-1)[..., shape[-1] - k:])


@settings(max_examples=25, deadline=None)
@given(start=st.floats(-100, 100), length=st.floats(0.01, 200), step=st.floats(0.05, 10))
def test_arange(start, length, step):
    """ggml_arange(start, stop, step): ceil((stop - start) / step) values start + i * step, with
    the count and each value computed in float32: each value within 2 roundings,
    2^-23 * (|start| + |i * step|), of the exact one."""
    start, step = np.float32(start), np.float32(step)
    stop = np.float32(start + np.float32(length))
    if not stop > start:
        stop = np.nextafter(start, np.float32(np.inf))
    n = int(np.ceil(np.float32(stop - start) / step))
    with Graph() as g:
        out = g.compute(G.ggml_arange(g.ctx, float(start), float(stop), float(step)), ndim=1)
    i = np.arange(n, dtype=np.float64)
    expected = np.float64(start) + i * np.float64(step)
    ref.assert_within(out, expected, 2.0 ** -23 * (abs(np.float64(start)) + i * np.float64(step)), 'arange')


# --------------------------------------------------------------------------------------------
# resampling, windows

@settings(max_examples=20, deadline=None)
@given(shape=shape4, factor=st.integers(2, 3), size=st.tuples(*[st.integers(1, 9)] * 4), seed=seeds)
def test_upscale_interpolate_nearest(shape, factor, size, seed):
    """Nearest-neighbour resampling: ggml_upscale(a, f) scales the two innermost ggml dims by f;
    ggml_interpolate(a, ne0..ne3, NEAREST) resizes every dim, destination index i reading
    source index floor(i * n_src / n_dst)."""
    rng = np.random.default_rng(seed)
    x = normal(rng, shape)
    with Graph() as g:
        t = g.input(x)
        up = G.ggml_upscale(g.ctx, t, factor, G.GGML_SCALE_MODE_NEAREST)
        it = G.ggml_interpolate(g.ctx, t, *size[::-1], G.GGML_SCALE_MODE_NEAREST)
        out_up, out_it = g.compute(up, it, ndim=4)
    np.testing.assert_array_equal(out_up, x.repeat(factor, axis=2).repeat(factor, axis=3))
    expected = x[np.ix_(*[np.arange(n) * s // n for s, n in zip(shape, size)])]
    np.testing.assert_array_equal(out_it, expected)


@settings(max_examples=20, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), c=st.integers(1, 4), win=st.integers(1, 5), seed=seeds)
def test_win_part(h, w, c, win, seed):
    """ggml_win_part(a (H, W, C), w) zero-pads H and W to multiples of w and returns the w x w
    windows, row-major, as (n_windows, w, w, C)."""
    rng = np.random.default_rng(seed)
    x = normal(rng, (h, w, c))
    with Graph() as g:
        out = g.compute(G.ggml_win_part(g.ctx, g.input(x), win), ndim=4)
    np.testing.assert_array_equal(out, ref.win_part(x, win))
