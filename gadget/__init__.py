"""gadget: build and run GGML models from Python.

Layers, bottom-up (each imports only from the ones below it): the generated binding
(``gadget._ggml`` via ``gadget._ffi``) → the op layer ``gadget.ggml`` and ``gadget.types`` →
``gadget.backends`` → ``gadget.arrays`` and ``gadget.gguf`` → ``gadget.compute`` →
``gadget.model`` → model architectures → front ends.

The model-layer names are imported on first use, so ``import gadget`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import (BackendError, ClosedError, ContextOverflowError, GadgetError, GgmlError, GgmlOpError,
                     GgufError, ModelFileError, RemoteError)

# Imported eagerly: the function ``gadget.backends()`` shares its name with the module
# ``gadget.backends``, and importing the module later would otherwise shadow the function.
from .backends import Backend, backends  # noqa: E402

__version__ = '0.1.0'

_LAZY = {
    'GgmlCompute': 'compute', 'GgmlModel': 'model', 'Parameter': 'model', 'Tensor': 'model',
    'State': 'model', 'Input': 'model', 'Buffer': 'model', 'GgufFile': 'gguf', 'LlamaModel': 'models',
    'BertModel': 'models', 'TextGen': 'textgen', 'TextChat': 'textgen', 'EmbedNumpy': 'embed',
    'EmbedTorch': 'embed', 'ShrekGen': 'shrek', 'ShrekChat': 'shrek',
}

__all__ = ['__version__', 'GadgetError', 'GgmlError', 'GgmlOpError', 'GgufError', 'BackendError',
           'ModelFileError', 'ContextOverflowError', 'ClosedError', 'RemoteError',
           'Backend', 'backends', *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f'.{_LAZY[name]}', __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
