"""GGUF files: read (memory-mapped, lazy, validated) and write (streamed, atomic).

Reading parses the header, the key/value metadata and the tensor table once, checking every
count, length and offset against the file size before using it; values are decoded only when
asked for, and tensor data are numpy views of the mapping (no copy). Writing collects fields and
tensors (numpy arrays, views of another file, or quantized blocks) and streams them to a temporary
file that replaces the target only when complete.

Arrays come out in numpy order; the shapes GGUF records and gadget reports are in ggml order
(``ne[0]``, the row length, first). Quantized tensors are raw blocks, ``uint8`` arrays of shape
``(..., bytes per row)`` as gguf-py returns them; :meth:`GgufFile.dequantize` decodes them through
GGML's own type traits.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping

import numpy as np

from .errors import GgufError
from .ggml import GgmlType, GgufType, lib
from .types import (TypeLike, as_ggml_type, block_size, dequantize_blocks, is_quantized, numpy_dtype,
                    quantize, row_size, type_name, type_size)

__all__ = ['GgufFile', 'GgufTensor', 'GgufType', 'GgufError', 'GGUF_MAGIC', 'DEFAULT_ALIGNMENT']

GGUF_MAGIC = b'GGUF'
DEFAULT_ALIGNMENT = 32
_ALIGNMENT_KEY = 'general.alignment'
_MAX_DEPTH = 16            # nesting of arrays of arrays
_MAX_DIMS = 4

_SCALAR = {  # GGUF value type -> (struct format, numpy dtype)
    GgufType.UINT8: ('<B', np.uint8), GgufType.INT8: ('<b', np.int8),
    GgufType.UINT16: ('<H', np.uint16), GgufType.INT16: ('<h', np.int16),
    GgufType.UINT32: ('<I', np.uint32), GgufType.INT32: ('<i', np.int32),
    GgufType.FLOAT32: ('<f', np.float32), GgufType.BOOL: ('<?', np.bool_),
    GgufType.UINT64: ('<Q', np.uint64), GgufType.INT64: ('<q', np.int64),
    GgufType.FLOAT64: ('<d', np.float64),
}
_SIZE = {t: struct.calcsize(fmt) for t, (fmt, _) in _SCALAR.items()}
_VALUE_TYPES = frozenset(int(t) for t in GgufType if t.name != 'COUNT')
_U32 = struct.Struct('<I')
_U64 = struct.Struct('<Q')
_DTYPE_TO_GGUF = {np.dtype(dt): t for t, (_, dt) in _SCALAR.items()}
_GGML_TYPES = frozenset(int(t) for t in GgmlType if t.name != 'COUNT' and type_size(t) > 0)
_INT_RANGES = [(GgufType.INT32, -2**31, 2**31 - 1), (GgufType.INT64, -2**63, 2**63 - 1),
               (GgufType.UINT64, 0, 2**64 - 1)]


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

class _Cursor:
    """Bounds-checked little-endian reads from a buffer; every failure names the byte offset."""

    __slots__ = ('buf', 'pos', 'end', 'path')

    def __init__(self, buf: memoryview, path: str):
        self.buf, self.pos, self.end, self.path = buf, 0, len(buf), path

    def fail(self, what: str, at: int | None = None) -> GgufError:
        return GgufError(f'{self.path}: {what} (at byte offset {self.pos if at is None else at})')

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.end:
            raise self.fail(f'truncated file: {what} needs {n} bytes, {self.end - self.pos} remain')

    def u32(self, what: str) -> int:
        self.need(4, what)
        value = _U32.unpack_from(self.buf, self.pos)[0]
        self.pos += 4
        return value

    def u64(self, what: str) -> int:
        self.need(8, what)
        value = _U64.unpack_from(self.buf, self.pos)[0]
        self.pos += 8
        return value

    def string(self, what: str) -> bytes:
        start = self.pos
        n = self.u64(f'length of {what}')
        if n > self.end - self.pos:
            raise self.fail(f'{what} claims {n} bytes but only {self.end - self.pos} remain', start)
        value = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return value

    def text(self, what: str) -> str:
        """A GGUF string that must be valid UTF-8 (keys and tensor names)."""
        start = self.pos
        raw = self.string(what)
        try:
            return raw.decode('utf-8')
        except UnicodeDecodeError:
            raise self.fail(f'{what} is not valid UTF-8: {raw[:40]!r}', start) from None

    def skip_value(self, vtype: int, what: str, depth: int = 0) -> None:
        """Move past one value of GGUF type ``vtype``, validating lengths, without decoding it."""
        if vtype in _SIZE:
            self.need(_SIZE[vtype], what)
            self.pos += _SIZE[vtype]
        elif vtype == GgufType.STRING:
            n = self.u64(f'length of {what}')
            if n > self.end - self.pos:
                raise self.fail(f'{what}: string of {n} bytes but only {self.end - self.pos} remain',
                                self.pos - 8)
            self.pos += n
        elif vtype == GgufType.ARRAY:
            if depth >= _MAX_DEPTH:
                raise self.fail(f'{what}: arrays nested deeper than {_MAX_DEPTH}')
            start = self.pos
            etype = self.u32(f'element type of {what}')
            count = self.u64(f'element count of {what}')
            if etype in _SIZE:
                nbytes = count * _SIZE[etype]
                if nbytes > self.end - self.pos:
                    raise self.fail(f'{what}: {count} elements of {GgufType(etype).name} need {nbytes} '
                                    f'bytes but only {self.end - self.pos} remain', start)
                self.pos += nbytes
            elif etype == GgufType.STRING:
                self._skip_strings(count, what, start)
            elif etype == GgufType.ARRAY:
                # Each element takes at least 12 bytes (type + count): reject absurd counts early.
                if count * 12 > self.end - self.pos:
                    raise self.fail(f'{what}: {count} nested arrays cannot fit in the '
                                    f'{self.end - self.pos} remaining bytes', start)
                for _ in range(count):
                    self.skip_value(GgufType.ARRAY, what, depth + 1)
            else:
                raise self.fail(f'{what}: unknown array element type {etype}', start)
        else:
            raise self.fail(f'{what}: unknown value type {vtype}', self.pos - 4)

    def _skip_strings(self, count: int, what: str, start: int) -> None:
        if count * 8 > self.end - self.pos:
            raise self.fail(f'{what}: {count} strings cannot fit in the {self.end - self.pos} '
                            'remaining bytes', start)
        buf, pos, end, unpack = self.buf, self.pos, self.end, _U64.unpack_from
        for _ in range(count):
            if pos + 8 > end:
                self.pos = pos
                raise self.fail(f'truncated file inside the strings of {what}')
            at, n = pos, unpack(buf, pos)[0]
            pos += 8 + n
            if pos > end:   # report where the string starts, not a position past the end
                self.pos = at
                raise self.fail(f'{what}: a string of {n} bytes runs past the end of the file', at)
        self.pos = pos


def _decode_str(raw: bytes) -> str:
    # surrogateescape keeps invalid UTF-8 bytes, so a read-modify-write round trip is exact.
    return raw.decode('utf-8', 'surrogateescape')


def _decode_value(buf: memoryview, pos: int, vtype: int) -> tuple[Any, int]:
    """Decode one (already validated) value at ``pos``; return it and the position after it."""
    if vtype in _SCALAR:
        fmt, dtype = _SCALAR[vtype]
        value = struct.unpack_from(fmt, buf, pos)[0]
        return (bool(value) if vtype == GgufType.BOOL else value), pos + _SIZE[vtype]
    if vtype == GgufType.STRING:
        n = _U64.unpack_from(buf, pos)[0]
        return _decode_str(bytes(buf[pos + 8:pos + 8 + n])), pos + 8 + n
    etype = _U32.unpack_from(buf, pos)[0]
    count = _U64.unpack_from(buf, pos + 4)[0]
    pos += 12
    if etype in _SCALAR:
        dtype = np.dtype(_SCALAR[etype][1]).newbyteorder('<')
        array = np.frombuffer(buf, dtype=dtype, count=count, offset=pos)
        return array, pos + count * dtype.itemsize
    items = []
    if etype == GgufType.STRING:
        unpack = _U64.unpack_from
        for _ in range(count):
            n = unpack(buf, pos)[0]
            items.append(_decode_str(bytes(buf[pos + 8:pos + 8 + n])))
            pos += 8 + n
        return items, pos
    for _ in range(count):
        item, pos = _decode_value(buf, pos, GgufType.ARRAY)
        items.append(item)
    return items, pos


@dataclass
class _Field:
    """A metadata value: its GGUF type, and where it lies in the file (or the value itself)."""
    type: GgufType
    element_type: GgufType | None = None   # for arrays
    offset: int = -1                        # value offset in the mapping, -1 when set in memory
    value: Any = None
    loaded: bool = False


class GgufTensor:
    """A tensor record: ``name``, ``type`` (``GgmlType``), ``shape`` (ggml order), ``nbytes``, and
    ``array`` (numpy order; a read-only view of the mapping for tensors read from a file)."""

    __slots__ = ('name', 'type', 'shape', 'offset', 'nbytes', '_source', '_array')

    def __init__(self, name: str, type: GgmlType, shape: tuple[int, ...], nbytes: int,
                 offset: int = -1, source: Any = None, array: np.ndarray | None = None):
        self.name, self.type, self.shape, self.nbytes = name, type, shape, nbytes
        self.offset, self._source, self._array = offset, source, array

    @property
    def array(self) -> np.ndarray:
        """The data in numpy order (a read-only view of the mapping for a tensor read from a file)."""
        if self._array is None:
            self._array = self._source._tensor_array(self)
        return self._array

    @property
    def n_elements(self) -> int:
        """The number of elements (the product of the shape)."""
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    def __repr__(self) -> str:
        return (f'GgufTensor({self.name!r}, {type_name(self.type)}, shape={list(self.shape)} '
                f'(ggml order), {self.nbytes} bytes)')


class _LazyFields(Mapping[str, Any]):
    """``name -> value`` mapping over a file's metadata, decoding each value on first access."""

    def __init__(self, owner: 'GgufFile'):
        self._owner = owner

    def __getitem__(self, name: str) -> Any:
        return self._owner.get_field(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner._fields)

    def __len__(self) -> int:
        return len(self._owner._fields)

    def __contains__(self, name: object) -> bool:
        return name in self._owner._fields

    def __repr__(self) -> str:
        return f'<{len(self)} GGUF fields: {", ".join(list(self)[:8])}{", ..." if len(self) > 8 else ""}>'


