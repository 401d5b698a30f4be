"""GGML backends through GGML's backend registry: ``'cpu'``, ``'cuda'`` / ``'cuda:N'`` when built in,
and ``'rpc://host:port'``: a GGML RPC server on another machine (see :mod:`gadget.rpc`).

:func:`backends` lists what this build and machine support; :class:`Backend` owns one initialised
``ggml_backend_t`` (``close()`` / ``with``).
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path
from typing import Any, Iterable

from . import rpc
from .errors import BackendError, RemoteError
from .ggml import ffi, lib

__all__ = ['Backend', 'backends', 'devices', 'local_device', 'default_threads', 'CUDA_REBUILD_HINT']

CUDA_REBUILD_HINT = ('rebuild gadget with the CUDA backend: CMAKE_ARGS="-DGGML_CUDA=ON" pip install '
                     '--force-reinstall --no-cache-dir . (from the source tree; see the README)')

# Registry names of the backends gadget knows how to address, by gadget's name for them.
# 'blas': GGML's BLAS backend (matrix products through cblas_sgemm), in builds with GGML_BLAS.
# 'rpc': named 'rpc://host:port' (a server, not a device of this machine's registry).
_KINDS = {'cpu': 'CPU', 'cuda': 'CUDA', 'blas': 'BLAS', 'rpc': 'RPC'}
_THREADED = ('cpu', 'blas')   # backends with a thread count (both run on the CPU's cores)
# How long the CPU backend's idle workers poll for the next graph before they sleep: GGML's
# threadpool ``poll`` level (0-100, GGML's default 50, where a worker spins for milliseconds). 0:
# they sleep as soon as a graph is done, so they leave the cores to whatever runs between graphs:
# Python between decode steps, OpenBLAS's threads between the scheduler's splits. Waking them costs
# microseconds per graph. (Builds with OpenMP ignore it: libgomp spins by its own settings.)
CPU_POLL = 0


def _text(ptr: Any) -> str:
    return ffi.string(ptr).decode() if ptr != ffi.NULL else ''


def default_threads() -> int:
    """Threads for CPU compute: the *physical* cores this process may run on (its affinity mask,
    SMT siblings counted once), as llama.cpp chooses: a second hyper-thread on a core that GGML's
    matrix kernels already keep busy adds synchronisation, not throughput."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
    return physical_cores(cpus)


def physical_cores(cpus: Iterable[int], sysfs: str | os.PathLike = '/sys/devices/system/cpu') -> int:
    """How many physical cores the logical CPUs ``cpus`` cover: CPUs that are SMT siblings (Linux's
    ``topology/thread_siblings_list``) count once. Where the topology cannot be read, every CPU
    counts as a core."""
    cpus = set(cpus)
    cores = set()
    for cpu in cpus:
        try:
            text = Path(sysfs, f'cpu{cpu}', 'topology', 'thread_siblings_list').read_text()
            siblings = _cpu_list(text) & cpus
        except (OSError, ValueError):
            siblings = {cpu}
        cores.add(frozenset(siblings or {cpu}))
    return max(1, len(cores))


def _cpu_list(text: str) -> set[int]:
    """Linux's CPU list format, e.g. ``'0-3,8,10-11'``."""
    out: set[int] = set()
    for part in text.strip().split(','):
        if part:
            first, _, last = part.partition('-')
            out.update(range(int(first), int(last or first) + 1))
    return out


def devices() -> list[dict[str, Any]]:
    """Every device GGML's registry knows: name, description, type, registry, memory."""
    out = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ffi.new('size_t *'), ffi.new('size_t *')
        lib.ggml_backend_dev_memory(dev, free, total)
        out.append({
            'name': _text(lib.ggml_backend_dev_name(dev)),
            'description': _text(lib.ggml_backend_dev_description(dev)),
            'type': lib.ggml_backend_dev_type(dev),
            'registry': _text(lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(dev))),
            'memory_free': free[0], 'memory_total': total[0],
        })
    return out


def _registry_devices(registry: str) -> list[Any]:
    reg = lib.ggml_backend_reg_by_name(registry.encode())
    if reg == ffi.NULL:
        return []
    return [lib.ggml_backend_reg_dev_get(reg, i) for i in range(lib.ggml_backend_reg_dev_count(reg))]


def backends() -> list[str]:
    """Backend names usable here: ``'cpu'`` always, ``'cuda:0'``... for each CUDA device, ``'blas'``
    in a build with GGML's BLAS backend."""
    names = []
    for kind, registry in _KINDS.items():
        devs = _registry_devices(registry)
        if kind in ('cpu', 'blas'):
            names += [kind] if devs else []
        else:
            names += [f'{kind}:{i}' for i in range(len(devs))]
    return names


