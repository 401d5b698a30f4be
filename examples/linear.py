"""A linear layer, y = x @ W.T + b, built from GGML ops and checked against numpy.

Run: python examples/linear.py
"""

import numpy as np

from gadget import ggml as G
from gadget.ggml import ffi, lib

rng = np.random.default_rng(0)
input_dim, output_dim, batch_size = 256, 32, 16
weight = rng.standard_normal((output_dim, input_dim)).astype(np.float32)   # numpy order
bias = rng.standard_normal(output_dim).astype(np.float32)
inputs = rng.standard_normal((batch_size, input_dim)).astype(np.float32)

params = ffi.new('struct ggml_init_params *', dict(mem_size=16 << 20, mem_buffer=ffi.NULL, no_alloc=False))
ctx = G.ggml_init(params[0])
try:
    # GGML shapes are reversed relative to numpy: ne[0] is the row length.
    w = G.ggml_new_tensor_2d(ctx, G.GGML_TYPE_F32, input_dim, output_dim)
    b = G.ggml_new_tensor_1d(ctx, G.GGML_TYPE_F32, output_dim)
    x = G.ggml_new_tensor_2d(ctx, G.GGML_TYPE_F32, input_dim, batch_size)
    for tensor, array in ((w, weight), (b, bias), (x, inputs)):
        ffi.memmove(tensor.data, ffi.from_buffer(array), array.nbytes)

    # ggml_mul_mat(ctx, w, x) is x @ w.T in numpy terms: (output_dim, batch_size) in ggml order.
    y = G.ggml_add(ctx, G.ggml_mul_mat(ctx, w, x), b, name='y')
    graph = G.ggml_new_graph(ctx)
    G.ggml_build_forward_expand(graph, y)
    lib.ggml_graph_compute_with_ctx(ctx, graph, 2)

    result = np.frombuffer(ffi.buffer(y.data, lib.ggml_nbytes(y)), dtype=np.float32)
    result = result.reshape(batch_size, output_dim)
    expected = inputs @ weight.T + bias
    print(f'y = x @ W.T + b: {result.shape}, max |gadget - numpy| = {np.abs(result - expected).max():.2e}')

    # Bad shapes raise a Python exception instead of aborting the interpreter.
    try:
        G.ggml_mul_mat(ctx, w, G.ggml_new_tensor_2d(ctx, G.GGML_TYPE_F32, input_dim + 1, batch_size))
    except ValueError as error:
        print(f'mismatched shapes: {error}')
finally:
    lib.ggml_free(ctx)
