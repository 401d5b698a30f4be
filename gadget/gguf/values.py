"""The GGUF value codec: the type tables, bounds-checked reading (``Cursor``), decoding a value
from the file, inferring and normalising the type of a value to write, and packing it.

Internal to ``gadget.gguf``: the reader, the writer and ``GgufFile`` share these.
"""

from __future__ import annotations

import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GgufError
from ..ggml import GgmlType, GgufType
from ..types import type_size

GGUF_MAGIC = b'GGUF'
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = 'general.alignment'
MAX_DEPTH = 16            # nesting of arrays of arrays
MAX_DIMS = 4

SCALAR = {  # GGUF value type -> (struct format, numpy dtype)
    GgufType.UINT8: ('<B', np.uint8), GgufType.INT8: ('<b', np.int8),
    GgufType.UINT16: ('<H', np.uint16), GgufType.INT16: ('<h', np.int16),
    GgufType.UINT32: ('<I', np.uint32), GgufType.INT32: ('<i', np.int32),
    GgufType.FLOAT32: ('<f', np.float32), GgufType.BOOL: ('<?', np.bool_),
    GgufType.UINT64: ('<Q', np.uint64), GgufType.INT64: ('<q', np.int64),
    GgufType.FLOAT64: ('<d', np.float64),
}
SIZE = {t: struct.calcsize(fmt) for t, (fmt, _) in SCALAR.items()}
VALUE_TYPES = frozenset(int(t) for t in GgufType if t.name != 'COUNT')
U32 = struct.Struct('<I')
U64 = struct.Struct('<Q')
DTYPE_TO_GGUF: dict[np.dtype, GgufType] = {np.dtype(dt): t for t, (_, dt) in SCALAR.items()}
GGML_TYPES = frozenset(int(t) for t in GgmlType if t.name != 'COUNT' and type_size(t) > 0)
INT_RANGES = [(GgufType.INT32, -2**31, 2**31 - 1), (GgufType.INT64, -2**63, 2**63 - 1),
               (GgufType.UINT64, 0, 2**64 - 1)]



class Cursor:
    """Bounds-checked little-endian reads from a buffer; every failure names the byte offset."""

    __slots__ = ('buf', 'pos', 'end', 'path')

    def __init__(self, buf: memoryview, path: str):
        self.buf, self.pos, self.end, self.path = buf, 0, len(buf), path

    def fail(self, what: str, at: int | None = None) -> GgufError:
        """The error to raise for ``what``, naming the file and byte offset ``at`` (default: here)."""
        return GgufError(f'{self.path}: {what} (at byte offset {self.pos if at is None else at})')

    def need(self, n: int, what: str) -> None:
        """Refuse (truncated file) unless ``n`` more bytes remain for ``what``."""
        if n < 0 or self.pos + n > self.end:
            raise self.fail(f'truncated file: {what} needs {n} bytes, {self.end - self.pos} remain')

    def u32(self, what: str) -> int:
        """Read a little-endian uint32 and move past it."""
        self.need(4, what)
        value = U32.unpack_from(self.buf, self.pos)[0]
        self.pos += 4
        return value

    def u64(self, what: str) -> int:
        """Read a little-endian uint64 and move past it."""
        self.need(8, what)
        value = U64.unpack_from(self.buf, self.pos)[0]
        self.pos += 8
        return value

    def string(self, what: str) -> bytes:
        """Read a GGUF string (uint64 length, then the bytes) as raw bytes and move past it."""
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
        if vtype in SIZE:
            self.need(SIZE[vtype], what)
            self.pos += SIZE[vtype]
        elif vtype == GgufType.STRING:
            n = self.u64(f'length of {what}')
            if n > self.end - self.pos:
                raise self.fail(f'{what}: string of {n} bytes but only {self.end - self.pos} remain',
                                self.pos - 8)
            self.pos += n
        elif vtype == GgufType.ARRAY:
            if depth >= MAX_DEPTH:
                raise self.fail(f'{what}: arrays nested deeper than {MAX_DEPTH}')
            start = self.pos
            etype = self.u32(f'element type of {what}')
            count = self.u64(f'element count of {what}')
            if etype in SIZE:
                nbytes = count * SIZE[etype]
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
        buf, pos, end, unpack = self.buf, self.pos, self.end, U64.unpack_from
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


def decode_str(raw: bytes) -> str:
    """The text of a GGUF string value; invalid UTF-8 bytes are kept as surrogates."""
    # surrogateescape keeps invalid UTF-8 bytes, so a read-modify-write round trip is exact.
    return raw.decode('utf-8', 'surrogateescape')


