"""Op-layer overhead and matmul throughput.

Prints:
* µs per op call while building a 1,000-node graph: the bare ``lib`` call, the guarded
  ``gadget.ggml`` call (its validation is the C guard), and the same with ``name=``;
* GFLOPS of a 1024×1024 × 1024×1024 matmul on the CPU for F32 / F16 / BF16 / Q8_0 / Q4_0 weights
  (F32 activations), next to numpy's F32 matmul, all with the same number of threads.

Usage: ``python benchmarks/bench_ops.py [--threads 2] [--repeats 15]``. Medians of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from gadget import ggml as G
from gadget.ggml import ffi, lib

N_NODES = 1000


def _context(mem: int, no_alloc: bool):
    return G.ggml_init(ffi.new('struct ggml_init_params *',
                               dict(mem_size=mem, mem_buffer=ffi.NULL, no_alloc=no_alloc))[0])


def op_call_overhead(repeats: int) -> dict[str, float]:
    """Median µs per call of ggml_add while chaining N_NODES nodes (a new context per run, untimed)."""
    raw, guarded = lib.ggml_add, G.ggml_add
    results = {}
    # The loops are written out (no helper call per op) so that only the op call is timed.
    for label in ('lib (bare C call)', 'gadget.ggml (guarded)', 'gadget.ggml with name='):
        times = []
        for _ in range(repeats):
            ctx = _context(N_NODES * 512 + (1 << 20), no_alloc=True)
            x = G.ggml_new_tensor_2d(ctx, G.GGML_TYPE_F32, 64, 8)
            y = G.ggml_new_tensor_2d(ctx, G.GGML_TYPE_F32, 64, 1)
            if label == 'lib (bare C call)':
                start = time.perf_counter()
                for _ in range(N_NODES):
                    x = raw(ctx, x, y)
            elif label == 'gadget.ggml (guarded)':
                start = time.perf_counter()
                for _ in range(N_NODES):
                    x = guarded(ctx, x, y)
            else:
                start = time.perf_counter()
                for _ in range(N_NODES):
                    x = guarded(ctx, x, y, name='h')
            times.append((time.perf_counter() - start) / N_NODES * 1e6)
            lib.ggml_free(ctx)
        results[label] = statistics.median(times)
    return results


def ggml_matmul_gflops(weight_type: int, n: int, threads: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, n)).astype(np.float32)
    x = rng.standard_normal((n, n)).astype(np.float32)
    ctx = _context(4 * n * n * 4 + (16 << 20), no_alloc=False)
    tw = G.ggml_new_tensor_2d(ctx, weight_type, n, n)
    tx = G.ggml_new_tensor_2d(ctx, G.GGML_TYPE_F32, n, n)
    if weight_type == G.GGML_TYPE_F32:
        ffi.memmove(tw.data, ffi.from_buffer(w), w.nbytes)
    elif weight_type in (G.GGML_TYPE_F16, G.GGML_TYPE_BF16):
        from gadget.types import numpy_dtype
        wc = w.astype(numpy_dtype(weight_type))
        ffi.memmove(tw.data, ffi.from_buffer(wc), wc.nbytes)
    else:
        lib.ggml_quantize_chunk(weight_type, ffi.cast('float *', ffi.from_buffer(w)), tw.data, 0, n, n,
                                ffi.NULL)
    ffi.memmove(tx.data, ffi.from_buffer(x), x.nbytes)
    out = G.ggml_mul_mat(ctx, tw, tx)
    graph = G.ggml_new_graph(ctx)
    G.ggml_build_forward_expand(graph, out)
    plan = lib.ggml_graph_plan(graph, threads, ffi.NULL)
    work = ffi.new('uint8_t[]', max(plan.work_size, 1))
    plan.work_data = work
    cplan = ffi.new('struct ggml_cplan *', plan)
    lib.ggml_graph_compute(graph, cplan)  # warm-up (and the one-time weight repacking, if any)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        lib.ggml_graph_compute(graph, cplan)
        times.append(time.perf_counter() - start)
    lib.ggml_free(ctx)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def numpy_matmul_gflops(n: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=15)
    parser.add_argument('--size', type=int, default=1024)
    args = parser.parse_args()

    print(f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; '
          f'threads={args.threads}; OPENBLAS_CORETYPE={os.environ.get("OPENBLAS_CORETYPE", "unset")}')
    print(f'\nop call while building a {N_NODES}-node graph (median of {args.repeats} runs, µs/call):')
    for label, us in op_call_overhead(args.repeats).items():
        print(f'  {label:<26} {us:6.3f}')

    print(f'\n{args.size}x{args.size} matmul, {args.threads} threads (median of {args.repeats}, GFLOPS):')
    types = [('F32', G.GGML_TYPE_F32), ('F16', G.GGML_TYPE_F16), ('BF16', G.GGML_TYPE_BF16),
             ('Q8_0', G.GGML_TYPE_Q8_0), ('Q4_0', G.GGML_TYPE_Q4_0)]
    for label, t in types:
        print(f'  ggml {label:<5} {ggml_matmul_gflops(t, args.size, args.threads, args.repeats):7.1f}')
    print(f'  numpy F32  {numpy_matmul_gflops(args.size, args.repeats):7.1f}')


if __name__ == '__main__':
    main()
