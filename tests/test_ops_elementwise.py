"""Property tests: GGML element-wise, broadcasting, reduction and gated ops against numpy (CPU).

Every op is checked on random shapes (1 to 4 dimensions, 1 to 9 elements each) and random values
against a numpy reference written from GGML's definition of the op (``ggml.h`` and the CPU kernels
in ``vendor/ggml/src/ggml-cpu/``: ``unary-ops.cpp``, ``binary-ops.cpp``, ``ops.cpp``, ``vec.h``),
and the result node's shape and type are checked before computing.

Tolerances. Where GGML's kernel does the same IEEE float32 operations as the numpy reference
(copies, comparisons, one ``+ - * /``, sqrt), results must be bit-identical (``EXACT``). Other
references are evaluated in float64, and the allowed error is derived from what the kernel
does; see the ``Tol`` constants below. The error bound of an element is
``atol + rtol * |reference| + xtol * scale``, where ``scale`` is a per-element magnitude the error is
proportional to even when the result itself is small (|x| where ``1 + tanh`` or ``1 + erf``
cancels, the terms of a cancelling sum, ...).

Findings recorded here (the tests assert GGML's documented semantics):

* ``ggml_count_equal`` reads the wrong rows of 3-D and 4-D tensors (whenever ``ne[2] != ne[1]``
  or ``ne[3] > 1``): its row index arithmetic in ``ops.cpp`` uses ``ne03``/``ne02`` where
  ``ne02*ne01``/``ne01`` are meant. The property test keeps to 1-D and 2-D tensors; a strict
  xfail test pins the bug down deterministically.
* ``ggml_argmax`` returns the *last* index of a tied maximum (numpy returns the first); ``ggml.h``
  does not say which, the test follows the kernel.
* ``ggml_expm1`` is ``expf(x) - 1`` (not ``expm1f``): absolute error ~1e-7 near 0, so relative
  error is large there; ``ggml_softplus`` is ``logf(1 + expf(x))`` with the same effect for
  x < -16. Both are tested to an absolute float32 epsilon there.
* ``ggml_gelu`` and ``ggml_gelu_quick`` (and ``ggml_geglu``, ``ggml_geglu_quick``) compute float32
  inputs through an fp16 lookup table (``GGML_GELU_FP16`` / ``GGML_GELU_QUICK_FP16`` in ``vec.h``):
  the input is rounded to fp16 and so is the activation, ~1e-3 relative. The references model that
  rounding of the input, so the result is still checked to one fp16 rounding.
* The comment on ``ggml_xielu`` in ``ggml.h`` gives a formula (``x * (c_a + c_b * sigmoid(beta x))
  + eps * (x > 0)``) that is not what the kernel computes; the kernel implements the published
  xIELU (alpha_p x^2 + beta x for x > 0, alpha_n (expm1(min(x, eps)) - x) + beta x otherwise, with
  alpha_p = softplus(alpha_p'), alpha_n = beta + softplus(alpha_n')), which is what is tested.
* ``ggml_clamp`` works in place: its result is a view of its input, as ``ggml.h`` says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

from gadget import ggml as G
from ggml_graph import Graph, to_numpy

SETTINGS = settings(max_examples=25, deadline=None)

F32, F16 = np.dtype(np.float32), np.dtype(np.float16)
GGML_TYPE = {F32: G.GGML_TYPE_F32, F16: G.GGML_TYPE_F16, np.dtype(np.int32): G.GGML_TYPE_I32,
             np.dtype(np.int64): G.GGML_TYPE_I64}
DTYPES = pytest.mark.parametrize('dtype', [F32, F16], ids=['f32', 'f16'])

EPS32 = 2.0 ** -23      # float32 machine epsilon (one ulp at 1.0)
EPS16 = 2.0 ** -10      # float16 machine epsilon


# --- tolerances ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tol:
    rtol: float = 0.0
    atol: float = 0.0
    xtol: float = 0.0   # times the test's per-element ``scale``

    @property
    def exact(self) -> bool:
        return self.rtol == self.atol == self.xtol == 0.0


# Same float32 operations as the numpy reference: bit-identical results.
EXACT = Tol()
# libm float functions (expf, logf, sinf, tanhf, erff, expm1f) are within 1-2 ulp in glibc, and the
# kernels' formulas add up to ~3 float32 roundings (sigmoid = 1/(1+expf(-x))); the SIMD silu uses
# GGML's own expf with a documented max error of ~2 ulp. 1e-6 is ~8 float32 ulp.
LIBM = Tol(rtol=1e-6)
# sin/cos: also half an ulp at 1.0 absolute, for results near a zero crossing, where a libm's
# error bound follows the argument reduction rather than the tiny result.
TRIG = Tol(rtol=1e-6, atol=EPS32 / 2)
# expm1 is expf(x) - 1 and softplus is logf(1 + expf(x)): rounding the intermediate near 1.0
# costs up to one ulp at 1.0 absolute (2 * EPS32 with the final rounding), whatever the result.
CANCEL_AT_1 = Tol(rtol=1e-6, atol=2 * EPS32)
# gelu_erf = 0.5 x (1 + erff(x / sqrt 2)): for x << 0, 1 + erff(.) cancels, so the error is
# ~ 0.5 |x| * ulp(1.0), i.e. proportional to |x| rather than to the (tiny) result.
ERF_CANCEL = Tol(rtol=1e-6, xtol=EPS32)
# gelu / gelu_quick in float32 read a table indexed by fp16(x) holding fp16(act(fp16(x))) (vec.h,
# GGML_GELU_FP16 / GGML_GELU_QUICK_FP16); the reference is evaluated at fp16(x) (``Unary.table``),
# leaving one fp16 rounding of the result: rtol = 2^-10 is twice 2^-11; atol covers fp16 subnormals
# (spacing 2^-24). The entries come from the float32 tanh formula, where 1 + tanhf(.) cancels for
# x << 0: ~0.5 |x| ulp(1.0), hence xtol = EPS32 on |x|.
FP16_TABLE = Tol(rtol=EPS16, atol=2.0 ** -24, xtol=EPS32)
# Any op computed in float32 and stored as fp16: one fp16 rounding (<= 2^-11 relative) plus the
# float32 error; rtol = 2^-10 is twice that. atol: fp16 subnormal spacing 2^-24.
F16_ROUND = Tol(rtol=EPS16, atol=2.0 ** -24)


def tol_for(f32: Tol, dtype: np.dtype) -> Tol:
    """Tolerance for an op computed in float32 whose result is stored in ``dtype``."""
    if dtype == F32 or f32.exact:
        return f32
    return Tol(rtol=max(f32.rtol, F16_ROUND.rtol), atol=max(f32.atol, F16_ROUND.atol), xtol=f32.xtol)


def check(got: np.ndarray, ref: np.ndarray, tol: Tol, scale: np.ndarray | float = 0.0) -> None:
    """Assert ``got`` equals ``ref`` within ``tol`` (bit-identical when ``tol`` is ``EXACT``).

    Approximate comparisons also allow the smallest normal float32, 2^-126: below it results are
    subnormal and have fewer significant bits than any relative tolerance assumes.
    """
    assert got.shape == np.shape(ref), (got.shape, np.shape(ref))
    atol = max(tol.atol, float(np.finfo(np.float32).tiny))
    if tol.exact:
        np.testing.assert_array_equal(got, np.asarray(ref).astype(got.dtype))
    elif tol.xtol == 0.0:
        np.testing.assert_allclose(got.astype(np.float64), ref, rtol=tol.rtol, atol=atol)
    else:
        ref = np.asarray(ref, dtype=np.float64)
        bound = atol + tol.rtol * np.abs(ref) + tol.xtol * np.abs(scale)
        err = np.abs(got.astype(np.float64) - ref)
        np.testing.assert_array_less(err, np.nextafter(bound, np.inf))   # err <= bound


def check_node(tensor, shape_np: tuple[int, ...], dtype) -> None:
    """The result node has numpy shape ``shape_np`` (ggml ``ne`` reversed) and type ``dtype``."""
    ne = tuple(tensor.ne[i] for i in range(4))
    assert ne == tuple(reversed(shape_np)) + (1,) * (4 - len(shape_np)), (ne, shape_np)
    assert tensor.type == GGML_TYPE[np.dtype(dtype)], (tensor.type, dtype)


# --- strategies ---------------------------------------------------------------------------------

SHAPES = array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=9)
# GGML's CPU kernels split rows between threads: two threads exercise the split, one keeps the
# file fast on a loaded machine (GGML threads wait for each other by spinning)
THREADS = st.sampled_from([1, 2])


@st.composite
def arrays(draw, lo: float, hi: float, shape=SHAPES, snap: bool = False) -> np.ndarray:
    """float32 values in [lo, hi]: dense random values from a drawn seed, a few hypothesis-chosen
    values (domain ends, 0, subnormals, ...) at drawn places; with ``snap`` half the values lie on
    a grid of quarters (exact zeros, integers and .5 ties)."""
    if not isinstance(shape, tuple):
        shape = draw(shape)
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.uniform(lo, hi, size=shape)
    if snap:
        x = np.where(rng.random(shape) < 0.5, np.clip(np.round(x * 4) / 4, lo, hi), x)
    x = x.astype(np.float32)
    flat = x.reshape(-1)
    picks = st.tuples(st.integers(0, flat.size - 1), f32_param(lo, hi))
    for i, v in draw(st.lists(picks, max_size=3)):
        flat[i] = v
    return x


def f32_param(lo: float, hi: float):
    """float32 values in [lo, hi] (bounds rounded inwards to float32)."""
    lo32, hi32 = np.float32(lo), np.float32(hi)
    lo32 = lo32 if lo32 >= lo else np.nextafter(lo32, np.float32(np.inf))
    hi32 = hi32 if hi32 <= hi else np.nextafter(hi32, np.float32(-np.inf))
    return st.floats(float(lo32), float(hi32), width=32)


def divisor_shape(draw, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape ``b`` that GGML can broadcast onto ``shape`` (``ggml_can_repeat(b, a)``): at most as
    many dimensions, each a divisor of ``a``'s (1 is numpy broadcasting; other divisors tile)."""
    ndim = draw(st.integers(1, len(shape)))
    return tuple(draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))
                 for n in shape[len(shape) - ndim:])


