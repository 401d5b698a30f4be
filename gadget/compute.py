"""GgmlCompute: declared tensors in a backend buffer, a graph built from a model function, compute.

Memory: the declared tensors (weights and inputs) live in one backend buffer, allocated once (or,
for weights read from a GGUF file on a host backend, mapped from the file without a copy). Graph
nodes live in a separate no-alloc context, and their activations are placed by GGML's graph
allocator, whose buffer is reserved for the first graph and reused by every rebuilt graph that
fits it: rebuilding a graph of the same shape does not grow memory.

Intermediate nodes share memory (the allocator reuses a node's memory once its consumers are
done), so only the output and the nodes asked for with ``keep=`` / :meth:`get_named_node` are
preserved after :meth:`compute`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from . import rpc
from .arrays import FRAMEWORKS, get_tensor_data, set_tensor_data
from .backends import Backend, backends
from .errors import ClosedError, GadgetError, RemoteError
from .ggml import describe_tensor, ffi, lib
from . import ggml as G
from .types import TypeLike, as_ggml_type

__all__ = ['GgmlCompute', 'TensorDict', 'HostRegion', 'DEFAULT_GRAPH_SIZE']

DEFAULT_GRAPH_SIZE = 8192
# Ops that only reinterpret a tensor's memory: no backend computes them.
_LAYOUT_OPS = frozenset((lib.GGML_OP_NONE, lib.GGML_OP_VIEW, lib.GGML_OP_RESHAPE, lib.GGML_OP_PERMUTE,
                         lib.GGML_OP_TRANSPOSE))
# GGML_SCHED_MAX_BACKENDS of ggml-backend.cpp (not in a header): more aborts ggml_backend_sched_new
SCHED_MAX_BACKENDS = 16

ModelFn = Callable[[Any, Mapping[str, Any], 'TensorDict'], Any]


class TensorDict(dict):
    """``name -> ggml_tensor *``; ``tensors['a', 'b']`` returns a tuple. Missing names list the others."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            return tuple(self[k] for k in key)
        try:
            return super().__getitem__(key)
        except KeyError:
            raise KeyError(f'no tensor {key!r}; declared tensors: {", ".join(self) or "(none)"}') from None


def _new_context(n_tensors: int, extra: int = 0) -> Any:
    size = n_tensors * lib.ggml_tensor_overhead() + extra + (1 << 16)
    params = ffi.new('struct ggml_init_params *', dict(mem_size=size, mem_buffer=ffi.NULL, no_alloc=True))
    ctx = lib.ggml_init(params[0])
    if ctx == ffi.NULL:
        raise MemoryError(f'ggml_init could not allocate {size} bytes')
    return ctx


@dataclass
class HostRegion:
    """Host memory that declared tensors point into instead of getting their own (e.g. a
    memory-mapped GGUF file): its base pointer, size, and ``name -> address`` of each tensor."""
    base: Any
    size: int
    tensors: dict[str, Any] = field(default_factory=dict)


class _Handles:
    """The C handles of one GgmlCompute; freed once, in dependency order, by close or finaliser.

    Where some live on RPC servers (``endpoints``), they are freed on gadget's RPC worker; after a
    server failed (``broken``) they are left as they are: freeing them would talk to the dead
    server (see :mod:`gadget.rpc`)."""

    def __init__(self) -> None:
        self.gallocr = None
        self.sched = None
        self.ctx_graph = None
        self.buffers: list[Any] = []
        self.ctx_tensors: list[Any] = []
        self.endpoints: list[str] = []
        self.timeout = rpc.TIMEOUT
        self.broken: str | None = None

    def release(self) -> None:
        if self.broken is not None:
            return
        if not self.endpoints:
            self.free()
            return
        try:
            rpc.call(self.free, endpoints=self.endpoints, timeout=self.timeout, what='freeing')
        except RemoteError:
            pass          # the server went away: nothing left there to free

    def free_graph(self) -> None:
        if self.ctx_graph is not None:
            lib.ggml_free(self.ctx_graph)
            self.ctx_graph = None

    def free(self) -> None:
        self.free_graph()
        if self.sched is not None:
            lib.ggml_backend_sched_free(self.sched)
            self.sched = None
        if self.gallocr is not None:
            lib.ggml_gallocr_free(self.gallocr)
            self.gallocr = None
        buffers, self.buffers = self.buffers, []
        for buf in buffers:
            lib.ggml_backend_buffer_free(buf)
        contexts, self.ctx_tensors = self.ctx_tensors, []
        for ctx in contexts:
            lib.ggml_free(ctx)


