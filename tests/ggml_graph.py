"""A minimal harness for op tests: build a graph in one host context, compute on the CPU, read back.

Deliberately independent of ``gadget.compute`` (which is tested on its own): it talks to the op
layer and ``lib`` only, so an op test failure points at the op, not at the model machinery.

Arrays go in and come out in numpy order; ``Graph.input`` reverses the shape into ggml order.
"""

from __future__ import annotations

import numpy as np

from gadget import ggml as G
from gadget.ggml import ffi, lib
from gadget.types import ggml_type_for_dtype, is_quantized, numpy_dtype, type_size, block_size


class Graph:
    """One CPU context holding inputs, the graph and its results."""

    def __init__(self, mem_size: int = 256 << 20, n_threads: int = 2):
        params = ffi.new('struct ggml_init_params *', dict(mem_size=mem_size, mem_buffer=ffi.NULL,
                                                           no_alloc=False))
        self.ctx = G.ggml_init(params[0])
        self.n_threads = n_threads

    def close(self) -> None:
        if self.ctx is not None:
            lib.ggml_free(self.ctx)
            self.ctx = None

    def __enter__(self) -> 'Graph':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def new(self, ggml_type: int, shape_np: tuple[int, ...]):
        """An uninitialised tensor of numpy shape ``shape_np`` (stored reversed, in ggml order)."""
        ne = list(reversed(shape_np)) or [1]
        return G.ggml_new_tensor(self.ctx, ggml_type, len(ne), ffi.new('int64_t[]', ne))

    def input(self, array: np.ndarray, ggml_type: int | None = None):
        """A tensor holding ``array``; with a quantized ``ggml_type`` the float32 data is quantized."""
        array = np.ascontiguousarray(array)
        if ggml_type is None:
            ggml_type = ggml_type_for_dtype(array.dtype)
        t = self.new(ggml_type, array.shape)
        if is_quantized(ggml_type):
            src = np.ascontiguousarray(array, dtype=np.float32)
            n_per_row = src.shape[-1]
            nrows = src.size // n_per_row
            lib.ggml_quantize_chunk(ggml_type, ffi.cast('float *', ffi.from_buffer(src)), t.data, 0,
                                    nrows, n_per_row, ffi.NULL)
        else:
            data = np.ascontiguousarray(array, dtype=numpy_dtype(ggml_type))
            ffi.memmove(t.data, ffi.from_buffer(data), data.nbytes)
        return t

    def compute(self, *outputs, ndim: int | None = None) -> np.ndarray | list[np.ndarray]:
        """Compute the graph ending at ``outputs``; return them as numpy arrays (numpy order).

        ``ndim`` keeps the last ``ndim`` numpy dimensions (the leading ones must be 1); by default
        the result has the tensor's ``ggml_n_dims`` dimensions.
        """
        graph = G.ggml_new_graph_custom(self.ctx, 4096, False)
        for out in outputs:
            G.ggml_build_forward_expand(graph, out)
        status = lib.ggml_graph_compute_with_ctx(self.ctx, graph, self.n_threads)
        assert status == lib.GGML_STATUS_SUCCESS, status
        arrays = [to_numpy(out, ndim) for out in outputs]
        return arrays[0] if len(arrays) == 1 else arrays


def to_numpy(tensor, ndim: int | None = None) -> np.ndarray:
    """Copy a host tensor (contiguous or not) into a numpy array in numpy order."""
    ne = [tensor.ne[i] for i in range(4)]
    nb = [tensor.nb[i] for i in range(4)]
    t = tensor.type
    if is_quantized(t):
        assert lib.ggml_is_contiguous(tensor)
        n = ne[0] * ne[1] * ne[2] * ne[3]
        raw = np.frombuffer(ffi.buffer(tensor.data, n // block_size(t) * type_size(t)), dtype=np.uint8)
        out = np.empty(n, dtype=np.float32)
        traits = lib.ggml_get_type_traits(t)
        traits.to_float(ffi.from_buffer(raw), ffi.cast('float *', ffi.from_buffer(out)), n)
        full = out.reshape(ne[::-1])
    else:
        dtype = numpy_dtype(t)
        extent = sum((ne[i] - 1) * nb[i] for i in range(4)) + dtype.itemsize
        base = np.frombuffer(ffi.buffer(tensor.data, extent), dtype=np.uint8)
        full = np.lib.stride_tricks.as_strided(base.view(dtype) if extent % dtype.itemsize == 0
                                               else base[:extent - extent % dtype.itemsize].view(dtype),
                                               shape=ne[::-1], strides=nb[::-1]).copy()
    if ndim is None:
        ndim = max(lib.ggml_n_dims(tensor), 1)
    lead = full.shape[:4 - ndim]
    assert all(d == 1 for d in lead), (full.shape, ndim)
    return full.reshape(full.shape[4 - ndim:])
