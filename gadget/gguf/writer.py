"""Writing GGUF files: the byte layout (:func:`write`) and the atomic replace (:func:`save_atomically`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from ..errors import GgufError
from ..ggml import GgufType
from .values import (ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, U32, U64, encode_name, new_file_mode,
                     pack_string, pack_value)

__all__ = ['write', 'save_atomically']


def save_atomically(path: Path, write_to: Callable[[BinaryIO], None]) -> None:
    """Run ``write_to`` on a temporary file next to ``path`` and rename it over ``path`` when it
    completes; on any failure the temporary file is removed and ``path`` is untouched."""
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent or '.')
    try:
        os.chmod(tmp, new_file_mode(path))   # mkstemp makes 0600 files
        with os.fdopen(fd, 'wb') as out:
            write_to(out)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write(out: BinaryIO, records: list[tuple[str, GgufType, GgufType | None, Any]], tensors: list[Any],
          alignment: int) -> None:
    """Write a GGUF v3 file to ``out``: the ``(name, type, element type, value)`` records, then the
    tensors (``name``, ``type``, ggml ``shape``, ``nbytes``, ``array``), each aligned."""
    header = bytearray()
    # The alignment the data are written with must be what the file says (as UINT32).
    if any(r[0] == ALIGNMENT_KEY for r in records):
        records = [(ALIGNMENT_KEY, GgufType.UINT32, None, alignment) if r[0] == ALIGNMENT_KEY else r
                   for r in records]
    elif alignment != DEFAULT_ALIGNMENT:
        records.append((ALIGNMENT_KEY, GgufType.UINT32, None, alignment))
    header += GGUF_MAGIC + U32.pack(3) + U64.pack(len(tensors)) + U64.pack(len(records))
    for name, vtype, etype, value in records:
        header += pack_string(encode_name(name, 'field')) + U32.pack(vtype)
        pack_value(header, vtype, etype, value, name)
    offsets, offset = [], 0
    for t in tensors:
        offsets.append(offset)
        header += pack_string(encode_name(t.name, 'tensor')) + U32.pack(len(t.shape))
        header += b''.join(U64.pack(d) for d in t.shape)
        header += U32.pack(t.type) + U64.pack(offset)
        offset += -(-t.nbytes // alignment) * alignment
    header += b'\0' * (-len(header) % alignment)
    out.write(header)
    for t, start in zip(tensors, offsets):
        data = t.array
        if data.nbytes != t.nbytes:
            raise GgufError(f'tensor {t.name!r}: {data.nbytes} bytes of data for {t.nbytes} expected')
        # bytes, not the array's own buffer: the buffer protocol has no format for bfloat16
        out.write(np.ascontiguousarray(data).reshape(-1).view(np.uint8).data)
        out.write(b'\0' * (-t.nbytes % alignment))