class GgufFile:
    """A GGUF file, read from disk (:meth:`from_path`) or built in memory and written (:meth:`save`).

    Attributes:
        fields: ``name -> value`` (ints, floats, bools, strings, numpy arrays for numeric arrays,
            lists for arrays of strings or arrays), decoded lazily.
        tensors: ``name -> GgufTensor`` (type, ggml-order shape, ``array``), in file order.
        version: GGUF version (3 for files gadget writes).
        alignment: data alignment (``general.alignment``, default 32).
    """

    def __init__(self) -> None:
        self._fields: dict[str, _Field] = {}
        self.tensors: dict[str, GgufTensor] = {}
        self.fields = _LazyFields(self)
        self.version = 3
        self.path: Path | None = None
        self._file: BinaryIO | None = None
        self._map: mmap.mmap | None = None
        self._buf: memoryview | None = None
        self._data_offset = 0

    # --- reading --------------------------------------------------------------------------

    @classmethod
    def from_path(cls, path: str | os.PathLike) -> 'GgufFile':
        """Open and validate a GGUF file (memory-mapped; values and tensor data are read lazily)."""
        self = cls()
        self.path = Path(path)
        self._file = open(self.path, 'rb')
        try:
            size = os.fstat(self._file.fileno()).st_size
            if size == 0:
                raise GgufError(f'{self.path}: empty file, not GGUF')
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self._buf = memoryview(self._map)
            self._parse(_Cursor(self._buf, str(self.path)))
        except BaseException:
            self.close()
            raise
        return self

    def _parse(self, cur: _Cursor) -> None:
        cur.need(4, 'magic')
        magic = bytes(cur.buf[0:4])
        if magic != GGUF_MAGIC:
            raise cur.fail(f'not a GGUF file: magic {magic!r}, expected {GGUF_MAGIC!r}', 0)
        cur.pos = 4
        version = cur.u32('version')
        if version in (1, 2, 3):
            pass
        elif version & 0xFFFF == 0 and (version >> 24) in (1, 2, 3):
            raise cur.fail('big-endian GGUF files are not supported (the version field reads '
                           f'{version:#x}); convert the file on a big-endian machine', 4)
        else:
            raise cur.fail(f'unsupported GGUF version {version}; supported: 2 and 3', 4)
        if version == 1:
            raise cur.fail('GGUF version 1 (32-bit counts) is not supported; re-convert the model', 4)
        self.version = version
        n_tensors = cur.u64('tensor count')
        n_kv = cur.u64('metadata count')
        remaining = cur.end - cur.pos
        # Each key/value needs >= 8 (key length) + 4 (type) + 1 bytes; each tensor info >= 8+4+8+4+8.
        if n_kv * 13 > remaining:
            raise cur.fail(f'metadata count {n_kv} cannot fit in a {cur.end}-byte file', 16)
        if n_tensors * 32 > remaining:
            raise cur.fail(f'tensor count {n_tensors} cannot fit in a {cur.end}-byte file', 8)

        for i in range(n_kv):
            at = cur.pos
            key = cur.text(f'key of metadata entry {i}')
            if key in self._fields:
                raise cur.fail(f'duplicate metadata key {key!r}', at)
            vtype = cur.u32(f'type of {key!r}')
            if vtype not in _SIZE and vtype not in (GgufType.STRING, GgufType.ARRAY):
                raise cur.fail(f'{key!r}: unknown value type {vtype}', cur.pos - 4)
            field = _Field(type=GgufType(vtype), offset=cur.pos)
            if vtype == GgufType.ARRAY:
                cur.need(4, f'element type of {key!r}')
                etype = _U32.unpack_from(cur.buf, cur.pos)[0]
                field.element_type = GgufType(etype) if etype in _VALUE_TYPES else None
            cur.skip_value(vtype, repr(key))
            self._fields[key] = field

        alignment = self._read_alignment(cur)
        infos = []
        for i in range(n_tensors):
            at = cur.pos
            name = cur.text(f'name of tensor {i}')
            n_dims = cur.u32(f'dimension count of {name!r}')
            if not 1 <= n_dims <= _MAX_DIMS:
                raise cur.fail(f'tensor {name!r} has {n_dims} dimensions; GGML supports 1 to {_MAX_DIMS}',
                               cur.pos - 4)
            shape = tuple(cur.u64(f'shape of {name!r}') for _ in range(n_dims))
            ttype = cur.u32(f'type of {name!r}')
            offset = cur.u64(f'data offset of {name!r}')
            infos.append((at, name, shape, ttype, offset))

        data_offset = -(-cur.pos // alignment) * alignment
        if data_offset > cur.end:
            if n_tensors:
                raise cur.fail(f'truncated file: tensor data would start at byte {data_offset}', cur.pos)
            data_offset = cur.end
        self._data_offset = data_offset
        data_size = cur.end - data_offset
        spans = []
        for at, name, shape, ttype, offset in infos:
            if name in self.tensors:
                raise cur.fail(f'duplicate tensor name {name!r}', at)
            if ttype not in _GGML_TYPES:
                raise cur.fail(f'tensor {name!r}: unknown or removed GGML type {ttype}', at)
            gtype = GgmlType(ttype)
            if any(d >= 2**63 for d in shape):
                raise cur.fail(f'tensor {name!r}: dimension out of range {list(shape)}', at)
            blck = block_size(gtype)
            if shape[0] % blck:
                raise cur.fail(f'tensor {name!r}: row of {shape[0]} elements is not a multiple of the '
                               f'{type_name(gtype)} block size {blck}', at)
            # Element and byte counts, zero dimensions skipped (numpy cannot even represent an empty
            # array whose other dimensions multiply past 2**63), must fit numpy's 63-bit sizes, also
            # once dequantized to float32 (4 bytes an element).
            n_elements = 1
            for d in shape:
                n_elements *= d or 1
            extent = (shape[0] or blck) // blck * type_size(gtype)
            for d in shape[1:]:
                extent *= d or 1
            if n_elements >= 2**61 or extent >= 2**63:
                raise cur.fail(f'tensor {name!r}: shape {list(shape)} overflows 64 bits '
                               f'({n_elements} elements, {extent} bytes)', at)
            nbytes = shape[0] // blck * type_size(gtype)
            for d in shape[1:]:
                nbytes *= d
            if offset % alignment:
                raise cur.fail(f'tensor {name!r}: data offset {offset} is not a multiple of the '
                               f'alignment {alignment}', at)
            if offset + nbytes > data_size:
                raise cur.fail(f'tensor {name!r}: data [{offset}, {offset + nbytes}) runs past the end of '
                               f'the data section ({data_size} bytes)', at)
            spans.append((offset, nbytes, name))
            self.tensors[name] = GgufTensor(name, gtype, shape, nbytes, offset=offset, source=self)
        spans.sort()
        for (off_a, size_a, name_a), (off_b, _, name_b) in zip(spans, spans[1:]):
            if off_a + size_a > off_b:
                raise GgufError(f'{self.path}: tensors {name_a!r} [{off_a}, {off_a + size_a}) and '
                                f'{name_b!r} (from {off_b}) overlap (offsets relative to the data '
                                f'section at byte {data_offset})')

    def _read_alignment(self, cur: _Cursor) -> int:
        field = self._fields.get('general.alignment')
        if field is None:
            return DEFAULT_ALIGNMENT
        if field.type not in (GgufType.UINT32, GgufType.INT32, GgufType.UINT64, GgufType.INT64):
            raise cur.fail(f'general.alignment must be an integer, got {field.type.name}', field.offset)
        value = self.get_field('general.alignment')
        if value <= 0 or value & (value - 1) or value > 1 << 30:
            raise cur.fail(f'general.alignment must be a power of two, got {value}', field.offset)
        return int(value)

    @property
    def alignment(self) -> int:
        """The data alignment of the file (``general.alignment``, default 32)."""
        value = self.get_field('general.alignment', DEFAULT_ALIGNMENT)
        return int(value)

    @property
    def mapping(self) -> memoryview | None:
        """The whole file as a read-only memory map while it is open from a path (None for a file
        built in memory, or once closed): what tensors can point into without a copy."""
        return self._buf

    def tensor_file_offset(self, name: str) -> int:
        """Where the bytes of tensor ``name`` start in the file (an offset into :attr:`mapping`)."""
        t = self._tensor(name)
        if t.offset < 0:
            raise GgufError(f'tensor {name!r} was added in memory: it has no place in a file yet')
        return self._data_offset + t.offset

    def _tensor_array(self, t: GgufTensor) -> np.ndarray:
        if self._buf is None:
            raise GgufError(f'{self.path}: file is closed')
        start = self._data_offset + t.offset
        if is_quantized(t.type):
            row = row_size(t.type, t.shape[0])
            shape = tuple(reversed(t.shape[1:])) + (row,)
            dtype = np.dtype(np.uint8)
        else:
            shape = tuple(reversed(t.shape))
            dtype = numpy_dtype(t.type)
        count = t.nbytes // dtype.itemsize
        return np.frombuffer(self._buf, dtype=dtype, count=count, offset=start).reshape(shape)

    # --- access -----------------------------------------------------------------------------

    def get_field(self, name: str, default: Any = ...) -> Any:
        """The value of metadata ``name``; ``default`` if absent (KeyError listing keys without it)."""
        field = self._fields.get(name)
        if field is None:
            if default is not ...:
                return default
            raise KeyError(f'no GGUF field {name!r}; fields: {", ".join(self._fields) or "(none)"}')
        if not field.loaded:
            if self._buf is None:
                raise GgufError(f'{self.path}: file is closed; field {name!r} was not read before close()')
            field.value, _ = _decode_value(self._buf, field.offset, field.type)
            field.loaded = True
        return field.value

    def get_field_type(self, name: str) -> GgufType:
        """GGUF value type of a field (``GgufType.ARRAY`` for arrays; see get_field_element_type)."""
        return self._field(name).type

    def get_field_element_type(self, name: str) -> GgufType | None:
        """The element type of an array field (None for other fields)."""
        return self._field(name).element_type

    def _field(self, name: str) -> _Field:
        try:
            return self._fields[name]
        except KeyError:
            raise KeyError(f'no GGUF field {name!r}; fields: {", ".join(self._fields) or "(none)"}') from None

    def _tensor(self, name: str) -> GgufTensor:
        try:
            return self.tensors[name]
        except KeyError:
            names = ', '.join(list(self.tensors)[:20]) + (', ...' if len(self.tensors) > 20 else '')
            raise KeyError(f'no tensor {name!r} in the GGUF file; tensors: {names or "(none)"}') from None

    def get_tensor(self, name: str) -> np.ndarray:
        """Tensor data in numpy order (raw ``uint8`` blocks for quantized types; see dequantize)."""
        return self._tensor(name).array

    def get_tensor_type(self, name: str) -> GgmlType:
        """The GGML type of tensor ``name``."""
        return self._tensor(name).type

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        """Shape in ggml order (``ne[0]`` first), as GGUF records it."""
        return self._tensor(name).shape

    def dequantize(self, name: str) -> np.ndarray:
        """Tensor as float32 in numpy order, decoded by GGML's type traits for quantized/F16/BF16."""
        t = self._tensor(name)
        data = t.array
        if not is_quantized(t.type):
            return np.asarray(data, dtype=np.float32)
        return dequantize_blocks(data, t.type, t.shape)

    # --- writing ----------------------------------------------------------------------------

    def set_field(self, name: str, value: Any, type: GgufType | str | None = None,
                  element_type: GgufType | str | None = None) -> None:
        """Set metadata ``name``. The GGUF type is inferred unless given.

        Inference: bool → BOOL, int → INT32 (INT64 / UINT64 when out of range), float → FLOAT32
        (GGUF's convention; pass ``type='FLOAT64'`` to keep doubles), str → STRING, numpy scalars
        and arrays → their exact type, lists of str → ARRAY of STRING, lists of numbers → ARRAY of
        the inferred type, nested lists → ARRAY of ARRAY.
        """
        if not isinstance(name, str) or not name:
            raise GgufError(f'field names are non-empty strings, got {name!r}')
        vtype = _as_gguf_type(type)
        if vtype is None and name == _ALIGNMENT_KEY:
            vtype = GgufType.UINT32   # the only type GGML's and gguf-py's readers accept here
        vtype, etype, value = _normalise(value, vtype, _as_gguf_type(element_type), name)
        if vtype == GgufType.ARRAY and _array_depth(value) > _MAX_DEPTH:
            raise GgufError(f'field {name!r}: arrays nested deeper than {_MAX_DEPTH} levels '
                            'cannot be read back')
        self._fields[name] = _Field(type=vtype, element_type=etype, value=value, loaded=True)

    def remove_field(self, name: str) -> None:
        """Remove field ``name`` (an error naming the fields there are when it is absent)."""
        self._field(name)
        del self._fields[name]

    def set_tensor(self, name: str, array: np.ndarray, type: TypeLike | None = None) -> None:
        """Add or replace tensor ``name`` from a numpy array in numpy order.

        * no ``type``: stored exactly (float32 → F32, float16 → F16, bfloat16 → BF16, ints ...);
        * an unquantized ``type`` (``'F16'``, ``'BF16'``, ...): converted to it;
        * a quantized ``type`` with a float array: quantized by GGML (rows must be a multiple of
          the block size);
        * a quantized ``type`` with a ``uint8`` array: pre-quantized raw blocks, shaped
          ``(..., bytes per row)`` as :meth:`get_tensor` returns them.
        """
        if not isinstance(name, str) or not name:
            raise GgufError(f'tensor names are non-empty strings, got {name!r}')
        if len(_encode_name(name, 'tensor')) >= lib.GGML_MAX_NAME:
            raise GgufError(f'tensor name {name!r} is longer than GGML allows '
                            f'({lib.GGML_MAX_NAME - 1} bytes)')
        array = np.asarray(array)
        if array.ndim == 0:
            array = array.reshape(1)
        if array.ndim > _MAX_DIMS:
            raise GgufError(f'tensor {name!r}: {array.ndim} dimensions; GGML supports up to {_MAX_DIMS}')
        if type is None:
            from .types import ggml_type_for_dtype
            try:
                gtype = ggml_type_for_dtype(array.dtype)
            except TypeError as exc:
                raise GgufError(f'tensor {name!r}: {exc}') from None
        else:
            gtype = as_ggml_type(type)
        if is_quantized(gtype):
            if array.dtype == np.uint8:
                row = array.shape[-1]
                if row % type_size(gtype):
                    raise GgufError(f'tensor {name!r}: {row} bytes per row is not a whole number of '
                                    f'{type_name(gtype)} blocks ({type_size(gtype)} bytes each)')
                shape = (row // type_size(gtype) * block_size(gtype),) + tuple(reversed(array.shape[:-1]))
                data = np.ascontiguousarray(array)
            else:
                shape = tuple(reversed(array.shape))
                try:
                    data = quantize(array, gtype)
                except ValueError as exc:
                    raise GgufError(f'tensor {name!r}: {exc}') from None
        else:
            data = np.ascontiguousarray(array, dtype=numpy_dtype(gtype))
            shape = tuple(reversed(array.shape))
        self.tensors[name] = GgufTensor(name, gtype, shape, data.nbytes, array=data)

    def remove_tensor(self, name: str) -> None:
        """Remove tensor ``name`` from the tensors to be saved."""
        self._tensor(name)
        del self.tensors[name]

    def save(self, path: str | os.PathLike, alignment: int | None = None) -> None:
        """Write a GGUF v3 file. Streams tensor data (no second copy in memory); writes a temporary
        file next to ``path`` and renames it, so a failure leaves no partial file behind."""
        path = Path(path)
        if alignment is None:
            alignment = self.alignment
        if alignment <= 0 or alignment & (alignment - 1):
            raise GgufError(f'alignment must be a power of two, got {alignment}')
        fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent or '.')
        try:
            os.chmod(tmp, _new_file_mode(path))   # mkstemp makes 0600 files
            with os.fdopen(fd, 'wb') as out:
                self._write(out, alignment)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def _write(self, out: BinaryIO, alignment: int) -> None:
        header = bytearray()
        records = [(name, field.type, field.element_type, self.get_field(name))
                   for name, field in self._fields.items()]
        # The alignment the data are written with must be what the file says (as UINT32).
        if _ALIGNMENT_KEY in self._fields:
            records = [(_ALIGNMENT_KEY, GgufType.UINT32, None, alignment) if r[0] == _ALIGNMENT_KEY else r
                       for r in records]
        elif alignment != DEFAULT_ALIGNMENT:
            records.append((_ALIGNMENT_KEY, GgufType.UINT32, None, alignment))
        header += GGUF_MAGIC + _U32.pack(3) + _U64.pack(len(self.tensors)) + _U64.pack(len(records))
        for name, vtype, etype, value in records:
            header += _pack_string(_encode_name(name, 'field')) + _U32.pack(vtype)
            _pack_value(header, vtype, etype, value, name)
        offsets, offset = [], 0
        for t in self.tensors.values():
            offsets.append(offset)
            header += _pack_string(_encode_name(t.name, 'tensor')) + _U32.pack(len(t.shape))
            header += b''.join(_U64.pack(d) for d in t.shape)
            header += _U32.pack(t.type) + _U64.pack(offset)
            offset += -(-t.nbytes // alignment) * alignment
        header += b'\0' * (-len(header) % alignment)
        out.write(header)
        for t, start in zip(self.tensors.values(), offsets):
            data = t.array
            if data.nbytes != t.nbytes:
                raise GgufError(f'tensor {t.name!r}: {data.nbytes} bytes of data for {t.nbytes} expected')
            # bytes, not the array's own buffer: the buffer protocol has no format for bfloat16
            out.write(memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8)))
            out.write(b'\0' * (-t.nbytes % alignment))

    # --- lifetime and display ----------------------------------------------------------------

    def close(self) -> None:
        """Release the mapping. Arrays obtained from the file must not be used afterwards."""
        for t in self.tensors.values():
            if t._source is self:
                t._array = None
        if self._buf is not None:
            try:
                self._buf.release()
            except BufferError:
                pass  # arrays handed out still view the mapping; it is freed with them
            self._buf = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # numpy views still alive: the mapping goes when they do
            self._map = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> 'GgufFile':
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return self.describe()

    def describe(self, max_items: int = 8) -> str:
        """A gguf-dump-like listing: fields (long arrays abbreviated) and the tensor table."""
        lines = [f'GGUF v{self.version} {self.path or "(in memory)"}: {len(self._fields)} fields, '
                 f'{len(self.tensors)} tensors']
        for name in self._fields:
            field = self._fields[name]
            kind = field.type.name
            if field.type == GgufType.ARRAY and field.element_type is not None:
                kind = f'[{field.element_type.name}]'
            lines.append(f'  {name:<40} {kind:<10} {_abbreviate(self.get_field(name), max_items)}')
        if self.tensors:
            lines.append(f'  {"tensor":<40} {"type":<6} {"shape (ggml order)":<22} bytes')
            for t in self.tensors.values():
                lines.append(f'  {t.name:<40} {type_name(t.type):<6} {str(list(t.shape)):<22} {t.nbytes}')
        return '\n'.join(lines)