def tile_to(b: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``ggml_repeat`` in numpy: ``b`` tiled to ``shape`` (b's dims divide shape's)."""
    b = b.reshape((1,) * (len(shape) - b.ndim) + b.shape)
    return np.tile(b, tuple(n // m for n, m in zip(shape, b.shape)))


# --- unary ops ----------------------------------------------------------------------------------

_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x: np.ndarray) -> np.ndarray:
    return _erf(x).astype(np.float64)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    # GGML's gelu is the tanh approximation (vec.h: GELU_COEF_A = 0.044715, SQRT_2_OVER_PI)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * x * (1.0 + 0.044715 * x * x)))


def gelu_erf(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def gelu_quick(x: np.ndarray) -> np.ndarray:
    return x * sigmoid(1.702 * x)


def silu(x: np.ndarray) -> np.ndarray:
    return x * sigmoid(x)


def hardsigmoid32(x: np.ndarray) -> np.ndarray:
    # float32 arithmetic in the kernel's order: fminf(1, fmaxf(0, (x + 3) / 6))
    return np.minimum(np.float32(1), np.maximum(np.float32(0), (x + np.float32(3)) / np.float32(6)))


def round_half_away(x: np.ndarray) -> np.ndarray:
    # roundf: ties away from zero (numpy's round is ties-to-even); exact in float64
    x = x.astype(np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


@dataclass(frozen=True)
class Unary:
    name: str
    ref: Callable[[np.ndarray], np.ndarray]   # float32 input for EXACT, float64 otherwise
    lo: float
    hi: float
    tol: Tol
    snap: bool = False
    table: bool = False   # float32 input is looked up as fp16(x): the reference is taken there

    @property
    def fn(self):
        return getattr(G, self.name)


UNARY = [
    Unary('ggml_abs', np.abs, -10, 10, EXACT, snap=True),
    Unary('ggml_neg', np.negative, -10, 10, EXACT, snap=True),
    Unary('ggml_sgn', np.sign, -10, 10, EXACT, snap=True),
    Unary('ggml_step', lambda x: (x > 0).astype(np.float32), -10, 10, EXACT, snap=True),
    Unary('ggml_relu', lambda x: np.where(x > 0, x, np.float32(0)), -10, 10, EXACT, snap=True),
    Unary('ggml_elu', lambda x: np.where(x > 0, x, np.expm1(x)), -10, 10, LIBM),
    # gelu: covers the |x| >= 10 shortcuts of the float32 kernel (0 below -10, x above 10)
    Unary('ggml_gelu', gelu_tanh, -12, 12, FP16_TABLE, table=True),
    Unary('ggml_gelu_erf', gelu_erf, -10, 10, ERF_CANCEL),
    Unary('ggml_gelu_quick', gelu_quick, -12, 12, FP16_TABLE, table=True),
    Unary('ggml_silu', silu, -30, 30, LIBM),
    Unary('ggml_tanh', np.tanh, -10, 10, LIBM),
    Unary('ggml_sigmoid', sigmoid, -30, 30, LIBM),
    Unary('ggml_hardsigmoid', hardsigmoid32, -8, 8, EXACT, snap=True),
    Unary('ggml_hardswish', lambda x: x * hardsigmoid32(x), -8, 8, EXACT, snap=True),
    Unary('ggml_exp', np.exp, -10, 10, LIBM),           # e^10 < 65504: no fp16 overflow
    Unary('ggml_log', np.log, 1e-3, 100, LIBM),
    Unary('ggml_sqr', lambda x: x * x, -100, 100, EXACT),
    Unary('ggml_sqrt', np.sqrt, 0, 100, EXACT, snap=True),  # IEEE sqrt is correctly rounded
    Unary('ggml_sin', np.sin, -10, 10, TRIG),
    Unary('ggml_cos', np.cos, -10, 10, TRIG),
    Unary('ggml_floor', np.floor, -50, 50, EXACT, snap=True),
    Unary('ggml_ceil', np.ceil, -50, 50, EXACT, snap=True),
    Unary('ggml_round', round_half_away, -50, 50, EXACT, snap=True),
    Unary('ggml_trunc', np.trunc, -50, 50, EXACT, snap=True),
    Unary('ggml_softplus', lambda x: np.logaddexp(0.0, x), -30, 30, CANCEL_AT_1),
    Unary('ggml_expm1', np.expm1, -10, 10, CANCEL_AT_1),
]


@pytest.mark.parametrize('op', UNARY, ids=lambda op: op.name[5:])
@DTYPES
@SETTINGS
@given(data=st.data())
def test_unary(op: Unary, dtype, data):
    x = data.draw(arrays(op.lo, op.hi, snap=op.snap)).astype(dtype)
    with Graph(n_threads=data.draw(THREADS)) as g:
        out = op.fn(g.ctx, g.input(x))
        check_node(out, x.shape, dtype)
        got = g.compute(out, ndim=x.ndim)
    if op.tol.exact:
        ref = op.ref(x.astype(np.float32))
    else:
        ref = op.ref((x.astype(F16) if op.table else x).astype(np.float64))
    check(got, ref, tol_for(op.tol, dtype), scale=x.astype(np.float64))


# gadget's own exact GELU (gadget/csrc/gadget_ops.h): erf from Abramowitz & Stegun 7.1.26
# (|error| <= 1.5e-7, absolute) and a polynomial exp, in float32. The erf error, times 0.5 |x|, is
# below EPS32 |x|; 1e-6 relative covers the float32 roundings of the formula.
GADGET_GELU = Tol(rtol=1e-6, xtol=EPS32)


@SETTINGS
@given(data=st.data())
def test_gadget_gelu_erf(data):
    x = data.draw(arrays(-12, 12))
    with Graph(n_threads=data.draw(THREADS)) as g:
        out = G.gadget_gelu_erf(g.ctx, g.input(x))
        check_node(out, x.shape, F32)
        got = g.compute(out, ndim=x.ndim)
    check(got, gelu_erf(x.astype(np.float64)), GADGET_GELU, scale=np.abs(x).astype(np.float64))


def test_gadget_gelu_erf_refuses_what_its_kernel_cannot_read():
    with Graph() as g:
        with pytest.raises(G.GgmlOpError, match='contiguous F32'):
            G.gadget_gelu_erf(g.ctx, g.input(np.zeros((4, 8), np.float16)))
        with pytest.raises(G.GgmlOpError, match='not contiguous'):
            G.gadget_gelu_erf(g.ctx, G.ggml_transpose(g.ctx, g.input(np.zeros((4, 8), np.float32))))


@DTYPES
@SETTINGS
@given(data=st.data(), slope=f32_param(-1, 2))
def test_leaky_relu(dtype, data, slope):
    # ((x > 0) ? x : 0) + slope * ((x < 0) ? x : 0): one float32 product, so exact
    x = data.draw(arrays(-10, 10, snap=True)).astype(dtype)
    with Graph(n_threads=data.draw(THREADS)) as g:
        out = G.ggml_leaky_relu(g.ctx, g.input(x), slope, False)
        check_node(out, x.shape, dtype)
        got = g.compute(out, ndim=x.ndim)
    x32 = x.astype(np.float32)
    check(got, np.where(x32 > 0, x32, np.float32(slope) * x32), EXACT)


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


@DTYPES
@SETTINGS
@given(data=st.data(), alpha_n=f32_param(-2, 2), alpha_p=f32_param(-2, 2), beta=f32_param(0, 1),
       eps=f32_param(-1e-3, 0))
def test_xielu(dtype, data, alpha_n, alpha_p, beta, eps):
    x = data.draw(arrays(-8, 8, snap=True)).astype(dtype)
    with Graph(n_threads=data.draw(THREADS)) as g:
        out = G.ggml_xielu(g.ctx, g.input(x), alpha_n, alpha_p, beta, eps)
        check_node(out, x.shape, dtype)
        got = g.compute(out, ndim=x.ndim)
    x64 = x.astype(np.float64)
    a_p, a_n = softplus(alpha_p), beta + softplus(alpha_n)
    em1 = np.expm1(np.minimum(x64, eps))
    ref = np.where(x64 > 0, a_p * x64 * x64 + beta * x64, a_n * (em1 - x64) + beta * x64)
    # expm1(x) - x cancels for small |x| and the two terms of each branch may cancel: the float32
    # error is a few ulp of the magnitudes of the terms, not of the result
    scale = np.where(x64 > 0, a_p * x64 * x64 + beta * np.abs(x64),
                     a_n * (np.abs(em1) + np.abs(x64)) + beta * np.abs(x64))
    check(got, ref, tol_for(Tol(rtol=1e-6, xtol=4 * EPS32), dtype), scale=scale)


# --- binary ops with broadcasting ---------------------------------------------------------------

BINARY = {
    'ggml_add': np.add,
    'ggml_sub': np.subtract,
    'ggml_mul': np.multiply,
    'ggml_div': np.divide,
}


@pytest.mark.parametrize('name', BINARY, ids=lambda n: n[5:])
@pytest.mark.parametrize('dtypes', [(F32, F32), (F16, F16), (F16, F32)], ids=['f32', 'f16', 'f16_f32'])
@SETTINGS
@given(data=st.data())
def test_binary_broadcast(name, dtypes, data):
    a_shape = data.draw(SHAPES)
    b_shape = divisor_shape(data.draw, a_shape)
    a = data.draw(arrays(-10, 10, a_shape)).astype(dtypes[0])
    b = data.draw(arrays(-10, 10, b_shape))
    if name == 'ggml_div':   # keep divisors away from 0
        b = np.where(np.abs(b) < 0.25, np.float32(0.25), b)
    b = b.astype(dtypes[1])
    with Graph(n_threads=data.draw(THREADS)) as g:
        out = getattr(G, name)(g.ctx, g.input(a), g.input(b))
        check_node(out, a_shape, dtypes[0])
        got = g.compute(out, ndim=a.ndim)
    # the kernel converts both to float32, does one IEEE operation and stores in a's type:
    # numpy float32 arithmetic rounded to the result type is bit-identical
    ref = BINARY[name](a.astype(np.float32), tile_to(b.astype(np.float32), a_shape))
    check(got, ref, EXACT)


@DTYPES
@SETTINGS
@given(data=st.data())
def test_add1(dtype, data):
    # deprecated in ggml.h ("use ggml_add instead") but still computed: a + scalar b
    a = data.draw(arrays(-10, 10)).astype(dtype)
    b = data.draw(arrays(-10, 10, (1,)))
    with Graph(n_threads=data.draw(THREADS)) as g:
        out = G.ggml_add1(g.ctx, g.input(a), g.input(b))
        check_node(out, a.shape, dtype)
        got = g.compute(out, ndim=a.ndim)
    check(got, a.astype(np.float32) + b[0], EXACT)


@pytest.mark.parametrize('out_dtype', [F32, F16], ids=['to_f32', 'to_f16'])
@SETTINGS
@given(data=st.data())
def test_add_cast(out_dtype, data):
    # fp16 a + f32 b, result in the given type; b broadcasts over whole rows (ggml_can_repeat_rows)
    a_shape = data.draw(SHAPES)
    b_shape = divisor_shape(data.draw, a_shape)
    b_shape = b_shape[:-1] + a_shape[-1:]
    a = data.draw(arrays(-10, 10, a_shape)).astype(F16)
    b = data.draw(arrays(-10, 10, b_shape))
    with Graph(n_threads=data.draw(THREADS)) as g:
        out = G.ggml_add_cast(g.ctx, g.input(a), g.input(b), GGML_TYPE[out_dtype])
        check_node(out, a_shape, out_dtype)
        got = g.compute(out, ndim=a.ndim)
    check(got, a.astype(np.float32) + tile_to(b, a_shape), EXACT)


# --- scale, clamp, fill -------------------------------------------------------------------------

@SETTINGS
@given(data=st.data(), s=f32_param(-4, 4))
def test_scale(data, s):
    x = data.draw(arrays(-10, 10))
    with Graph(n_threads=data.draw(THREADS)) as g:
        out = G.ggml_scale(g.ctx, g.input(x), s)
        check_node(out, x.shape, F32)
        got = g.compute(out, ndim=x.ndim)
    check(got, x * np.float32(s), EXACT)   # one float32 product


@SETTINGS
@given(data=st.data(), s=f32_param(-4, 4), b=f32_param(-4, 4))
def test_scale_bias(data, s, b):
    x = data.draw(arrays(-10, 10))
    with Graph(n_threads=data.draw(THREADS)) as g:
        out = G.ggml_scale_bias(g.ctx, g.input(x), s, b)
        check_node(out, x.shape, F32)
        got = g.compute(out, ndim=x.ndim)
    x64 = x.astype(np.float64)
    # x*s + b, fused (SIMD FMA: one rounding) or not (two): the product's rounding is relative to
    # |x s|, which may be much larger than a cancelling result
    check(got, x64 * s + b, Tol(rtol=EPS32, xtol=EPS32), scale=x64 * s)


@DTYPES
@SETTINGS
@given(data=st.data(), lo=f32_param(-8, 8), width=f32_param(0, 8))
def test_clamp(dtype, data, lo, width):
    hi = float(np.float32(lo + width))
    x = data.draw(arrays(-10, 10)).astype(dtype)
    with Graph(n_threads=data.draw(THREADS)) as g:
        a = g.input(x)
        out = G.ggml_clamp(g.ctx, a, lo, hi)
        check_node(out, x.shape, dtype)
        got = g.compute(out, ndim=x.ndim)
        in_place = to_numpy(a, x.ndim)
    ref = np.clip(x.astype(np.float32), np.float32(lo), np.float32(hi))   # MAX(MIN(x, hi), lo)
    check(got, ref, EXACT)
    check(in_place, ref, EXACT)   # ggml.h: "in-place, returns view(a)"


@DTYPES
@SETTINGS
@given(data=st.data(), c=f32_param(-1000, 1000))
def test_fill(dtype, data, c):
    x = data.draw(arrays(-10, 10)).astype(dtype)
    with Graph(n_threads=data.draw(THREADS)) as g:
        out = G.ggml_fill(g.ctx, g.input(x), c)
        check_node(out, x.shape, dtype)
        got = g.compute(out, ndim=x.ndim)
    check(got, np.full(x.shape, np.float32(c)), EXACT)


# --- reductions ---------------------------------------------------------------------------------

@DTYPES
@SETTINGS
@given(data=st.data())
def test_sum(dtype, data):
    # fp16 values in [-1, 1] keep the fp16 total finite (at most 6561 elements)
    x = data.draw(arrays(-1, 1) if dtype == F16 else arrays(-10, 10)).astype(dtype)
    with Graph(n_threads=data.draw(THREADS)) as g:
        out = G.ggml_sum(g.ctx, g.input(x))
        check_node(out, (1,), dtype)
        got = g.compute(out, ndim=1)
    x64 = x.astype(np.float64)
    if dtype == F32:
        # accumulated in double (ggml_float), rounded once to float32
        tol = Tol(rtol=EPS32, atol=1e-12 * np.abs(x64).sum())
    else:
        # accumulated in float32 (recursive summation: error <= n * 2^-24 * sum|x|), stored as fp16
        tol = Tol(rtol=EPS16, atol=x.size * 2.0 ** -24 * np.abs(x64).sum() + 2.0 ** -24)
    check(got, np.array([x64.sum()]), tol)


@SETTINGS
@given(data=st.data())
def test_sum_rows(data):
    # ggml.h: "sums along rows, with input shape [a,b,c,d] return shape [1,b,c,d]" (ggml order);
    # each row is summed in double and rounded once to float32
    x = data.draw(arrays(-10, 10))
    with Graph(n_threads=data.draw(THREADS)) as g:
        out = G.ggml_sum_rows(g.ctx, g.input(x))
        check_node(out, x.shape[:-1] + (1,), F32)
        got = g.compute(out, ndim=x.ndim)
    x64 = x.astype(np.float64)
    check(got, x64.sum(axis=-1, keepdims=True), Tol(rtol=EPS32, xtol=1e-12),
          scale=np.abs(x64).sum(axis=-1, keepdims=True))


@SETTINGS
@given(data=st.data())
def test_mean(data):
    # row sum in double rounded to float32, then divided by (float) n: two float32 roundings
    x = data.draw(arrays(-10, 10))
    with Graph(n_threads=data.draw(THREADS)) as g:
        out = G.ggml_mean(g.ctx, g.input(x))
        check_node(out, x.shape[:-1] + (1,), F32)
        got = g.compute(out, ndim=x.ndim)
    x64 = x.astype(np.float64)
    check(got, x64.mean(axis=-1, keepdims=True), Tol(rtol=2 * EPS32, xtol=1e-12),
          scale=np.abs(x64).mean(axis=-1, keepdims=True))


@SETTINGS
@given(data=st.data())
def test_cumsum(data):
    # y[i] = y[i-1] + x[i] in float32 along each row: numpy's float32 accumulate does the same
    x = data.draw(arrays(-10, 10))
    with Graph(n_threads=data.draw(THREADS)) as g:
        out = G.ggml_cumsum(g.ctx, g.input(x))
        check_node(out, x.shape, F32)
        got = g.compute(out, ndim=x.ndim)
    check(got, np.cumsum(x, axis=-1, dtype=np.float32), EXACT)


@SETTINGS
@given(data=st.data())
def test_argmax(data):
    # argmax along rows of a matrix (ggml_is_matrix: at most 2 numpy dims). Values on a coarse
    # grid, so ties are frequent: GGML returns the LAST index of the maximum (ggml_vec_argmax_f32
    # updates the index whenever an element equals the running max); numpy returns the first.
    shape = data.draw(array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=9))
    x = np.round(data.draw(arrays(-4, 4, shape)))
    with Graph(n_threads=data.draw(THREADS)) as g:
        out = G.ggml_argmax(g.ctx, g.input(x))
        rows = shape[0] if len(shape) == 2 else 1
        check_node(out, (rows,), np.int32)
        got = g.compute(out, ndim=1)
    x2 = x.reshape(rows, shape[-1])
    ref = shape[-1] - 1 - np.argmax(x2[:, ::-1], axis=1)
    check(got, ref, EXACT)


@SETTINGS
@given(data=st.data())
def test_count_equal(data):
    # 1-D and 2-D only: see test_count_equal_3d for higher ranks
    shape = data.draw(array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=9))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    a = rng.integers(0, 3, size=shape, dtype=np.int32)
    b = rng.integers(0, 3, size=shape, dtype=np.int32)
    with Graph(n_threads=data.draw(THREADS)) as g:
        out = G.ggml_count_equal(g.ctx, g.input(a), g.input(b))
        check_node(out, (1,), np.int64)
        got = g.compute(out, ndim=1)
    check(got, np.array([np.sum(a == b)]), EXACT)


@pytest.mark.xfail(strict=True, reason='GGML bug: ggml_compute_forward_count_equal_i32 computes the '
                   'row indices with ne03/ne02 in place of ne02*ne01/ne01, so 3-D tensors with '
                   'ne[2] != ne[1] (and 4-D ones) are counted over the wrong rows')
def test_count_equal_3d():
    # a and b: the first 2 matrices of 3x3x4 int32 tensors whose third matrix differs, so rows read
    # past the views are never equal (deterministic, and no reads outside the tensors)
    a_full = np.zeros((3, 3, 4), np.int32)
    b_full = np.zeros((3, 3, 4), np.int32)
    b_full[2] = 1
    with Graph() as g:
        A, B = g.input(a_full), g.input(b_full)
        a = G.ggml_view_3d(g.ctx, A, 4, 3, 2, A.nb[1], A.nb[2], 0)
        b = G.ggml_view_3d(g.ctx, B, 4, 3, 2, B.nb[1], B.nb[2], 0)
        got = g.compute(G.ggml_count_equal(g.ctx, a, b), ndim=1)
    assert got[0] == 24   # ggml.h: "count number of equal elements in a and b"


# --- gated linear units -------------------------------------------------------------------------

@dataclass(frozen=True)
class Glu:
    name: str                 # fused op: ggml_<name>, ggml_<name>_swapped, ggml_<name>_split
    op: int                   # enum ggml_glu_op, for ggml_glu / ggml_glu_split
    act: Callable[[np.ndarray], np.ndarray]
    f32: Tol                  # xtol is relative to |x * g|
    f16: Tol
    table: bool = False       # float32 x is looked up as fp16(x) (see Unary.table)


# GEGLU/GEGLU_QUICK in float32 multiply the fp16-table activation (see FP16_TABLE; the reference
# takes the activation at fp16(x)) by g: FP16_TABLE's bound times |g| <= 5, and a float32 product
# (2^-24, within rtol). In fp16 the table value (an fp16 rounding) times g is rounded again to fp16:
# two fp16 roundings, 2^-9 relative. xtol (on |x g|): the tanh formula's cancellation, times |g|.
GLU_F32_TABLE = Tol(rtol=EPS16, atol=5 * 2.0 ** -24, xtol=EPS32)
GLU_F16_TABLE = Tol(rtol=2 * EPS16, atol=5 * 2.0 ** -24, xtol=EPS32)
GLU = [
    Glu('reglu', G.GGML_GLU_OP_REGLU, lambda x: np.maximum(x, 0), EXACT, EXACT),
    Glu('geglu', G.GGML_GLU_OP_GEGLU, gelu_tanh, GLU_F32_TABLE, GLU_F16_TABLE, table=True),
    Glu('swiglu', G.GGML_GLU_OP_SWIGLU, silu, LIBM, F16_ROUND),
    Glu('geglu_erf', G.GGML_GLU_OP_GEGLU_ERF, gelu_erf, ERF_CANCEL, tol_for(ERF_CANCEL, F16)),
    Glu('geglu_quick', G.GGML_GLU_OP_GEGLU_QUICK, gelu_quick, GLU_F32_TABLE, GLU_F16_TABLE, table=True),
]


def glu_ref(glu: Glu, x: np.ndarray, gate: np.ndarray, exact: bool) -> np.ndarray:
    if exact:   # reglu: (x > 0) ? x * g : 0 in float32
        x32, g32 = x.astype(np.float32), gate.astype(np.float32)
        return np.where(x32 > 0, x32 * g32, np.float32(0))
    if glu.table:
        x = x.astype(F16)
    return glu.act(x.astype(np.float64)) * gate.astype(np.float64)


@st.composite
def glu_inputs(draw, half: bool):
    """x in [-12, 12] (covering GEGLU's |x| >= 10 shortcuts), gates in [-5, 5]."""
    shape = draw(SHAPES)
    if half:   # one tensor whose rows hold [x | gate]: an even row length
        shape = shape[:-1] + (2 * shape[-1],)
    return draw(arrays(-12, 12, shape)), draw(arrays(-5, 5, shape))


@pytest.mark.parametrize('glu', GLU, ids=lambda glu: glu.name)
@pytest.mark.parametrize('swapped', [False, True], ids=['', 'swapped'])
@pytest.mark.parametrize('generic', [False, True], ids=['named', 'ggml_glu'])
@DTYPES
@SETTINGS
@given(data=st.data())
def test_glu_fused(glu: Glu, swapped, generic, dtype, data):
    # ggml.h: "A: n columns, r rows, result is n / 2 columns, r rows, expects gate in second half
    # of row, unless swapped is true": act(first half) * second half (or the other way round)
    xs, gs = data.draw(glu_inputs(half=True))
    n = xs.shape[-1] // 2
    a = np.concatenate([xs[..., :n], gs[..., n:]], axis=-1)
    if swapped:
        a = np.concatenate([a[..., n:], a[..., :n]], axis=-1)
    a = a.astype(dtype)
    with Graph(n_threads=data.draw(THREADS)) as g:
        t = g.input(a)
        if generic:
            out = G.ggml_glu(g.ctx, t, glu.op, swapped)
        else:
            out = getattr(G, f'ggml_{glu.name}' + ('_swapped' if swapped else ''))(g.ctx, t)
        check_node(out, a.shape[:-1] + (n,), dtype)
        got = g.compute(out, ndim=a.ndim)
    x, gate = (a[..., n:], a[..., :n]) if swapped else (a[..., :n], a[..., n:])
    tol = glu.f32 if dtype == F32 else glu.f16
    check(got, glu_ref(glu, x, gate, tol.exact), tol,
          scale=x.astype(np.float64) * gate.astype(np.float64))


@pytest.mark.parametrize('glu', GLU, ids=lambda glu: glu.name)
@pytest.mark.parametrize('generic', [False, True], ids=['named', 'ggml_glu_split'])
@DTYPES
@SETTINGS
@given(data=st.data())
def test_glu_split(glu: Glu, generic, dtype, data):
    # ggml_<glu>_split(a, b) = act(a) * b, a and b of the same shape
    x, gate = (v.astype(dtype) for v in data.draw(glu_inputs(half=False)))
    with Graph(n_threads=data.draw(THREADS)) as g:
        ta, tb = g.input(x), g.input(gate)
        if generic:
            out = G.ggml_glu_split(g.ctx, ta, tb, glu.op)
        else:
            out = getattr(G, f'ggml_{glu.name}_split')(g.ctx, ta, tb)
        check_node(out, x.shape, dtype)
        got = g.compute(out, ndim=x.ndim)
    tol = glu.f32 if dtype == F32 else glu.f16
    check(got, glu_ref(glu, x, gate, tol.exact), tol,
          scale=x.astype(np.float64) * gate.astype(np.float64))


@SETTINGS
@given(data=st.data(), alpha=f32_param(0.5, 2), limit=f32_param(1, 10))
def test_swiglu_oai(data, alpha, limit):
    # GPT-OSS SwiGLU: x = min(a, limit), y = clamp(b, -limit, limit), x * sigmoid(alpha x) * (y + 1)
    a, b = data.draw(glu_inputs(half=False))
    with Graph(n_threads=data.draw(THREADS)) as g:
        out = G.ggml_swiglu_oai(g.ctx, g.input(a), g.input(b), alpha, limit)
        check_node(out, a.shape, F32)
        got = g.compute(out, ndim=a.ndim)
    x = np.minimum(a.astype(np.float64), limit)
    y = np.clip(b.astype(np.float64), -limit, limit)
    ref = x * sigmoid(alpha * x) * (y + 1)
    # LIBM, plus: the kernel rounds the float32 product alpha * x (2^-24 relative) before expf,
    # which turns it into a relative error of |alpha x| 2^-24 in the result
    check(got, ref, Tol(rtol=LIBM.rtol, xtol=EPS32), scale=ref * alpha * x)


# --- backward op --------------------------------------------------------------------------------

@DTYPES
@SETTINGS
@given(data=st.data())
def test_silu_back(dtype, data):
    # ggml.h: a = dy, b = x; dx = dy * s * (1 + x * (1 - s)), s = sigmoid(x)
    shape = data.draw(SHAPES)
    dy = data.draw(arrays(-5, 5, shape)).astype(dtype)
    x = data.draw(arrays(-20, 20, shape)).astype(dtype)
    with Graph(n_threads=data.draw(THREADS)) as g:
        out = G.ggml_silu_back(g.ctx, g.input(dy), g.input(x))
        check_node(out, shape, dtype)
        got = g.compute(out, ndim=len(shape))
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    s = sigmoid(x64)
    # 1 + x (1 - s) cancels near x = -1.28: the float32 error is relative to 1 + |x (1 - s)|
    scale = np.abs(dy64) * s * (1 + np.abs(x64) * (1 - s))
    check(got, dy64 * s * (1 + x64 * (1 - s)), tol_for(Tol(rtol=1e-6, xtol=1e-6), dtype), scale=scale)


# --- matrix structure: diag, tri, diag_mask ----------------------------------------------------

@SETTINGS
@given(data=st.data())
def test_diag(data):
    # a row vector per matrix (numpy [..., 1, n]) becomes a diagonal matrix [..., n, n]
    batch = data.draw(array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=5))
    n = data.draw(st.integers(1, 9))
    x = data.draw(arrays(-10, 10, batch + (1, n)))
    with Graph(n_threads=data.draw(THREADS)) as g:
        out = G.ggml_diag(g.ctx, g.input(x))
        check_node(out, batch + (n, n), F32)
        got = g.compute(out, ndim=x.ndim)
    ref = np.zeros(batch + (n, n), np.float32)
    ref[..., np.arange(n), np.arange(n)] = x[..., 0, :]
    check(got, ref, EXACT)


@st.composite
def square_batches(draw):
    batch = draw(array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=4))
    n = draw(st.integers(1, 9))
    return draw(arrays(-10, 10, batch + (n, n)))