def decode_value(buf: memoryview, pos: int, vtype: int) -> tuple[Any, int]:
    """Decode one (already validated) value at ``pos``; return it and the position after it."""
    if vtype in SCALAR:
        fmt, dtype = SCALAR[vtype]
        value = struct.unpack_from(fmt, buf, pos)[0]
        return (bool(value) if vtype == GgufType.BOOL else value), pos + SIZE[vtype]
    if vtype == GgufType.STRING:
        n = U64.unpack_from(buf, pos)[0]
        return decode_str(bytes(buf[pos + 8:pos + 8 + n])), pos + 8 + n
    etype = U32.unpack_from(buf, pos)[0]
    count = U64.unpack_from(buf, pos + 4)[0]
    pos += 12
    if etype in SCALAR:
        element = np.dtype(SCALAR[etype][1]).newbyteorder('<')
        array = np.frombuffer(buf, dtype=element, count=count, offset=pos)
        return array, pos + count * element.itemsize
    items = []
    if etype == GgufType.STRING:
        unpack = U64.unpack_from
        for _ in range(count):
            n = unpack(buf, pos)[0]
            items.append(decode_str(bytes(buf[pos + 8:pos + 8 + n])))
            pos += 8 + n
        return items, pos
    for _ in range(count):
        item, pos = decode_value(buf, pos, GgufType.ARRAY)
        items.append(item)
    return items, pos


@dataclass
class Field:
    """A metadata value: its GGUF type, and where it lies in the file (or the value itself)."""
    type: GgufType
    element_type: GgufType | None = None   # for arrays
    offset: int = -1                        # value offset in the mapping, -1 when set in memory
    value: Any = None
    loaded: bool = False


def as_gguf_type(value: GgufType | str | int | None) -> GgufType | None:
    """A GGUF value type from a ``GgufType``, its name (any case: ``'uint32'``) or its number;
    None stays None ("infer it")."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return GgufType[value.upper()]
        except KeyError:
            raise GgufError(f'unknown GGUF value type {value!r}; known: '
                            f'{", ".join(t.name for t in GgufType if t.name != "COUNT")}') from None
    return GgufType(int(value))


def infer(value: Any, name: str) -> GgufType:
    """The GGUF type a value of field ``name`` is stored as: bools BOOL, numpy scalars of a GGUF
    dtype that type, other integers the first of INT32, INT64, UINT64 that holds them, floats
    FLOAT32, str/bytes STRING, lists, tuples and numpy arrays ARRAY."""
    if isinstance(value, (bool, np.bool_)):
        return GgufType.BOOL
    if isinstance(value, np.generic) and value.dtype in DTYPE_TO_GGUF:
        return DTYPE_TO_GGUF[value.dtype]
    if isinstance(value, (int, np.integer)):
        for t, lo, hi in INT_RANGES:
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


def normalise(value: Any, vtype: GgufType | None, etype: GgufType | None,
               name: str) -> tuple[GgufType, GgufType | None, Any]:
    """Validate ``value`` of field ``name`` for GGUF type ``vtype`` (and array element type
    ``etype``; None: inferred) and return ``(vtype, etype, value)`` in the form the writer packs:
    a Python scalar, a str, a 1-D little-endian numpy array of scalars, or a list of strings or
    of nested arrays. A value GGUF cannot hold raises GgufError naming the field."""
    if vtype is None:
        vtype = infer(value, name)
    if vtype == GgufType.ARRAY:
        if isinstance(value, np.ndarray):
            if value.ndim != 1:
                raise GgufError(f'field {name!r}: GGUF arrays are 1-D, got shape {value.shape}')
            if etype is None:
                if value.dtype not in DTYPE_TO_GGUF:
                    raise GgufError(f'field {name!r}: no GGUF type for numpy dtype {value.dtype}')
                etype = DTYPE_TO_GGUF[value.dtype]
            if etype not in SCALAR:
                raise GgufError(f'field {name!r}: a numpy array cannot hold {etype.name} elements')
            return vtype, etype, np.ascontiguousarray(
                value, dtype=np.dtype(SCALAR[etype][1]).newbyteorder('<'))
        if not isinstance(value, (list, tuple)):
            raise GgufError(f'field {name!r}: ARRAY needs a list, tuple or numpy array, '
                            f'got {type(value).__name__}')
        items = list(value)
        if etype is None:
            kinds = {infer(v, name) for v in items}
            if not items:
                etype = GgufType.INT32
            elif kinds <= {GgufType.INT32, GgufType.INT64, GgufType.UINT64} and len(kinds) > 1:
                etype = max(kinds, key=[GgufType.INT32, GgufType.INT64, GgufType.UINT64].index)
            elif len(kinds) == 1:
                etype = kinds.pop()
            else:
                raise GgufError(f'field {name!r}: array elements of mixed types '
                                f'{sorted(k.name for k in kinds)}; GGUF arrays hold one type')
        if etype in SCALAR:
            try:
                return vtype, etype, np.array(items, dtype=np.dtype(SCALAR[etype][1]).newbyteorder('<'))
            except (OverflowError, ValueError, TypeError) as exc:
                raise GgufError(
                    f'field {name!r}: cannot store {items[:5]}... as {etype.name}: {exc}') from None
        if etype == GgufType.STRING:
            for v in items:
                if not isinstance(v, (str, bytes)):
                    raise GgufError(f'field {name!r}: array of STRING holds a {type(v).__name__}')
            strings = [v if isinstance(v, str) else decode_str(v) for v in items]
            for i, v in enumerate(strings):
                check_utf8(v, f'field {name!r}, item {i}')
            return vtype, etype, strings
        if etype == GgufType.ARRAY:
            return vtype, etype, [normalise(v, GgufType.ARRAY, None, name)[2] for v in items]
        raise GgufError(f'field {name!r}: unsupported array element type {etype.name}')
    if vtype == GgufType.STRING:
        if isinstance(value, bytes):
            value = decode_str(value)
        if not isinstance(value, str):
            raise GgufError(f'field {name!r}: STRING needs str, got {type(value).__name__}')
        check_utf8(value, f'field {name!r}')
        return vtype, None, value
    if vtype in SCALAR:
        if isinstance(value, (str, bytes, list, tuple, np.ndarray)) or value is None:
            raise GgufError(f'field {name!r}: {vtype.name} needs a number, got {type(value).__name__}')
        try:
            struct.pack(SCALAR[vtype][0], value.item() if isinstance(value, np.generic) else value)
        except (struct.error, OverflowError) as exc:
            raise GgufError(f'field {name!r}: {value!r} does not fit {vtype.name}: {exc}') from None
        return vtype, None, (value.item() if isinstance(value, np.generic) else value)
    raise GgufError(f'field {name!r}: unsupported GGUF value type {vtype!r}')


def array_depth(value: Any) -> int:
    """Levels of arrays in a normalised ARRAY value (1 for a flat array)."""
    if isinstance(value, list) and value and not isinstance(value[0], str):
        return 1 + max(array_depth(v) for v in value)
    return 1


def check_utf8(text: str, what: str) -> None:
    """GGUF strings are UTF-8: a str that cannot be encoded (a lone surrogate) is refused now, not
    when the file is written."""
    try:
        text.encode('utf-8')
    except UnicodeEncodeError as exc:
        raise GgufError(f'{what}: not valid UTF-8 text ({exc.reason} at index {exc.start}: '
                        f'{text[exc.start:exc.end]!r})') from None


def encode_name(name: str, kind: str) -> bytes:
    """A field or tensor name (``kind``) as UTF-8 bytes; a GgufError when it is not valid UTF-8."""
    try:
        return name.encode('utf-8')
    except UnicodeEncodeError as exc:
        raise GgufError(f'{kind} name {name!r} is not valid UTF-8: {exc}') from None


def new_file_mode(path: Path) -> int:
    """Mode for the saved file: that of the file it replaces, else 0666 less the umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


