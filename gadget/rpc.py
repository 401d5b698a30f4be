"""GGML's RPC backend, made safe to call from Python: endpoints, the handshake, the server.

GGML's RPC client (``ggml-rpc.cpp``, C++) ends the whole process with ``GGML_ABORT`` when a server
stops answering in the middle of a call, and blocks for ever on a server that hangs. So every C
call that may talk to an RPC server runs here, on one worker thread:

* the worker is marked *parkable* in gadget's C layer: an abort on it hands GGML's message to
  Python and then stops that thread for good (signals blocked) instead of aborting the process;
  the caller, waiting for the call, raises :class:`~gadget.errors.RemoteError`;
* the caller waits at most ``timeout`` seconds (a hung server): then the worker is abandoned too;
* a new worker takes the next call. All RPC traffic of the process goes through one worker at a
  time, which GGML needs anyway: its client shares one socket per endpoint between every backend
  and buffer of that endpoint, and is not safe to use from several threads at once.

Before GGML connects, :func:`probe` says hello to the server itself, with a timeout: a wrong
address, a closed port, a server that does not answer and a protocol version other than this
build's each fail fast with a message that names the endpoint (GGML's own connect would block on
an unreachable host, and a version mismatch makes it return a backend without a device).

Limits, from GGML's client: an endpoint whose server failed stays unusable in this process (GGML
keeps its broken connection alive for the buffers it could not free), and the memory this
process held on the servers is given back only when the process ends, which closes the
connections. A parked or abandoned worker thread is one idle thread until then.

GGML's RPC protocol has no authentication and no encryption: a server runs whatever graph any
client that reaches its port sends. Bind servers to loopback or a private interface, or tunnel.
"""

from __future__ import annotations

import ipaddress
import queue
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ._ffi import ffi, lib, park_handlers
from .errors import BackendError, RemoteError

__all__ = ['PROTOCOL', 'DEFAULT_PORT', 'TIMEOUT', 'parse_endpoint', 'probe', 'wait_for_server', 'call',
           'failed', 'serve', 'is_loopback']

#: The RPC protocol version of this build's GGML (major, minor, patch).
PROTOCOL = (lib.RPC_PROTO_MAJOR_VERSION, lib.RPC_PROTO_MINOR_VERSION, lib.RPC_PROTO_PATCH_VERSION)
DEFAULT_PORT = 50052            # llama.cpp's rpc-server default
#: Seconds a call to a server may take before the server counts as hung (a whole graph compute
#: of the server's layers, or one weight upload, is one call).
TIMEOUT = 120.0
PROBE_TIMEOUT = 5.0

# The HELLO exchange of the pinned ggml-rpc.cpp: | cmd 14 (1 byte) | size (u64) | conn_caps |,
# answered by | size (u64) | major, minor, patch, padding (4 bytes) | conn_caps |, with
# RPC_CONN_CAPS_SIZE = 24 (transport.h). Zero capabilities: plain TCP.
_CMD_HELLO = 14
_CAPS = 24
_HELLO = struct.pack('<BQ', _CMD_HELLO, _CAPS) + bytes(_CAPS)


def parse_endpoint(text: str) -> tuple[str, int]:
    """``'host:port'`` (or ``'rpc://host:port'``) -> ``(host, port)``, checked."""
    if not isinstance(text, str):
        raise BackendError(f'an RPC endpoint is a string "rpc://host:port", got {text!r}')
    body = text.strip()
    body = body[len('rpc://'):] if body.lower().startswith('rpc://') else body
    host, sep, port = body.rpartition(':')
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or '/' in body:
        raise BackendError(f'bad RPC endpoint {text!r}: expected "rpc://host:port", e.g. '
                           f'"rpc://127.0.0.1:{DEFAULT_PORT}", with a port from 1 to 65535')
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback interface only."""
    if host == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b''
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def probe(endpoint: str, timeout: float | None = None) -> tuple[int, int, int]:
    """Connect to the RPC server at ``endpoint`` (``host:port``), exchange GGML's HELLO and return
    the server's protocol version; raise :class:`~gadget.errors.RemoteError` naming the endpoint if
    there is no server, it does not answer within ``timeout`` seconds (default
    :data:`PROBE_TIMEOUT`), or it speaks another protocol version."""
    timeout = PROBE_TIMEOUT if timeout is None else timeout
    host, port = parse_endpoint(endpoint)
    where = f'rpc://{host}:{port}'
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        raise RemoteError(f'no RPC server at {where} (connection refused): start one there with '
                           f'`gadget rpc-server --host {host} --port {port}`') from None
    except socket.timeout:
        raise RemoteError(f'RPC server {where}: no connection within {timeout:g} s (wrong address, or '
                           'a firewall drops the packets)') from None
    except OSError as exc:
        raise RemoteError(f'RPC server {where}: cannot connect: {exc.strerror or exc}') from None
    with sock:
        try:
            sock.settimeout(timeout)
            sock.sendall(_HELLO)
            head = _recv(sock, 8)
            body = _recv(sock, struct.unpack('<Q', head)[0]) if len(head) == 8 else b''
        except socket.timeout:
            raise RemoteError(f'RPC server {where} accepted the connection but did not answer within '
                               f'{timeout:g} s: GGML\'s server serves one client at a time (is another '
                               'client connected?), or it is not an RPC server') from None
        except OSError as exc:
            raise RemoteError(f'RPC server {where}: the handshake failed: {exc.strerror or exc}') from None
    if len(body) < 3:
        raise RemoteError(f'RPC server {where} closed the connection instead of answering GGML\'s '
                           f'HELLO: it speaks another RPC protocol version than this gadget\'s GGML '
                           f'({_version(PROTOCOL)}), or it is not a GGML RPC server; run the same '
                           'gadget (or llama.cpp of the same protocol) on both sides')
    version = (body[0], body[1], body[2])
    if version[0] != PROTOCOL[0] or version[1] > PROTOCOL[1]:
        raise RemoteError(f'RPC server {where} speaks RPC protocol {_version(version)}, this gadget\'s '
                           f'GGML speaks {_version(PROTOCOL)}: run the same gadget version (or a llama.cpp '
                           f'rpc-server of protocol {PROTOCOL[0]}.x) on both sides')
    return version


def wait_for_server(endpoint: str, timeout: float = 30.0, alive: Callable[[], bool] | None = None) -> None:
    """Wait until the RPC server at ``endpoint`` answers GGML's HELLO (e.g. one just started), for
    at most ``timeout`` seconds; ``alive()`` (e.g. ``lambda: proc.poll() is None``) False stops the
    wait early. Raises the last :class:`~gadget.errors.RemoteError` when it never answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            probe(endpoint, timeout=min(2.0, timeout))
            return
        except RemoteError:
            if time.monotonic() > deadline or (alive is not None and not alive()):
                raise
            time.sleep(0.1)


