"""GGUF files: read (memory-mapped, lazy, validated) and write (streamed, atomic).

The package: ``file`` (:class:`GgufFile`, :class:`GgufTensor`), ``values`` (the value codec),
``keys`` (the metadata key names gadget reads and writes).
"""

from ..errors import GgufError
from ..ggml import GgufType
from .file import GgufFile, GgufTensor
from .values import DEFAULT_ALIGNMENT, GGUF_MAGIC

__all__ = ['GgufFile', 'GgufTensor', 'GgufType', 'GgufError', 'GGUF_MAGIC', 'DEFAULT_ALIGNMENT']
