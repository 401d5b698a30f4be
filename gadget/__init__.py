"""gadget: build and run GGML models from Python.

Layers, bottom-up (each imports only from the ones below it): the generated binding
(``gadget._ggml`` via ``gadget._ffi``) → the op layer ``gadget.ggml`` → arrays and GGUF → compute →
declarative models → model architectures → front ends.
"""

from __future__ import annotations

from .errors import BackendError, GadgetError, GgmlError, GgmlOpError, GgufError

__version__ = '0.1.0'

__all__ = ['__version__', 'GadgetError', 'GgmlError', 'GgmlOpError', 'GgufError', 'BackendError']
