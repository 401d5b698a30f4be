"""The exception types gadget raises. Every failure GGML reports reaches Python as a
:class:`GgmlOpError`, raised by the op layer (``gadget.ggml``)."""

from __future__ import annotations


class GadgetError(Exception):
    """Base class of every gadget error."""


class GgmlError(GadgetError):
    """GGML reported a failure (a failed ``GGML_ASSERT`` caught before it could abort)."""


class GgmlOpError(GgmlError, ValueError):
    """A GGML op rejected its inputs (mismatched shapes, types, out-of-bounds views, ...).

    ``op`` is the C function, ``reason`` GGML's own assertion text, ``where`` its source location.
    """

    def __init__(self, message: str, op: str = '', reason: str = '', where: str = ''):
        super().__init__(message)
        self.op, self.reason, self.where = op, reason, where


class GgufError(GadgetError, ValueError):
    """A GGUF file is malformed, truncated, or asks for something unsupported."""


class BackendError(GadgetError, RuntimeError):
    """A backend is unknown, not built in, or failed to initialise."""


class RemoteError(BackendError):
    """A GGML RPC server is unreachable, speaks another protocol version, went away during a call
    or did not answer in time."""


class ModelFileError(GadgetError, ValueError):
    """A model file does not fit the model: a weight missing, a shape or a hyper-parameter wrong, an
    architecture no model class implements."""


class ContextOverflowError(GadgetError, ValueError):
    """The tokens would not fit in the model's context (KV cache)."""


class ClosedError(GadgetError, RuntimeError):
    """An object was used after ``close()``."""