# --------------------------------------------------------------------------------------------
# Value encoding
# --------------------------------------------------------------------------------------------

def _as_gguf_type(value: GgufType | str | int | None) -> GgufType | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return GgufType[value.upper()]
        except KeyError:
            raise GgufError(f'unknown GGUF value type {value!r}; known: '
                            f'{", ".join(t.name for t in GgufType if t.name != "COUNT")}') from None
    return GgufType(int(value))


def _infer(value: Any, name: str) -> GgufType:
    if isinstance(value, (bool, np.bool_)):
        return GgufType.BOOL
    if isinstance(value, np.generic) and value.dtype in _DTYPE_TO_GGUF:
        return _DTYPE_TO_GGUF[value.dtype]
    if isinstance(value, (int, np.integer)):
        for t, lo, hi in _INT_RANGES:
            if lo <= value <= hi:
                return t
        raise GgufError(f'field {name!r}: integer {value} does not fit in 64 bits')
    if isinstance(value, (float, np.floating)):
        return GgufType.FLOAT32
    if isinstance(value, (str, bytes)):
        return GgufType.STRING
    if isinstance(value, (list, tuple, np.ndarray)):
        return GgufType.ARRAY
    raise GgufError(f'field {name!r}: cannot store a {type(value).__name__} in GGUF '
                    '(use bool, int, float, str, numpy scalars/arrays or lists of them)')


