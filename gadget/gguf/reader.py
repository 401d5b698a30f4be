"""Reading a GGUF file's header and tables: :func:`parse` validates everything it reads."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import GgufError
from ..ggml import GgmlType, GgufType
from ..types import block_size, type_name, type_size
from .values import (DEFAULT_ALIGNMENT, GGML_TYPES, GGUF_MAGIC, MAX_DIMS, SIZE, U32, VALUE_TYPES, Cursor,
                     Field, decode_value)

__all__ = ['Parsed', 'parse']


@dataclass
class Parsed:
    """What :func:`parse` found: the version, the fields (values still in the file), the tensors
    (``name -> (type, ggml shape, bytes, offset in the data section)``) and where the data start."""
    version: int
    fields: dict[str, Field] = field(default_factory=dict)
    tensors: dict[str, tuple[GgmlType, tuple[int, ...], int, int]] = field(default_factory=dict)
    data_offset: int = 0


def parse(cur: Cursor) -> Parsed:
    """Parse and validate the header, the metadata table and the tensor table of a whole GGUF file
    (``cur`` over its mapping): every count, length and offset is checked against the file size
    before it is used, and every failure names the byte offset."""
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
    parsed = Parsed(version=version)
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
        if key in parsed.fields:
            raise cur.fail(f'duplicate metadata key {key!r}', at)
        vtype = cur.u32(f'type of {key!r}')
        if vtype not in SIZE and vtype not in (GgufType.STRING, GgufType.ARRAY):
            raise cur.fail(f'{key!r}: unknown value type {vtype}', cur.pos - 4)
        field = Field(type=GgufType(vtype), offset=cur.pos)
        if vtype == GgufType.ARRAY:
            cur.need(4, f'element type of {key!r}')
            etype = U32.unpack_from(cur.buf, cur.pos)[0]
            field.element_type = GgufType(etype) if etype in VALUE_TYPES else None
        cur.skip_value(vtype, repr(key))
        parsed.fields[key] = field

    alignment = _read_alignment(parsed.fields, cur)
    infos = []
    for i in range(n_tensors):
        at = cur.pos
        name = cur.text(f'name of tensor {i}')
        n_dims = cur.u32(f'dimension count of {name!r}')
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(f'tensor {name!r} has {n_dims} dimensions; GGML supports 1 to {MAX_DIMS}',
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
    parsed.data_offset = data_offset
    data_size = cur.end - data_offset
    spans = []
    for at, name, shape, ttype, offset in infos:
        if name in parsed.tensors:
            raise cur.fail(f'duplicate tensor name {name!r}', at)
        if ttype not in GGML_TYPES:
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
        parsed.tensors[name] = (gtype, shape, nbytes, offset)
    spans.sort()
    for (off_a, size_a, name_a), (off_b, _, name_b) in zip(spans, spans[1:]):
        if off_a + size_a > off_b:
            raise GgufError(f'{cur.path}: tensors {name_a!r} [{off_a}, {off_a + size_a}) and '
                            f'{name_b!r} (from {off_b}) overlap (offsets relative to the data '
                            f'section at byte {data_offset})')
    return parsed


def _read_alignment(fields: dict[str, Field], cur: Cursor) -> int:
    field = fields.get('general.alignment')
    if field is None:
        return DEFAULT_ALIGNMENT
    if field.type not in (GgufType.UINT32, GgufType.INT32, GgufType.UINT64, GgufType.INT64):
        raise cur.fail(f'general.alignment must be an integer, got {field.type.name}', field.offset)
    value, _ = decode_value(cur.buf, field.offset, field.type)
    if value <= 0 or value & (value - 1) or value > 1 << 30:
        raise cur.fail(f'general.alignment must be a power of two, got {value}', field.offset)
    return int(value)