# ggml.h enum ggml_tri_type; ops.cpp keeps element (row r, column i) where: UPPER_DIAG i >= r,
# UPPER i > r, LOWER_DIAG i <= r, LOWER i < r
TRI = {
    'upper_diag': (G.GGML_TRI_TYPE_UPPER_DIAG, lambda x: np.triu(x)),
    'upper': (G.GGML_TRI_TYPE_UPPER, lambda x: np.triu(x, 1)),
    'lower_diag': (G.GGML_TRI_TYPE_LOWER_DIAG, lambda x: np.tril(x)),
    'lower': (G.GGML_TRI_TYPE_LOWER, lambda x: np.tril(x, -1)),
}


@pytest.mark.parametrize('kind', TRI)
@SETTINGS
@given(data=st.data())
def test_tri(kind, data):
    tri_type, ref = TRI[kind]
    x = data.draw(square_batches())
    with Graph(n_threads=data.draw(THREADS)) as g:
        out = G.ggml_tri(g.ctx, g.input(x), tri_type)
        check_node(out, x.shape, F32)
        got = g.compute(out, ndim=x.ndim)
    check(got, ref(x), EXACT)


@pytest.mark.parametrize('name, value', [('ggml_diag_mask_inf', -np.inf), ('ggml_diag_mask_zero', 0.0)],
                         ids=['inf', 'zero'])
