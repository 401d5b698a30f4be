"""The one import point of the compiled binding ``gadget._ggml`` and its process-wide hooks.

Importing this module:

* installs GGML's abort callback implemented in the generated C layer (see ``build_ffi.py``), which
  turns a failed ``GGML_ASSERT`` inside a guarded call into an error the op layer raises;
* routes GGML's log to the ``gadget.ggml`` logger (quiet unless the application configures logging);
* in a portable build (``GADGET_PORTABLE=1``: GGML's backends are modules, ``GGML_BACKEND_DL``),
  loads the backend modules from ``gadget/lib/``: of the CPU modules (one per x86-64 level) the
  one GGML scores best for this CPU, and every other backend module there (RPC, CUDA); their
  functions in ``lib`` are bound to the loaded module (see ``build_ffi.py``). ``MODULES`` says
  which file each backend came from (empty in a native build, where the backends are linked).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable



def _load_openblas() -> None:
    """In a build with GGML's BLAS backend (the default; not with ``GADGET_BLAS=0``), load the
    OpenBLAS it is linked against (``libscipy_openblas.so`` of the scipy-openblas32 package) before
    GGML's libraries: the dynamic loader then finds it among the loaded libraries by its SONAME,
    with no ``LD_LIBRARY_PATH`` and no path baked into the build. Its idle worker threads are told
    to sleep almost at once (``OPENBLAS_THREAD_TIMEOUT=4`` in the process's environment, unless it
    is set already; numpy's own OpenBLAS, when loaded later, reads it too): otherwise they spin for
    a tenth of a second after every product, on the cores GGML's own threads need next."""
    if not any((Path(__file__).parent / 'lib').glob('libgadget-ggml-blas.so*')):
        return
    # 2**4 cycles of spinning (the minimum), read when the library loads: before the import,
    # which loads it. It stays set (numpy's own OpenBLAS, if loaded later, reads it too).
    os.environ.setdefault('OPENBLAS_THREAD_TIMEOUT', '4')
    try:
        import scipy_openblas32
    except ImportError:
        raise ImportError('this gadget was built with GGML\'s BLAS backend, which runs on the OpenBLAS of '
                          'the scipy-openblas32 package (a dependency of gadget): pip install '
                          'scipy-openblas32, or build gadget without it (GADGET_BLAS=0)') from None
    path = os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(True))
    ctypes.CDLL(path)


_load_openblas()

try:
    from ._ggml import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on how gadget was installed
    raise ImportError(
        f'gadget\'s compiled GGML binding is missing or broken ({exc}). Install gadget with '
        '`pip install .` (or `pip install -e .`) from its source tree so that GGML is built. If it is '
        f'installed: Python imported gadget from {Path(__file__).parent}, the source tree in the '
        'current folder, which shadows the installed package: run from another folder.'
    ) from exc

__all__ = ['ffi', 'lib', 'API', 'log', 'MODULES', 'park_handlers']

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


@dataclass
class _Line:
    """The log line GGML is emitting: its level and the pieces received so far."""
    level: int = logging.INFO
    text: str = ''


_pending = _Line()


@ffi.def_extern()
def gadget_log_callback(level: int, text: Any, user_data: Any) -> None:
    """GGML's log callback (``ggml_log_callback``): one piece of a line of text at ``level``,
    passed on to the ``gadget.ggml`` logger once the line is complete."""
    # GGML emits lines in pieces; GGML_LOG_LEVEL_CONT continues the previous piece's level.
    if level != lib.GGML_LOG_LEVEL_CONT:
        _pending.level = _LEVELS.get(level, logging.INFO)
    if text == ffi.NULL:
        return
    _pending.text += ffi.string(text).decode('utf-8', 'replace')
    if _pending.text.endswith('\n'):
        message, _pending.text = _pending.text.rstrip('\n'), ''
        if log.isEnabledFor(_pending.level):
            log.log(_pending.level, '%s', message)


#: ``thread id -> handler`` for threads marked parkable (``lib.gadget_set_parkable``): GGML aborted
#: on that thread (an RPC server gone mid-call); the handler gets GGML's message, then the thread
#: stops for good instead of the process aborting (see ``gadget.backends``).
park_handlers: dict[int, Callable[[str], None]] = {}


@ffi.def_extern()
def gadget_on_parked(message: Any) -> None:
    """Called by GGML's abort callback on a parkable thread, before it stops that thread."""
    text = ffi.string(message).decode('utf-8', 'replace').strip() if message != ffi.NULL else ''
    handler = park_handlers.pop(threading.get_ident(), None)
    if handler is not None:
        handler(text)


MODULE_PREFIX = 'libgadget-ggml-'
# GGML's own registration order: accelerators first, the CPU last.
_LOAD_ORDER = ['cuda', 'blas', 'rpc']


def _load_modules(folder: Path) -> dict[str, str]:
    groups: dict[str, list[Path]] = {}
    for path in sorted(folder.glob(f'{MODULE_PREFIX}*.so')):
        groups.setdefault(path.name[len(MODULE_PREFIX):-len('.so')].split('-')[0], []).append(path)
    if not groups:
        return {}                # a native build: the backends are linked in
    if 'cpu' not in groups:
        raise ImportError(f'gadget found no CPU backend module ({MODULE_PREFIX}cpu*.so) in {folder}: '
                          'reinstall gadget (pip install .) so that GGML is built')
    loaded = {}
    order = sorted(groups, key=lambda g: (g == 'cpu', _LOAD_ORDER.index(g) if g in _LOAD_ORDER else 99, g))
    for group in order:
        scored = [(lib.gadget_dl_score(str(p).encode()), p) for p in groups[group]]
        score, best = max(scored, key=lambda sp: sp[0])
        problem = None
        if score <= 0:
            names = ', '.join(p.name for p in groups[group])
            problem = (f'none of {names} runs on this CPU' if score == 0
                       else f'{best.name} cannot be loaded: {ffi.string(lib.gadget_dl_error()).decode()}')
        elif lib.gadget_dl_bind(group.encode(), str(best).encode()) < 0:
            problem = f'{best.name} cannot be loaded: {ffi.string(lib.gadget_dl_error()).decode()}'
        elif lib.ggml_backend_load(str(best).encode()) == ffi.NULL:
            problem = f'GGML could not initialise {best.name} (see the gadget.ggml log)'
        if problem is None:
            loaded[group] = best.name
        elif group == 'cpu':
            raise ImportError(f"gadget cannot load GGML's CPU backend: {problem}")
        else:   # e.g. a CUDA module on a machine without the CUDA runtime: that backend is absent
            log.warning('GGML backend module %r not loaded: %s', group, problem)
    return loaded


lib.gadget_install_abort_guard()
lib.ggml_log_set(lib.gadget_log_callback, ffi.NULL)
#: The backend modules loaded: group -> file (``{'cpu': 'libgadget-ggml-cpu-zen4.so', 'rpc': ...}``).
MODULES: dict[str, str] = _load_modules(Path(__file__).resolve().parent / 'lib')
lib.ggml_cpu_init()
