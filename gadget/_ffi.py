"""The one import point of the compiled binding ``gadget._ggml`` and its process-wide hooks.

Importing this module:

* installs GGML's abort callback implemented in the generated C layer (see ``build_ffi.py``), which
  turns a failed ``GGML_ASSERT`` inside a guarded call into an error the op layer raises;
* routes GGML's log to the ``gadget.ggml`` logger (quiet unless the application configures logging);
* initialises the CPU backend's lookup tables once.
"""

from __future__ import annotations

import json
import logging
from typing import Any

try:
    from ._ggml import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on how gadget was installed
    raise ImportError(
        f'gadget\'s compiled GGML binding is missing or broken ({exc}). Install gadget with '
        '`pip install .` (or `pip install -e .`) from its source tree so that GGML is built.'
    ) from exc

__all__ = ['ffi', 'lib', 'API', 'log']

log = logging.getLogger('gadget.ggml')
log.addHandler(logging.NullHandler())

#: The generated API table: every bound function with its parameters, header and guard.
API: dict[str, Any] = json.loads(ffi.string(lib.gadget_api()).decode())

_LEVELS = {
    lib.GGML_LOG_LEVEL_DEBUG: logging.DEBUG,
    lib.GGML_LOG_LEVEL_INFO: logging.INFO,
    lib.GGML_LOG_LEVEL_WARN: logging.WARNING,
    lib.GGML_LOG_LEVEL_ERROR: logging.ERROR,
}
_pending = {'level': logging.INFO, 'text': ''}


@ffi.def_extern()
def gadget_log_callback(level: int, text: Any, user_data: Any) -> None:
    # GGML emits lines in pieces; GGML_LOG_LEVEL_CONT continues the previous piece's level.
    if level != lib.GGML_LOG_LEVEL_CONT:
        _pending['level'] = _LEVELS.get(level, logging.INFO)
    if text == ffi.NULL:
        return
    _pending['text'] += ffi.string(text).decode('utf-8', 'replace')
    if _pending['text'].endswith('\n'):
        message, _pending['text'] = _pending['text'].rstrip('\n'), ''
        if log.isEnabledFor(_pending['level']):
            log.log(_pending['level'], '%s', message)


lib.gadget_install_abort_guard()
lib.ggml_log_set(lib.gadget_log_callback, ffi.NULL)
lib.ggml_cpu_init()