def _normalise(value: Any, vtype: GgufType | None, etype: GgufType | None,
               name: str) -> tuple[GgufType, GgufType | None, Any]:
    if vtype is None:
        vtype = _infer(value, name)
    if vtype == GgufType.ARRAY:
        if isinstance(value, np.ndarray):
            if value.ndim != 1:
                raise GgufError(f'field {name!r}: GGUF arrays are 1-D, got shape {value.shape}')
            if etype is None:
                if value.dtype not in _DTYPE_TO_GGUF:
                    raise GgufError(f'field {name!r}: no GGUF type for numpy dtype {value.dtype}')
                etype = _DTYPE_TO_GGUF[value.dtype]
            if etype not in _SCALAR:
                raise GgufError(f'field {name!r}: a numpy array cannot hold {etype.name} elements')
            return vtype, etype, np.ascontiguousarray(
                value, dtype=np.dtype(_SCALAR[etype][1]).newbyteorder('<'))
        if not isinstance(value, (list, tuple)):
            raise GgufError(f'field {name!r}: ARRAY needs a list, tuple or numpy array, '
                            f'got {type(value).__name__}')
        items = list(value)
        if etype is None:
            kinds = {_infer(v, name) for v in items}
            if not items:
                etype = GgufType.INT32
            elif kinds <= {GgufType.INT32, GgufType.INT64, GgufType.UINT64} and len(kinds) > 1:
                etype = max(kinds, key=[GgufType.INT32, GgufType.INT64, GgufType.UINT64].index)
            elif len(kinds) == 1:
                etype = kinds.pop()
            else:
                raise GgufError(f'field {name!r}: array elements of mixed types '
                                f'{sorted(k.name for k in kinds)}; GGUF arrays hold one type')
        if etype in _SCALAR:
            try:
                return vtype, etype, np.array(items, dtype=np.dtype(_SCALAR[etype][1]).newbyteorder('<'))
            except (OverflowError, ValueError, TypeError) as exc:
                raise GgufError(
                    f'field {name!r}: cannot store {items[:5]}... as {etype.name}: {exc}') from None
        if etype == GgufType.STRING:
            for v in items:
                if not isinstance(v, (str, bytes)):
                    raise GgufError(f'field {name!r}: array of STRING holds a {type(v).__name__}')
            return vtype, etype, [v if isinstance(v, str) else _decode_str(v) for v in items]
        if etype == GgufType.ARRAY:
            return vtype, etype, [_normalise(v, GgufType.ARRAY, None, name)[2] for v in items]
        raise GgufError(f'field {name!r}: unsupported array element type {etype.name}')
    if vtype == GgufType.STRING:
        if isinstance(value, bytes):
            value = _decode_str(value)
        if not isinstance(value, str):
            raise GgufError(f'field {name!r}: STRING needs str, got {type(value).__name__}')
        return vtype, None, value
    if vtype in _SCALAR:
        if isinstance(value, (str, bytes, list, tuple, np.ndarray)) or value is None:
            raise GgufError(f'field {name!r}: {vtype.name} needs a number, got {type(value).__name__}')
        try:
            struct.pack(_SCALAR[vtype][0], value.item() if isinstance(value, np.generic) else value)
        except (struct.error, OverflowError) as exc:
            raise GgufError(f'field {name!r}: {value!r} does not fit {vtype.name}: {exc}') from None
        return vtype, None, (value.item() if isinstance(value, np.generic) else value)
    raise GgufError(f'field {name!r}: unsupported GGUF value type {vtype!r}')


