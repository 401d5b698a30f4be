"""GGML tensor types and their numpy counterparts.

GGML types are ``GgmlType`` members (``gadget.ggml.GgmlType.F32`` ...), plain ints, or names
(``'F32'``, ``'q4_0'``). Unquantized types map one-to-one to numpy dtypes (BF16 to
``ml_dtypes.bfloat16``); quantized types are stored as raw blocks (``uint8``) and their block
geometry comes from GGML's own type traits. The one place for type arithmetic: row sizes
(:func:`row_size`), and quantizing / dequantizing numpy arrays through GGML's type traits.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Union

import numpy as np

from .ggml import GgmlType, ffi, lib

__all__ = ['TypeLike', 'as_ggml_type', 'type_name', 'numpy_dtype', 'ggml_type_for_dtype',
           'is_quantized', 'bfloat16', 'block_size', 'type_size', 'row_size', 'quantize', 'dequantize_blocks']

TypeLike = Union[GgmlType, int, str]

# BF16's dtype comes from ml_dtypes, imported only when a BF16 array is asked for: importing it costs
# more than a second, more than everything else gadget's start-up does.
_NUMPY: dict[int, np.dtype] = {
    GgmlType.F32: np.dtype(np.float32),
    GgmlType.F16: np.dtype(np.float16),
    GgmlType.F64: np.dtype(np.float64),
    GgmlType.I8: np.dtype(np.int8),
    GgmlType.I16: np.dtype(np.int16),
    GgmlType.I32: np.dtype(np.int32),
    GgmlType.I64: np.dtype(np.int64),
}
_FROM_NUMPY = {dtype: t for t, dtype in _NUMPY.items()}


@lru_cache(maxsize=None)
def bfloat16() -> np.dtype:
    """numpy's dtype for BF16 (``ml_dtypes.bfloat16``)."""
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def as_ggml_type(value: TypeLike) -> GgmlType:
    """``GgmlType`` for a member, an int or a name such as ``'F16'`` / ``'q4_k'``."""
    if isinstance(value, str):
        try:
            return GgmlType[value.upper()]
        except KeyError:
            known = ', '.join(m.name for m in GgmlType if type_size(m) > 0)
            raise ValueError(f'unknown GGML type {value!r}; known types: {known}') from None
    try:
        return GgmlType(int(value))
    except ValueError:
        raise ValueError(f'unknown GGML type id {value!r}') from None


def type_name(value: TypeLike) -> str:
    """GGML's name of a type (``'f32'``, ``'q4_0'``)."""
    return ffi.string(lib.ggml_type_name(as_ggml_type(value))).decode()


def is_quantized(value: TypeLike) -> bool:
    """Whether a type stores blocks of quantized values."""
    return bool(lib.ggml_is_quantized(as_ggml_type(value)))


def block_size(value: TypeLike) -> int:
    """Elements per block (1 for unquantized types, e.g. 32 for Q4_0, 256 for K-quants)."""
    return lib.ggml_blck_size(as_ggml_type(value))


def type_size(value: TypeLike) -> int:
    """Bytes per block (0 for removed types such as Q4_2)."""
    return lib.ggml_type_size(as_ggml_type(value))


def row_size(value: TypeLike, n: int) -> int:
    """Bytes of a row of ``n`` elements (``n`` must be a multiple of the block size)."""
    t = as_ggml_type(value)
    if n % block_size(t):
        raise ValueError(f'a {type_name(t)} row needs a multiple of {block_size(t)} elements, got {n}')
    return lib.ggml_row_size(t, n)


def numpy_dtype(value: TypeLike) -> np.dtype:
    """numpy dtype holding one element of an unquantized type; ``uint8`` (raw blocks) otherwise."""
    t = as_ggml_type(value)
    if t == GgmlType.BF16:
        return bfloat16()
    return _NUMPY.get(t, np.dtype(np.uint8))


def ggml_type_for_dtype(dtype: np.dtype | type) -> GgmlType:
    """The GGML type storing a numpy dtype exactly (float32 → F32, bfloat16 → BF16, ...)."""
    dt = np.dtype(dtype)
    if dt in _FROM_NUMPY:
        return GgmlType(_FROM_NUMPY[dt])
    if dt.name == 'bfloat16' and dt == bfloat16():
        return GgmlType.BF16
    supported = ', '.join(str(d) for d in [*_FROM_NUMPY, 'bfloat16'])
    raise TypeError(f'no GGML type holds numpy dtype {dt}; supported: {supported}')


# --- GGML's type traits on numpy arrays ----------------------------------------------------------

def quantize(array: np.ndarray, ggml_type: TypeLike) -> np.ndarray:
    """Quantize a float array (numpy order) to raw ``uint8`` blocks shaped ``(..., bytes per row)``."""
    t = as_ggml_type(ggml_type)
    src = np.ascontiguousarray(array, dtype=np.float32)
    if src.ndim == 0:
        src = src.reshape(1)
    n_per_row = src.shape[-1]
    blck = block_size(t)
    if n_per_row % blck:
        raise ValueError(f'{type_name(t)} quantizes rows of a multiple of {blck} elements; '
                         f'the array has rows of {n_per_row}')
    if lib.ggml_quantize_requires_imatrix(t):
        raise ValueError(f'{type_name(t)} needs an importance matrix to quantize; choose another type')
    nrows = src.size // n_per_row if n_per_row else 0
    out = np.empty(src.shape[:-1] + (row_size(t, n_per_row),), dtype=np.uint8)
    if src.size:
        lib.ggml_quantize_init(t)
        lib.ggml_quantize_chunk(t, ffi.cast('float *', ffi.from_buffer(src)), ffi.from_buffer(out), 0,
                                nrows, n_per_row, ffi.NULL)
    return out


def dequantize_blocks(blocks: np.ndarray, ggml_type: TypeLike,
                      shape: Iterable[int] | None = None) -> np.ndarray:
    """Decode raw blocks (``uint8``, ``(..., bytes per row)``) to float32 through GGML's type traits.

    ``shape`` (ggml order) reshapes the result; by default it keeps the rows of ``blocks``.
    """
    t = as_ggml_type(ggml_type)
    blocks = np.ascontiguousarray(blocks, dtype=np.uint8)
    row_bytes = blocks.shape[-1] if blocks.ndim else blocks.size
    if row_bytes % type_size(t):
        raise ValueError(f'{row_bytes} bytes per row is not a whole number of {type_name(t)} blocks')
    n_per_row = row_bytes // type_size(t) * block_size(t)
    out = np.empty(blocks.shape[:-1] + (n_per_row,), dtype=np.float32)
    traits = lib.ggml_get_type_traits(t)
    if traits.to_float == ffi.NULL:
        raise ValueError(f'GGML cannot decode {type_name(t)}')
    if out.size:
        traits.to_float(ffi.from_buffer(blocks), ffi.cast('float *', ffi.from_buffer(out)), out.size)
    if shape is not None:
        out = out.reshape(tuple(reversed(tuple(shape))))
    return out