def _alloc_tensors(ctx: Any, backend: Any) -> Any:
    """Every tensor of ``ctx`` without memory in one new buffer of ``backend``, zeroed."""
    buffer = lib.ggml_backend_alloc_ctx_tensors(ctx, backend)
    if buffer != ffi.NULL:
        lib.ggml_backend_buffer_clear(buffer, 0)
        lib.ggml_backend_buffer_set_usage(buffer, lib.GGML_BACKEND_BUFFER_USAGE_WEIGHTS)
    return buffer


def _set(tensor: Any, array: Any, label: str, ndim: int, offset: int | None) -> None:
    set_tensor_data(tensor, array, label=label, ndim=ndim, offset=offset)


def _sched_plan(sched: Any, plan: Any, graph: Any) -> bool:
    """Plan the scheduler's buffers for ``plan`` (``graph`` or its twin), then allocate ``graph``."""
    lib.ggml_backend_sched_reset(sched)
    if not lib.ggml_backend_sched_reserve(sched, plan):
        return False
    lib.ggml_backend_sched_reset(sched)
    return bool(lib.ggml_backend_sched_alloc_graph(sched, graph))


def _gallocr_plan(gallocr: Any, graph: Any) -> bool:
    return bool(G.ggml_gallocr_reserve(gallocr, graph)) and bool(G.ggml_gallocr_alloc_graph(gallocr, graph))