def _version(v: Iterable[int]) -> str:
    return '.'.join(str(x) for x in v)


# --- the worker ---------------------------------------------------------------------------------

@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    parked: str | None = None       # GGML's abort message when the worker stopped in this call


class _Worker:
    """The thread that runs RPC calls (see the module docstring)."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.current: _Job | None = None
        self.lost = False         # parked or abandoned: takes no more calls
        self.thread = threading.Thread(target=self._loop, name='gadget-rpc', daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        lib.gadget_set_parkable(1)
        park_handlers[threading.get_ident()] = self._parked
        while True:
            job = self.jobs.get()
            self.current = job
            try:
                job.result = job.fn(*job.args)
            except BaseException as exc:    # handed to the caller's thread
                job.error = exc
            self.current = None
            job.done.set()

    def _parked(self, message: str) -> None:
        # On the worker itself, inside GGML's abort: this thread stops after this returns.
        self.lost = True
        job = self.current
        if job is not None:
            job.parked = message or 'GGML aborted the call'
            job.done.set()


_lock = threading.Lock()
_worker: _Worker | None = None
_failed: dict[str, str] = {}      # endpoint -> what went wrong
_held: dict[str, str] = {}        # endpoint -> the failure that left this process's connection open


def failed(endpoint: str) -> str | None:
    """Why the server at ``endpoint`` (``host:port``) is unusable from this process, or None: it
    failed, or it served a model together with one that failed, whose connection to it this
    process still holds (GGML's server serves one client at a time)."""
    if endpoint in _failed:
        return _failed[endpoint]
    if endpoint in _held:
        return (f'this process still holds its connection to it, from a model that failed: '
                f'{_held[endpoint]}; GGML\'s server serves one client at a time')
    return None


def _reachable(endpoint: str) -> bool:
    host, port = parse_endpoint(endpoint)
    try:
        socket.create_connection((host, port), timeout=1.0).close()
        return True
    except OSError:
        return False


def call(fn: Callable[..., Any], *args: Any, endpoints: Iterable[str], timeout: float = TIMEOUT,
         what: str = 'the call') -> Any:
    """Run ``fn(*args)`` on the RPC worker and return its result (or raise its exception); it may
    talk to the servers at ``endpoints`` (``host:port``). A server gone mid-call or silent for
    ``timeout`` seconds raises :class:`~gadget.errors.RemoteError`, and its endpoint is marked failed."""
    global _worker
    if _worker is not None and threading.current_thread() is _worker.thread:
        return fn(*args)          # a call made from inside another one: already on the worker
    endpoints = list(dict.fromkeys(endpoints))
    with _lock:
        for endpoint in endpoints:
            problem = failed(endpoint)
            if problem is not None:
                raise RemoteError(f'RPC server rpc://{endpoint} is unusable from this process ({problem}); '
                                  'GGML keeps the broken connection: restart this process (or use a '
                                  'server on another port)')
        if _worker is None or _worker.lost:
            _worker = _Worker()
        worker = _worker
        job = _Job(fn, args)
        worker.jobs.put(job)
        finished = job.done.wait(timeout)
        if finished and job.parked is None:
            if job.error is not None:
                raise job.error
            return job.result
        worker.lost = True
        if not finished:
            reason = f'no answer within {timeout:g} s'
            gone = endpoints
        else:
            # GGML does not say which server; one that refuses connections now is the one gone.
            gone = [e for e in endpoints if not _reachable(e)] or endpoints
            reason = f'the connection broke during {what}: {job.parked}'
        names = ', '.join(f'rpc://{e}' for e in gone)
        for endpoint in endpoints:
            if endpoint in gone:
                _failed[endpoint] = reason
            else:
                _held.setdefault(endpoint, f'{names}: {reason}')
        raise RemoteError(f'RPC server {names}: {reason}. Whatever used it is unusable now: '
                           'close it and start again (another process, or a server on another port)')


# --- the server ---------------------------------------------------------------------------------

def serve(host: str, port: int, device: Any, n_threads: int, cache_dir: str | None = None) -> None:
    """Run GGML's RPC server (``ggml_backend_rpc_start_server``) for ``device`` (a
    ``ggml_backend_dev_t``) on ``host:port``; returns only if the server cannot start."""
    devices = ffi.new('ggml_backend_dev_t[]', [device])
    cache = cache_dir.encode() if cache_dir else ffi.NULL
    lib.ggml_backend_rpc_start_server(f'{host}:{port}'.encode(), cache, n_threads, 1, devices)
