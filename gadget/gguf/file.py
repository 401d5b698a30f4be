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
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping

import numpy as np

from ..errors import GgufError
from ..ggml import GgmlType, GgufType, lib
from ..types import (TypeLike, as_ggml_type, block_size, dequantize_blocks, is_quantized, numpy_dtype,
                     quantize, row_size, type_name, type_size)
from .reader import parse
from .values import (ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAX_DEPTH, MAX_DIMS, Cursor, Field, abbreviate,
                     array_depth, as_gguf_type, decode_value, encode_name, normalise)
from .writer import save_atomically, write

__all__ = ['GgufFile', 'GgufTensor']

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
        self._fields: dict[str, Field] = {}
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
            parsed = parse(Cursor(self._buf, str(self.path)))
            self.version, self._fields, self._data_offset = parsed.version, parsed.fields, parsed.data_offset
            self.tensors = {name: GgufTensor(name, gtype, shape, nbytes, offset=offset, source=self)
                            for name, (gtype, shape, nbytes, offset) in parsed.tensors.items()}
        except BaseException:
            self.close()
            raise
        return self

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
            field.value, _ = decode_value(self._buf, field.offset, field.type)
            field.loaded = True
        return field.value

    def get_field_type(self, name: str) -> GgufType:
        """GGUF value type of a field (``GgufType.ARRAY`` for arrays; see get_field_element_type)."""
        return self._field(name).type

    def get_field_element_type(self, name: str) -> GgufType | None:
        """The element type of an array field (None for other fields)."""
        return self._field(name).element_type

    def _field(self, name: str) -> Field:
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
        encode_name(name, 'field')    # a name that cannot be written is refused now
        vtype = as_gguf_type(type)
        if vtype is None and name == ALIGNMENT_KEY:
            vtype = GgufType.UINT32   # the only type GGML's and gguf-py's readers accept here
        vtype, etype, value = normalise(value, vtype, as_gguf_type(element_type), name)
        if vtype == GgufType.ARRAY and array_depth(value) > MAX_DEPTH:
            raise GgufError(f'field {name!r}: arrays nested deeper than {MAX_DEPTH} levels '
                            'cannot be read back')
        self._fields[name] = Field(type=vtype, element_type=etype, value=value, loaded=True)

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
        if len(encode_name(name, 'tensor')) >= lib.GGML_MAX_NAME:
            raise GgufError(f'tensor name {name!r} is longer than GGML allows '
                            f'({lib.GGML_MAX_NAME - 1} bytes)')
        array = np.asarray(array)
        if array.ndim == 0:
            array = array.reshape(1)
        if array.ndim > MAX_DIMS:
            raise GgufError(f'tensor {name!r}: {array.ndim} dimensions; GGML supports up to {MAX_DIMS}')
        if type is None:
            from ..types import ggml_type_for_dtype
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
        file next to ``path`` and renames it, so a failure leaves no partial file behind. A ``path``
        that is a symbolic link is written through: its target is replaced, the link stays."""
        path = Path(path)
        if path.is_symlink():
            path = Path(os.path.realpath(path))
        if alignment is None:
            alignment = self.alignment
        if alignment <= 0 or alignment & (alignment - 1):
            raise GgufError(f'alignment must be a power of two, got {alignment}')
        records = [(name, field.type, field.element_type, self.get_field(name))
                   for name, field in self._fields.items()]
        save_atomically(Path(path), lambda out: write(out, records, list(self.tensors.values()), alignment))

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
            lines.append(f'  {name:<40} {kind:<10} {abbreviate(self.get_field(name), max_items)}')
        if self.tensors:
            lines.append(f'  {"tensor":<40} {"type":<6} {"shape (ggml order)":<22} bytes')
            for t in self.tensors.values():
                lines.append(f'  {t.name:<40} {type_name(t.type):<6} {str(list(t.shape)):<22} {t.nbytes}')
        return '\n'.join(lines)