def pack_string(raw: bytes) -> bytes:
    """A GGUF string: the uint64 length, then the bytes."""
    return U64.pack(len(raw)) + raw


def pack_value(out: bytearray, vtype: GgufType, etype: GgufType | None, value: Any, name: str) -> None:
    """Append the GGUF encoding of a normalised ``value`` (see :func:`normalise`) to ``out``."""
    if vtype in SCALAR:
        try:
            out += struct.pack(SCALAR[vtype][0], value)
        except (struct.error, OverflowError) as exc:
            raise GgufError(f'field {name!r}: {value!r} does not fit {vtype.name}: {exc}') from None
    elif vtype == GgufType.STRING:
        out += pack_string(value.encode('utf-8', 'surrogateescape'))
    elif vtype == GgufType.ARRAY:
        if etype is None:
            raise GgufError(f'field {name!r}: array with an unknown element type')
        out += U32.pack(etype) + U64.pack(len(value))
        if etype in SCALAR:
            out += np.ascontiguousarray(value, dtype=np.dtype(SCALAR[etype][1]).newbyteorder('<')).tobytes()
        elif etype == GgufType.STRING:
            for v in value:
                out += pack_string(v.encode('utf-8', 'surrogateescape'))
        elif etype == GgufType.ARRAY:
            for v in value:
                inner = normalise(v, GgufType.ARRAY, None, name)
                pack_value(out, GgufType.ARRAY, inner[1], inner[2], name)
        else:
            raise GgufError(f'field {name!r}: unsupported array element type {etype!r}')
    else:
        raise GgufError(f'field {name!r}: unsupported GGUF value type {vtype!r}')


def abbreviate(value: Any, n: int) -> str:
    """A short display of a field value: at most ``n`` items of an array (with the count of the
    rest and the length), or a repr cut to 80 characters."""
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