def _parse(name: str) -> tuple[str, int]:
    if not isinstance(name, str):
        raise BackendError(f'backend names are strings such as "cpu", "cuda:0" or "rpc://host:port", '
                           f'got {name!r}')
    kind, _, index = name.strip().lower().partition(':')
    if kind == 'rpc':
        rpc.parse_endpoint(name)
        return kind, 0
    if kind not in _KINDS:
        raise BackendError(f'unknown backend {name!r}; available here: {", ".join(backends())} '
                           f'(gadget knows: cpu, cuda[:N], blas, rpc://host:port)')
    if index and not index.isdigit():
        raise BackendError(f'bad device index in backend {name!r}: expected e.g. "{kind}:0"')
    if kind in ('cpu', 'blas') and index not in ('', '0'):
        raise BackendError(f'there is one {kind.upper()} backend: use "{kind}", not {name!r}')
    return kind, int(index or 0)


# endpoint -> open RPC backends of this process
_rpc_in_use: dict[str, int] = {}


def _free_rpc_backend(handle: Any, endpoint: str) -> None:
    lib.ggml_backend_free(handle)      # no traffic: GGML's RPC backend only frees its own record
    _rpc_in_use[endpoint] -= 1


def local_device(name: str) -> Any:
    """The ``ggml_backend_dev_t`` of a device of this machine (``'cpu'``, ``'cuda:N'``), e.g. for
    an RPC server to serve."""
    kind, index = _parse(name)
    if kind in ('rpc', 'blas'):
        raise BackendError(f'{name!r} is not a device of this machine to serve: use "cpu" or "cuda[:N]"')
    devs = _registry_devices(_KINDS[kind])
    if index >= len(devs):
        hint = f'; {CUDA_REBUILD_HINT}' if kind == 'cuda' and not devs else ''
        raise BackendError(f'no device {name!r} here (available: {", ".join(backends())}){hint}')
    return devs[index]


def _free_backend(handle: Any, pool: list[Any]) -> None:
    lib.ggml_backend_free(handle)
    if pool[0] is not None:
        lib.ggml_threadpool_free(pool[0])
        pool[0] = None