@SETTINGS
@given(data=st.data())
def test_diag_mask(name, value, data):
    # elements "above the diagonal" (column > row + n_past) become -inf / 0
    x = data.draw(arrays(-10, 10, array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=9)))
    n_past = data.draw(st.integers(0, 4))
    with Graph(n_threads=data.draw(THREADS)) as g:
        out = getattr(G, name)(g.ctx, g.input(x), n_past)
        check_node(out, x.shape, F32)
        got = g.compute(out, ndim=x.ndim)
    rows, cols = x.shape[-2:]
    masked = np.arange(cols)[None, :] > np.arange(rows)[:, None] + n_past
    check(got, np.where(masked, np.float32(value), x), EXACT)


# --- acc, set_1d, set_2d ------------------------------------------------------------------------

@st.composite
def block_in(draw, min_dims: int = 1):
    """An array ``a`` and a block of it: the block's origin and shape (same number of dims)."""
    a = draw(arrays(-10, 10, array_shapes(min_dims=min_dims, max_dims=4, min_side=1, max_side=9)))
    origin = tuple(draw(st.integers(0, n - 1)) for n in a.shape)
    size = tuple(draw(st.integers(1, n - o)) for n, o in zip(a.shape, origin))
    return a, origin, size


def byte_offset(shape: tuple[int, ...], origin: tuple[int, ...]) -> int:
    return int(np.ravel_multi_index(origin, shape)) * 4