class GgmlCompute:
    """Tensors, a graph and a backend to compute it on.

    Arguments:
        params: ``name -> value`` hyper-parameters, handed to the model function.
        tensors: ``name -> (type, shape)`` with shapes in ggml order (``ne[0]`` first), e.g.
            ``{'weight': ('F32', (256, 32))}`` for a numpy ``(32, 256)`` array.
        model: ``model(ctx, params, tensors) -> output tensor`` (or a tuple of them), building the
            graph with ``gadget.ggml`` ops in ``ctx``. May be given later to :meth:`create_graph`.
        backend: ``'cpu'`` (default), ``'cuda'``, ``'cuda:N'`` or ``'rpc://host:port'``, or a
            :class:`Backend`; or a list of them (e.g. ``['rpc://10.0.0.2:50052',
            'rpc://10.0.0.3:50052']``): the tensors ``placement`` names live on those backends, the
            rest (inputs, and weights placed nowhere) on the CPU (added last if the list has none),
            and GGML's scheduler runs each op where its weights are and moves the activations
            between them. A list of one is that backend alone. (An RPC server alone runs through
            the scheduler too, every tensor on it: the server then recomputes graphs by id.)
        placement: with a list of backends, ``tensor name -> index`` into that list.
        framework: ``'numpy'`` or ``'torch'``: what outputs are returned as.
        n_threads: CPU threads (default: the cores available to this process).
        graph_size: maximum number of nodes in the graph.
        keep: names of intermediate nodes to preserve for :meth:`get_named_node`.
        mapped: host memory (e.g. a memory-mapped GGUF file) that the tensors it lists point into
            instead of getting memory of their own (see :class:`HostRegion`).
        offload: other backends (names or :class:`Backend`), in order of preference, that GGML's
            scheduler (``ggml_backend_sched``) may run ops on, e.g. ``['blas']``; ``backend``, which
            must then be the CPU, runs the rest, and holds the tensors. Empty (default): the graph
            runs on ``backend`` directly, without a scheduler.
        scheduler: run through GGML's scheduler even with nothing to offload (default: only when
            ``offload`` is given).
        blas: offload matrix products of at least 32 rows on each side to GGML's BLAS backend
            (OpenBLAS's sgemm, after converting quantized or F16 weights to F32; the CPU backend
            runs the rest), in a build with it (the default build). Default None: on for the CPU
            backend in a build with BLAS (it wins on prefill and batched embeddings, see
            benchmarks/RESULTS.md), off otherwise. A graph in which BLAS would take no node (a
            decode step: one row) runs on the CPU backend directly, without the scheduler.
    """

    def __init__(self, params: Mapping[str, Any], tensors: Mapping[str, tuple[TypeLike, Sequence[int]]],
                 model: ModelFn | None = None, backend: str | Backend = 'cpu', framework: str = 'numpy',
                 n_threads: int | None = None, graph_size: int = DEFAULT_GRAPH_SIZE,
                 keep: Iterable[str] = (), mapped: HostRegion | None = None,
                 offload: Sequence[str | Backend] = (), scheduler: bool | None = None,
                 blas: bool | None = None, placement: Mapping[str, int] | None = None):
        if framework not in FRAMEWORKS:
            raise ValueError(f'framework must be one of {FRAMEWORKS}, got {framework!r}')
        self.params = dict(params)
        self.framework = framework
        self.graph_size = graph_size
        self.keep = set(keep)
        self._handles = _Handles()
        self._finalizer = weakref.finalize(self, self._handles.release)
        #: Held for the whole of every call that touches the graph or the tensors, and by close():
        #: calls from several threads are serialised, and close() waits for a running compute.
        self.lock = threading.RLock()
        self._closed = False
        #: The backends the scheduler may offload ops to, before ``backend`` (owned if made here).
        self.offload: list[Backend] = []
        self._owned_offload: list[Backend] = []
        #: With a list of backends: that list, in its order (``placement`` indexes it); else empty.
        self.placed: list[Backend] = []
        self._placement: dict[str, int] = {}
        listed = list(backend) if isinstance(backend, (list, tuple)) else None
        if listed is not None and len(listed) == 1:
            backend, listed = listed[0], None
        if listed is None and placement:
            raise ValueError('placement= needs a list of backends (backend=[...])')
        self._owns_backend = listed is not None or not isinstance(backend, Backend)
        self.backend: Backend
        try:
            if listed is not None:
                self._place_backends(listed, n_threads, placement or {}, set(tensors))
            elif isinstance(backend, Backend):
                self.backend = backend
                if n_threads is not None:
                    self.backend.set_n_threads(n_threads)
            else:
                self.backend = Backend(backend, n_threads)
            if not self.placed and self.backend.remote:
                # An RPC server alone runs through the scheduler too, every tensor placed on it: the
                # scheduler gives each graph it splits an id, and a server recomputes a graph it
                # has by that id instead of receiving it again on every call (~0.3 KB a node).
                remote, self.placed, self._placement = self.backend, [self.backend], dict.fromkeys(tensors, 0)
                if self._owns_backend:
                    self._owned_offload = [remote]
                self._owns_backend = True
                self.backend = Backend('cpu', n_threads)
        except BaseException:
            self.close()
            raise
        used = [*self.placed, self.backend]
        self._handles.endpoints = [b.endpoint for b in used if b.endpoint is not None]
        self._handles.timeout = max([b.timeout for b in used if b.remote], default=rpc.TIMEOUT)
        self.tensors = TensorDict()
        self._ndim: dict[str, int] = {}
        self._nbytes: dict[str, int] = {}
        self.compute_seconds = 0.0     # time spent in GGML's compute by run() (for profiling)
        self.graph = None
        self.outputs: tuple[Any, ...] = ()
        self.model = model
        # Whether the current graph runs through the scheduler (see create_graph), and whether
        # every graph must (scheduler=True).
        self._graph_on_sched = False
        self._sched_always = bool(scheduler)
        self._sched_backends: list[Backend] = []
        try:
            offload = [offload] if isinstance(offload, (str, Backend)) else list(offload)
            if blas not in (True, False, None):
                raise ValueError(f'blas must be True, False or None (on where the build has it), '
                                 f'got {blas!r}')
            if blas is None:
                blas = self.backend.kind == 'cpu' and not self.placed and 'blas' in backends()
            if self.placed:
                offload = [b for b in self.placed if b is not self.backend] + offload
            if blas and 'blas' not in [b if isinstance(b, str) else b.name for b in offload]:
                offload.append('blas')
            self._create_scheduler(offload, n_threads, scheduler)
            self._create_tensors(tensors, mapped)
            if model is not None:
                self.create_graph(model)
        except BaseException:
            self.close()
            raise

    # --- several backends ------------------------------------------------------------------------

    def _place_backends(self, listed: list[str | Backend], n_threads: int | None,
                        placement: Mapping[str, int], names: set[str]) -> None:
        made: list[Backend] = []
        try:
            for item in listed:
                b = item if isinstance(item, Backend) else Backend(item, n_threads)
                if b is not item:
                    made.append(b)
                self.placed.append(b)
        except BaseException:
            for b in made:
                b.close()
            raise
        kinds = [b.name for b in self.placed]
        cpus = [b for b in self.placed if b.kind == 'cpu']
        self._owned_offload = [b for b in made if b.kind != 'cpu']
        if cpus:
            self.backend = cpus[0]
            self._owns_backend = cpus[0] in made
        else:
            self.backend = Backend('cpu', n_threads)
        if len(set(id(b) for b in self.placed)) != len(self.placed) or len(set(kinds)) != len(kinds):
            raise ValueError(f'backend=[...] lists each backend once, got {kinds}')
        if 'blas' in kinds:
            raise ValueError('backend=[...]: BLAS holds no tensors; pass blas=True to offload matrix '
                             'products to it')
        for name, index in placement.items():
            if name not in names:
                raise KeyError(f'placement names tensor {name!r}, which is not declared')
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.placed):
                raise ValueError(f'placement of {name!r}: {index!r} is not an index into backend '
                                 f'{kinds} (0 to {len(self.placed) - 1})')
        self._placement = dict(placement)

    @property
    def remote(self) -> bool:
        """Whether some of this compute's backends are RPC servers."""
        return bool(self._handles.endpoints)

    @property
    def custom_ops(self) -> bool:
        """Whether graphs may use gadget's own CPU ops (``ggml_map_custom_*``, which call C functions
        of this process): the main backend is this machine's CPU, and no RPC server takes part
        (GGML's RPC backend accepts every op, and a server cannot call this process's functions).
        A GPU backend that does not run them leaves them to the CPU."""
        return self.backend.kind == 'cpu' and not self.remote

    def _c(self, fn: Callable[..., Any], *args: Any, what: str = 'the call') -> Any:
        """``fn(*args)``, which may talk to this compute's RPC servers: on gadget's RPC worker (a
        server gone or silent raises RemoteError, and this compute is unusable from then on)."""
        h = self._handles
        if not h.endpoints:
            return fn(*args)
        if h.broken is not None:
            raise RemoteError(f'{type(self).__name__} is unusable since an RPC server failed ({h.broken}): '
                              'close it and make a new one')
        try:
            return rpc.call(fn, *args, endpoints=h.endpoints, timeout=h.timeout, what=what)
        except RemoteError as exc:
            h.broken = str(exc)
            raise

    # --- the scheduler --------------------------------------------------------------------------

    def _create_scheduler(self, offload: Sequence[str | Backend], n_threads: int | None,
                          scheduler: bool | None) -> None:
        if scheduler is False and offload:
            raise ValueError(f'offload={list(offload)!r} needs the scheduler: drop scheduler=False')
        if not offload and not scheduler:
            return
        if self.backend.kind != 'cpu':
            raise ValueError(f'offload= needs the CPU as the main backend (GGML\'s scheduler runs what '
                             f'no other backend takes on the CPU), got backend {self.backend.name!r}')
        for item in offload:
            if isinstance(item, Backend):
                self.offload.append(item)
            else:
                made = Backend(item, n_threads)
                self._owned_offload.append(made)
                self.offload.append(made)
        names = [b.name for b in self.offload]
        if 'cpu' in names or len(set(names)) != len(names):
            raise ValueError(f'offload= lists other backends than the main one, each once; got {names}')
        if len(self.offload) + 1 > SCHED_MAX_BACKENDS:
            raise ValueError(f'GGML schedules at most {SCHED_MAX_BACKENDS} backends, got '
                             f'{len(self.offload) + 1}')
        order = [b.handle for b in self.offload] + [self.backend.handle]
        # Room for every node and leaf of a full graph, plus the copies at split boundaries.
        sched = lib.ggml_backend_sched_new(ffi.new('ggml_backend_t[]', order), ffi.NULL, len(order),
                                           2 * self.graph_size, False, True)
        if sched == ffi.NULL:
            raise GadgetError(f'could not create GGML\'s scheduler over {names + ["cpu"]}')
        self._handles.sched = sched
        # Every backend the scheduler may use, in one global order: a compute locks them all in
        # that order, so no two computes can wait on each other.
        self._sched_backends = sorted({id(b): b for b in (self.backend, *self.offload)}.values(), key=id)

    @property
    def scheduled(self) -> bool:
        """Whether graphs can run through GGML's scheduler (``offload``, ``blas`` or
        ``scheduler=True``); :attr:`graph_scheduled` says whether the current one does."""
        return self._handles.sched is not None

    @property
    def graph_scheduled(self) -> bool:
        """Whether the current graph runs through the scheduler: False when no offload backend
        would take any of its nodes (all of them host backends such as BLAS), unless
        ``scheduler=True``; such a graph runs on the main backend directly."""
        self._require_graph()
        return self._graph_on_sched

    def _offloads_some_node(self, graph: Any) -> bool:
        """Whether an offload backend would take a node of ``graph``. Backends with memory of
        their own (a GPU) may hold weights, so the scheduler always decides for them; a host backend
        (BLAS) takes a node only where it supports the op."""
        if self._sched_always or any(not b.is_host for b in self.offload):
            return True
        if not self._host_offload():
            return False
        for i in range(lib.ggml_graph_n_nodes(graph)):
            node = lib.ggml_graph_node(graph, i)
            if node.op in _LAYOUT_OPS:
                continue      # views and reshapes: every backend "supports" them, none computes them
            if any(lib.ggml_backend_supports_op(b.handle, node) for b in self.offload):
                return True
        return False

    def _host_offload(self) -> bool:
        """Whether the graph being built may offload nodes to host backends (BLAS); a subclass
        says no for graphs whose rows must each be computed as a row alone would be."""
        return True

    def _graph_compute(self, graph: Any) -> int:
        # The backends' locks are taken here, by the calling thread; only GGML's call itself runs
        # on the RPC worker when a server takes part (see _c).
        if not self._graph_on_sched:
            with self.backend.lock:
                return self._c(lib.ggml_backend_graph_compute, self.backend.handle, graph,
                               what='a graph compute')
        with contextlib.ExitStack() as held:
            for b in self._sched_backends:
                held.enter_context(b.lock)
            return self._c(lib.ggml_backend_sched_graph_compute, self._handles.sched, graph,
                           what='a graph compute')

    def node_backends(self) -> dict[str, str]:
        """The backend (GGML's name: ``'CPU'``, ``'BLAS'``, ``'CUDA0'``...) each named node of the
        current graph runs on: the scheduler's assignment, or the one backend without it."""
        graph = self._require_graph()
        sched = self._handles.sched if self._graph_on_sched else None
        only = ffi.string(lib.ggml_backend_name(self.backend.handle)).decode()
        out = {}
        for i in range(lib.ggml_graph_n_nodes(graph)):
            node = lib.ggml_graph_node(graph, i)
            name = ffi.string(node.name).decode()
            if not name:
                continue
            if sched is None:
                out[name] = only
            else:
                b = lib.ggml_backend_sched_get_tensor_backend(sched, node)
                out[name] = ffi.string(lib.ggml_backend_name(b)).decode() if b != ffi.NULL else '?'
        return out

    # --- tensors ------------------------------------------------------------------------------

    def _create_tensors(self, specs: Mapping[str, tuple[TypeLike, Sequence[int]]],
                        mapped: HostRegion | None) -> None:
        h = self._handles
        # One context of tensors per backend that holds some (placement), the main backend first.
        homes = [self.backend] + [b for b in self.placed if b is not self.backend]
        home_of = {name: self.placed[i] for name, i in self._placement.items()}
        contexts = {}
        for b in homes:
            contexts[id(b)] = _new_context(len(specs))
            h.ctx_tensors.append(contexts[id(b)])
        for name, spec in specs.items():
            try:
                ttype, shape = spec
            except (TypeError, ValueError):
                raise ValueError(f'tensor {name!r}: expected (type, shape), got {spec!r}') from None
            ttype = as_ggml_type(ttype)
            shape = tuple(int(d) for d in shape)
            if not 1 <= len(shape) <= lib.GGML_MAX_DIMS or any(d < 0 for d in shape):
                raise ValueError(f'tensor {name!r}: shape {list(shape)} (ggml order) must have 1 to '
                                 f'{lib.GGML_MAX_DIMS} non-negative dimensions')
            ctx = contexts[id(home_of.get(name, self.backend))]
            t = G.ggml_new_tensor(ctx, ttype, len(shape), ffi.new('int64_t[]', shape), name=name)
            self.tensors[name] = t
            self._ndim[name] = len(shape)
            self._nbytes[name] = lib.ggml_nbytes(t)
        # Tensors mapped from a file on a host backend point into the mapping: no copy at all.
        if mapped is not None and any(home_of.get(n, self.backend) is not self.backend
                                      for n in mapped.tensors):
            raise ValueError('mapped= tensors must live on the main (host) backend')
        if mapped is not None and mapped.tensors:
            buffer = lib.ggml_backend_cpu_buffer_from_ptr(mapped.base, mapped.size)
            if buffer == ffi.NULL:
                raise GadgetError('could not wrap the mapped host memory in a buffer')
            h.buffers.append(buffer)
            for tname, address in mapped.tensors.items():
                t = self.tensors[tname]
                status = lib.ggml_backend_tensor_alloc(buffer, t, address)
                if status != lib.GGML_STATUS_SUCCESS:
                    raise GadgetError(f'could not place tensor {tname!r} in the mapped file ({status})')
        for b in homes:
            if any(t.data == ffi.NULL for name, t in self.tensors.items()
                   if home_of.get(name, self.backend) is b):
                buffer = self._c(_alloc_tensors, contexts[id(b)], b.handle,
                                 what=f'allocating tensors on {b.name}')
                if buffer == ffi.NULL:
                    raise MemoryError(f'could not allocate the tensors on backend {b.name!r}')
                h.buffers.append(buffer)

    def _tensor(self, name: str) -> Any:
        return self.tensors[name]

    def set_input(self, name: str, array: Any, offset: int | None = None) -> None:
        """Copy ``array`` (numpy order, numpy array or torch tensor) into tensor ``name``.

        ``offset`` writes from that index of the outermost ggml dimension (numpy's first axis), as
        in the original gadget; float32 data go into F16/BF16/quantized tensors converted.
        """
        self._check_open()
        with self.lock:
            self._c(_set, self._tensor(name), array, f'tensor {name!r}', self._ndim[name], offset,
                    what=f'setting tensor {name!r}')

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (calls that use the tensors or the graph then raise
        ClosedError)."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f'{type(self).__name__} is closed: create a new one')

    def write(self, name: str, array: Any) -> None:
        """The per-call fast path: copy the bytes of ``array`` (a C-contiguous numpy array of the
        tensor's own element type, at most its size) to the start of tensor ``name``. Only the size
        is checked (GGML would abort on an overflow); for anything else use :meth:`set_input`."""
        self._check_open()
        tensor = self.tensors[name]
        nbytes = array.nbytes
        if nbytes > self._nbytes[name]:
            raise ValueError(f'tensor {name!r}: {nbytes} bytes do not fit in its {self._nbytes[name]}')
        self._c(lib.ggml_backend_tensor_set, tensor, ffi.from_buffer(array), 0, nbytes)

    def run(self) -> None:
        """Compute the graph and leave the outputs in the backend (read them with :meth:`read`)."""
        self._check_open()
        started = time.perf_counter()
        with self.lock:
            status = self._graph_compute(self._require_graph())
        self.compute_seconds += time.perf_counter() - started   # GGML's share of the wall time
        if status != lib.GGML_STATUS_SUCCESS:
            raise GadgetError(f'graph compute failed on {self.backend.name!r}: status {status}')

    def read(self, out: Any, index: int = 0) -> Any:
        """Copy the first ``out.nbytes`` bytes of output ``index`` into the preallocated numpy array
        ``out`` (C-contiguous, the output's element type); return ``out``."""
        self._check_open()
        tensor = self.outputs[index]
        if out.nbytes > lib.ggml_nbytes(tensor):
            raise ValueError(f'output {index}: {out.nbytes} bytes asked of its {lib.ggml_nbytes(tensor)}')
        self._c(lib.ggml_backend_tensor_get, tensor, ffi.from_buffer(out), 0, out.nbytes,
                what='reading the output')
        return out

    def get_input(self, name: str) -> Any:
        """Tensor ``name`` as an array in numpy order (quantized tensors dequantized to float32)."""
        self._check_open()
        with self.lock:
            return self._get(self._tensor(name), ndim=self._ndim[name], label=f'tensor {name!r}')

    # --- graph --------------------------------------------------------------------------------

    @property
    def ctx_graph(self) -> Any:
        """The graph context of the graph being built (valid inside the model function)."""
        return self._handles.ctx_graph

    def create_graph(self, model: ModelFn | None = None) -> None:
        """Build the graph from ``model`` (default: the one given before) and allocate its memory."""
        self._check_open()
        if model is not None:
            self.model = model
        if self.model is None and type(self)._build is GgmlCompute._build:
            raise ValueError('no model function: pass model= to GgmlCompute or to create_graph')
        self.destroy_graph()
        h = self._handles
        h.ctx_graph = self._new_graph_context()
        self.graph, self.outputs = self._build_graph(h.ctx_graph)
        self._graph_on_sched = h.sched is not None and self._offloads_some_node(self.graph)
        if self._graph_on_sched:
            # The scheduler assigns each node a backend, splits the graph where that changes and
            # allocates the activations (its buffers grow when a new graph needs more).
            # Plan anew (reserve) for every new graph, for the reason below: the scheduler's allocator
            # too would keep the old plan for a graph of the same size. Planning splits the graph and
            # points each node that reads a tensor of another backend, one the node's backend cannot
            # read (not host memory), at the scheduler's copy of it, so the graph it plans cannot be
            # split again by the allocation: plan on a twin of the graph then, built the same way.
            twin_ctx = None
            try:
                if any(not b.is_host for b in self.offload):
                    twin_ctx = self._new_graph_context()
                    saved, h.ctx_graph = h.ctx_graph, twin_ctx     # what ctx_graph gives the model
                    try:
                        plan, _ = self._build_graph(twin_ctx)
                    finally:
                        h.ctx_graph = saved
                else:
                    plan = self.graph
                ok = self._c(_sched_plan, h.sched, plan, self.graph, what='allocating the graph')
            finally:
                if twin_ctx is not None:
                    lib.ggml_free(twin_ctx)
            if not ok:
                raise MemoryError(f'could not allocate the graph over {[b.name for b in self.offload]} '
                                  f'and {self.backend.name!r}')
            return
        if h.gallocr is None:
            h.gallocr = lib.ggml_gallocr_new(self.backend.buffer_type)
        # Plan anew for every new graph: the allocator would otherwise reuse the previous plan for a
        # graph of the same size, even where the set of kept (output) nodes has changed. The buffer
        # only grows when the new plan needs more than it has.
        if not self._c(_gallocr_plan, h.gallocr, self.graph, what='allocating the graph'):
            raise MemoryError(f'could not allocate the graph on backend {self.backend.name!r}')

    def _new_graph_context(self) -> Any:
        return _new_context(self.graph_size, lib.ggml_graph_overhead_custom(self.graph_size, False))

    def _build_graph(self, ctx: Any) -> tuple[Any, tuple[Any, ...]]:
        """The model's graph in ``ctx``, its outputs and kept nodes marked: (graph, outputs)."""
        result = self._build(ctx)
        outputs = result if isinstance(result, (tuple, list)) else (result,)
        for out in outputs:
            if not isinstance(out, ffi.CData) or ffi.typeof(out) is not ffi.typeof('struct ggml_tensor *') \
                    or out == ffi.NULL:
                raise TypeError(f'the model function must return a ggml tensor (or a tuple of them), '
                                f'got {out!r}')
        graph = G.ggml_new_graph_custom(ctx, self.graph_size, False)
        for out in outputs:
            lib.ggml_set_output(out)
            G.ggml_build_forward_expand(graph, out)
        for name in self.keep:
            node = lib.ggml_graph_get_tensor(graph, name.encode())
            if node == ffi.NULL:
                names = [ffi.string(lib.ggml_graph_node(graph, i).name).decode()
                         for i in range(lib.ggml_graph_n_nodes(graph))]
                raise KeyError(f'keep: no node named {name!r} in the graph; named nodes: '
                               f'{", ".join(n for n in names if n) or "(none)"}')
            lib.ggml_set_output(node)
        return graph, tuple(outputs)

    def _build(self, ctx: Any) -> Any:
        assert self.model is not None, 'create_graph refuses a missing model function'
        return self.model(ctx, self.params, self.tensors)

    def destroy_graph(self) -> None:
        """Free the graph (its nodes); the tensors and the allocator's buffer stay."""
        self._handles.free_graph()
        self.graph = None
        self.outputs = ()

    def _require_graph(self) -> Any:
        self._check_open()
        if self.graph is None:
            raise RuntimeError('no graph: call create_graph(model) first')
        return self.graph

    def n_nodes(self) -> int:
        """The number of nodes of the current graph."""
        return lib.ggml_graph_n_nodes(self._require_graph())

    def named_nodes(self) -> list[str]:
        """The names of the current graph's named nodes, in graph order."""
        graph = self._require_graph()
        names = []
        for i in range(lib.ggml_graph_n_nodes(graph)):
            name = ffi.string(lib.ggml_graph_node(graph, i).name).decode()
            if name:
                names.append(name)
        return names

    def graph_dot(self, path: str | os.PathLike) -> Path:
        """Write the current graph in Graphviz's dot language with GGML's own dump
        (``ggml_graph_dump_dot``): one box per node with its name, type, shape (ggml order) and op,
        an edge per source. Render it with ``dot -Tsvg graph.dot -o graph.svg`` (or ``gadget graph``).
        The file is written whole or not at all; returns its path."""
        with self.lock:
            graph = self._require_graph()
            target = Path(path)
            # GGML asserts that it could open the file: open one here first, so that a bad path is an
            # OSError naming it, and rename it into place only once GGML has written it.
            try:
                fd, tmp = tempfile.mkstemp(prefix=f'.{target.name}.', suffix='.tmp', dir=target.parent)
            except OSError as exc:
                raise type(exc)(exc.errno,
                                f'cannot write the graph to {str(target)!r}: {exc.strerror}') from None
            os.close(fd)
            try:
                G.ggml_graph_dump_dot(graph, graph, tmp)
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o666 & ~umask)        # as open() would have made it (mkstemp: 0600)
                os.replace(tmp, target)
            except BaseException:
                os.unlink(tmp)
                raise
        return target

    def compute(self) -> Any:
        """Compute the graph; return the output (or a tuple of outputs) in numpy order."""
        self._check_open()
        with self.lock:
            graph = self._require_graph()
            status = self._graph_compute(graph)
            if status != lib.GGML_STATUS_SUCCESS:
                raise GadgetError(f'graph compute failed on {self.backend.name!r}: status {status}')
            results = tuple(self._get(out) for out in self.outputs)
        return results[0] if len(results) == 1 else results

    def __call__(self, **values: Any) -> Any:
        """Set inputs by name, compute, return the output(s)."""
        with self.lock:
            for name, value in values.items():
                self.set_input(name, value)
            return self.compute()

    def get_node(self, index: int) -> Any:
        """Graph node ``index`` (negative counts from the end) as an array, after compute."""
        graph = self._require_graph()
        n = lib.ggml_graph_n_nodes(graph)
        if not -n <= index < n:
            raise IndexError(f'node index {index} out of range for a graph of {n} nodes')
        node = lib.ggml_graph_node(graph, index)
        if index not in (-1, n - 1) and not node.flags & lib.GGML_TENSOR_FLAG_OUTPUT:
            raise ValueError(f'node {index} ({ffi.string(node.name).decode() or "unnamed"}) is an '
                             'intermediate whose memory is reused; name it and use get_named_node')
        return self._get(node)

    def get_named_node(self, name: str) -> Any:
        """The node named ``name`` as an array. An intermediate node not kept yet is marked to be
        kept, and the graph is rebuilt and recomputed once (the inputs are still set)."""
        graph = self._require_graph()
        node = lib.ggml_graph_get_tensor(graph, name.encode())
        if node == ffi.NULL:
            raise KeyError(f'no node named {name!r}; '
                           f'named nodes: {", ".join(self.named_nodes()) or "(none)"}')
        if not node.flags & lib.GGML_TENSOR_FLAG_OUTPUT:
            self.keep.add(name)
            self.create_graph()
            self.compute()
            node = lib.ggml_graph_get_tensor(self.graph, name.encode())
        return self._get(node)

    def _get(self, tensor: Any, ndim: int | None = None, label: str = 'tensor') -> Any:
        return self._c(get_tensor_data, tensor, self.framework, ndim, label, self._torch_device,
                       what=f'reading {label}')

    # --- settings, lifetime, display ------------------------------------------------------------

    @property
    def _torch_device(self) -> str | None:
        """Where torch outputs go: the GPU of a CUDA backend (device to device), else the CPU."""
        if self.framework == 'torch' and self.backend.kind == 'cuda':
            return f'cuda:{self.backend.index}'
        return None

    @property
    def n_threads(self) -> int:
        """CPU threads the backend computes with."""
        return self.backend.n_threads

    @n_threads.setter
    def n_threads(self, value: int) -> None:
        """CPU threads the backend computes with."""
        self.backend.set_n_threads(value)

    def graph_memory(self) -> int:
        """Bytes of the graph allocator's buffer (activations)."""
        h = self._handles
        total = lib.ggml_gallocr_get_buffer_size(h.gallocr, 0) if h.gallocr is not None else 0
        if h.sched is not None:
            total += sum(lib.ggml_backend_sched_get_buffer_size(h.sched, b.handle)
                         for b in [*self.offload, self.backend])
        return total

    def close(self) -> None:
        """Free the graph, the buffers, the contexts and (if created here) the backend. Idempotent;
        waits for a compute running in another thread to finish first."""
        with self.lock:
            self._closed = True
            self.graph = None
            self.outputs = ()
            self.tensors = TensorDict()
            self._finalizer()
            if self._owns_backend and getattr(self, 'backend', None) is not None:
                self.backend.close()
            for b in getattr(self, '_owned_offload', ()):
                b.close()

    def __enter__(self) -> 'GgmlCompute':
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        lines = [f'{type(self).__name__}(backend={self.backend.name!r}, framework={self.framework!r})']
        lines.append('  tensors (ggml order):')
        for name, t in self.tensors.items():
            lines.append(f'    {name}: {describe_tensor(t)}')
        if self.graph is not None:
            n = lib.ggml_graph_n_nodes(self.graph)
            lines.append(f'  graph: {n} nodes')
            shown = list(range(min(n, 8))) + ([*range(max(8, n - 4), n)] if n > 8 else [])
            for i in shown:
                if i == 8 and n > 12:
                    lines.append('    ...')
                node = lib.ggml_graph_node(self.graph, i)
                op = ffi.string(lib.ggml_op_desc(node)).decode()
                name = ffi.string(node.name).decode() or '-'
                lines.append(f'    {i}: {name} = {op} {describe_tensor(node)}')
        return '\n'.join(lines)