def _array_depth(value: Any) -> int:
    """Levels of arrays in a normalised ARRAY value (1 for a flat array)."""
    if isinstance(value, list) and value and not isinstance(value[0], str):
        return 1 + max(_array_depth(v) for v in value)
    return 1


def _encode_name(name: str, kind: str) -> bytes:
    try:
        return name.encode('utf-8')
    except UnicodeEncodeError as exc:
        raise GgufError(f'{kind} name {name!r} is not valid UTF-8: {exc}') from None


def _new_file_mode(path: Path) -> int:
    """Mode for the saved file: that of the file it replaces, else 0666 less the umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def _pack_string(raw: bytes) -> bytes:
    return _U64.pack(len(raw)) + raw


def _pack_value(out: bytearray, vtype: GgufType, etype: GgufType | None, value: Any, name: str) -> None:
    if vtype in _SCALAR:
        try:
            out += struct.pack(_SCALAR[vtype][0], value)
        except (struct.error, OverflowError) as exc:
            raise GgufError(f'field {name!r}: {value!r} does not fit {vtype.name}: {exc}') from None
    elif vtype == GgufType.STRING:
        out += _pack_string(value.encode('utf-8', 'surrogateescape'))
    elif vtype == GgufType.ARRAY:
        if etype is None:
            raise GgufError(f'field {name!r}: array with an unknown element type')
        out += _U32.pack(etype) + _U64.pack(len(value))
        if etype in _SCALAR:
            out += np.ascontiguousarray(value, dtype=np.dtype(_SCALAR[etype][1]).newbyteorder('<')).tobytes()
        elif etype == GgufType.STRING:
            for v in value:
                out += _pack_string(v.encode('utf-8', 'surrogateescape'))
        elif etype == GgufType.ARRAY:
            for v in value:
                inner = _normalise(v, GgufType.ARRAY, None, name)
                _pack_value(out, GgufType.ARRAY, inner[1], inner[2], name)
        else:
            raise GgufError(f'field {name!r}: unsupported array element type {etype!r}')
    else:
        raise GgufError(f'field {name!r}: unsupported GGUF value type {vtype!r}')


def _abbreviate(value: Any, n: int) -> str:
    if isinstance(value, np.ndarray):
        items = value[:n].tolist()
        more = len(value) - len(items)
    elif isinstance(value, list):
        items = value[:n]
        more = len(value) - len(items)
    else:
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + '...'
    text = ', '.join(repr(v) if not isinstance(v, (list, np.ndarray)) else f'[{len(v)} items]' for v in items)
    return f'[{text}{f", ... ({more} more)" if more > 0 else ""}] ({len(value)})'


if sys.byteorder != 'little':  # pragma: no cover
    raise ImportError('gadget.gguf supports little-endian machines only')