@SETTINGS
@given(data=st.data())
def test_acc(data):
    # ggml.h: dst = a; view(dst, nb1, nb2, nb3, offset) += b. With a's own strides and the byte
    # offset of a block's origin, the view is that block: a[block] += b (one float32 add each)
    a, origin, size = data.draw(block_in())
    b = data.draw(arrays(-10, 10, size))
    with Graph(n_threads=data.draw(THREADS)) as g:
        ta = g.input(a)
        out = G.ggml_acc(g.ctx, ta, g.input(b), ta.nb[1], ta.nb[2], ta.nb[3], byte_offset(a.shape, origin))
        check_node(out, a.shape, F32)
        got = g.compute(out, ndim=a.ndim)
    ref = a.copy()
    ref[tuple(slice(o, o + s) for o, s in zip(origin, size))] += b
    check(got, ref, EXACT)


@SETTINGS
@given(data=st.data())
def test_set_1d(data):
    # b (1-D) is written over a's elements from byte offset on, in memory order; a is unchanged
    a = data.draw(arrays(-10, 10))
    start = data.draw(st.integers(0, a.size - 1))
    b = data.draw(arrays(-10, 10, (data.draw(st.integers(1, a.size - start)),)))
    with Graph(n_threads=data.draw(THREADS)) as g:
        ta = g.input(a)
        out = G.ggml_set_1d(g.ctx, ta, g.input(b), start * 4)
        check_node(out, a.shape, F32)
        got = g.compute(out, ndim=a.ndim)
        untouched = to_numpy(ta, a.ndim)
    ref = a.copy().reshape(-1)
    ref[start:start + b.size] = b
    check(got, ref.reshape(a.shape), EXACT)
    check(untouched, a, EXACT)


@SETTINGS
@given(data=st.data())
def test_set_2d(data):
    # b (2-D) is written row by row with a's row stride from the byte offset of a block origin:
    # a[i, j, r0:r0+rows, c0:c0+cols] = b
    a, origin, size = data.draw(block_in(min_dims=2))
    b = data.draw(arrays(-10, 10, size[-2:]))
    with Graph(n_threads=data.draw(THREADS)) as g:
        ta = g.input(a)
        out = G.ggml_set_2d(g.ctx, ta, g.input(b), ta.nb[1], byte_offset(a.shape, origin))
        check_node(out, a.shape, F32)
        got = g.compute(out, ndim=a.ndim)
    ref = a.copy()
    rows, cols = (slice(o, o + n) for o, n in zip(origin[-2:], size[-2:]))
    ref[origin[:-2] + (rows, cols)] = b
    check(got, ref, EXACT)