class Backend:
    """One initialised GGML backend (device), owned by this object.

    Arguments:
        name: ``'cpu'``, ``'cuda'`` (device 0), ``'cuda:N'``, ``'blas'`` or ``'rpc://host:port'``
            (a server started with ``gadget rpc-server``; its first device).
        n_threads: CPU threads (CPU backend only; an RPC server's are set where it starts);
            default: the cores available to this process.
        timeout: RPC only: seconds one call to the server may take before the server counts as
            hung (default :data:`gadget.rpc.TIMEOUT`).
    """

    def __init__(self, name: str = 'cpu', n_threads: int | None = None, timeout: float | None = None):
        kind, index = _parse(name)
        self.kind = kind
        self.index = index
        self._handle: Any = None
        self._finalizer: Any = None
        #: ``host:port`` of an RPC server (None for the backends of this machine).
        self.endpoint: str | None = None
        #: Held while a graph computes on this backend: models that share one backend (and so its
        #: thread pool and work buffer, which GGML does not guard) compute one at a time.
        self.lock = threading.RLock()
        self.n_threads = 0
        self._pool: list[Any] = [None]
        if kind == 'rpc':
            self._init_rpc(name, timeout)
            return
        if timeout is not None:
            raise ValueError(f'timeout= is for RPC backends, not {name!r}')
        devs = _registry_devices(_KINDS[kind])
        if not devs:
            if kind == 'cuda':
                raise BackendError(f'backend {name!r}: this build of gadget has no CUDA backend; '
                                   f'{CUDA_REBUILD_HINT}')
            if kind == 'blas':
                raise BackendError(f'backend {name!r}: this build of gadget has no BLAS backend (GGML '
                                   'built without GGML_BLAS)')
            raise BackendError(f'backend {name!r} is not available; available: {", ".join(backends())}')
        if index >= len(devs):
            raise BackendError(f'backend {name!r}: only {len(devs)} {kind} device(s) here '
                               f'({", ".join(backends())})')
        self.name = kind if kind in ('cpu', 'blas') else f'{kind}:{index}'
        self.device = devs[index]
        handle = lib.ggml_backend_dev_init(self.device, ffi.NULL)
        if handle == ffi.NULL:
            raise BackendError(f'backend {name!r} failed to initialise')
        self._handle = handle
        # The CPU backend's thread pool (in self._pool), owned here: freed after the backend.
        self._finalizer = weakref.finalize(self, _free_backend, handle, self._pool)
        if kind in _THREADED:
            self.set_n_threads(n_threads or default_threads())

    def _init_rpc(self, name: str, timeout: float | None) -> None:
        host, port = rpc.parse_endpoint(name)
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not 0 < timeout < float('inf')):
            raise ValueError(f'timeout must be a positive number of seconds, got {timeout!r}')
        endpoint = self.endpoint = f'{host}:{port}'
        self.name = f'rpc://{endpoint}'
        self.timeout = float(timeout) if timeout is not None else rpc.TIMEOUT
        problem = rpc.failed(endpoint)
        if problem is not None:
            raise RemoteError(f'RPC server {self.name} is unusable from this process ({problem}); '
                              'GGML keeps the broken connection: restart this process (or use a server '
                              'on another port)')
        # While this process holds a connection to the server (another backend's buffers there),
        # the server, which serves one client at a time, would not answer a second one.
        if not _rpc_in_use.get(endpoint):
            rpc.probe(endpoint)

        def init() -> tuple[Any, Any]:
            handle = lib.ggml_backend_rpc_init(endpoint.encode(), 0)
            buffer_type = lib.ggml_backend_get_default_buffer_type(handle) if handle != ffi.NULL else None
            return handle, buffer_type

        handle, self._buffer_type = self.call(init, what='connecting')
        if handle == ffi.NULL or self._buffer_type == ffi.NULL:
            raise RemoteError(f'GGML could not connect to the RPC server {self.name}')
        self.device = lib.ggml_backend_get_device(handle)
        self._handle = handle
        _rpc_in_use[endpoint] = _rpc_in_use.get(endpoint, 0) + 1
        self._finalizer = weakref.finalize(self, _free_rpc_backend, handle, endpoint)

    @property
    def remote(self) -> bool:
        """Whether this is an RPC backend (its calls go through :func:`gadget.rpc.call`)."""
        return self.kind == 'rpc'

    def call(self, fn: Any, *args: Any, what: str = 'the call') -> Any:
        """``fn(*args)``: for an RPC backend on gadget's RPC worker, with this backend's timeout
        (see :func:`gadget.rpc.call`); directly otherwise."""
        if self.endpoint is None:
            return fn(*args)
        return rpc.call(fn, *args, endpoints=[self.endpoint], timeout=self.timeout, what=what)

    @property
    def handle(self) -> Any:
        """The ``ggml_backend_t`` (raises once closed)."""
        if self._handle is None:
            raise BackendError(f'backend {self.name!r} is closed')
        return self._handle

    @property
    def is_host(self) -> bool:
        """Whether tensors in this backend's default buffers live in host memory."""
        return bool(lib.ggml_backend_buft_is_host(self.buffer_type))

    @property
    def buffer_type(self) -> Any:
        """The backend's default buffer type (where its tensors are allocated)."""
        if self.kind == 'rpc':
            self.handle   # raises once closed
            return self._buffer_type
        return lib.ggml_backend_get_default_buffer_type(self.handle)

    def set_n_threads(self, n_threads: int) -> None:
        """Set the threads of a backend that runs on the CPU's cores (the CPU and BLAS backends;
        others ignore it), through the backend's own ``ggml_backend_set_n_threads``."""
        if self.kind not in _THREADED:
            return
        if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1:
            raise ValueError(f'n_threads must be a positive int, got {n_threads!r}')
        if self.kind == 'cpu':
            self._new_threadpool(n_threads)
            lib.ggml_backend_cpu_set_n_threads(self.handle, n_threads)
        else:
            reg = lib.ggml_backend_dev_backend_reg(self.device)
            address = lib.ggml_backend_reg_get_proc_address(reg, b'ggml_backend_set_n_threads')
            if address == ffi.NULL:
                raise BackendError(f'backend {self.name!r} has no ggml_backend_set_n_threads')
            ffi.cast('ggml_backend_set_n_threads_t', address)(self.handle, n_threads)
        self.n_threads = n_threads

    def _new_threadpool(self, n_threads: int) -> None:
        # A pool of the backend's own instead of the one GGML makes and joins on every compute
        # when none is set: a graph split by the scheduler computes once per split.
        params = ffi.new('struct ggml_threadpool_params *')
        lib.ggml_threadpool_params_init(params, n_threads)
        params.poll = CPU_POLL
        pool = lib.ggml_threadpool_new(params)
        if pool == ffi.NULL:
            raise BackendError(f'backend {self.name!r}: GGML could not start {n_threads} threads')
        lib.ggml_backend_cpu_set_threadpool(self.handle, pool)
        old, self._pool[0] = self._pool[0], pool
        if old is not None:
            lib.ggml_threadpool_free(old)

    def description(self) -> str:
        """The device's description (e.g. the CPU or GPU model)."""
        return _text(lib.ggml_backend_dev_description(self.device))

    def close(self) -> None:
        """Free the backend. Idempotent."""
        if self._handle is not None:
            self._finalizer()
            self._handle = None

    def __enter__(self) -> 'Backend':
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = 'closed' if self._handle is None else self.description()
        if self.kind == 'rpc':
            return f'Backend({self.name!r}, timeout={self.timeout:g}: {state})'
        threads = f', n_threads={self.n_threads}' if self.kind in _THREADED else ''
        return f'Backend({self.name!r}{threads}: {state})'
