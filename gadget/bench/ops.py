"""Op-layer overhead and matmul throughput.

* µs per op call while building a 1,000-node graph: the bare ``lib`` call, the guarded
  ``gadget.ggml`` call (its validation is the C guard), and the same with ``name=``;
* GFLOPS of an n×n × n×n matmul on the CPU for F32 / F16 / BF16 / Q8_0 / Q4_0 weights (F32
  activations), next to numpy's F32 matmul (in a process of its own, its BLAS limited to the same
  number of threads).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .. import ggml as G
from ..ggml import ffi, lib
from .common import (find_peer, in_subprocess, markdown_table, median, number, numpy_blas, plural,
                     progress_bar, ratio)

__all__ = ['WEIGHT_TYPES', 'CALLS', 'QUICK', 'op_call_overhead', 'ggml_matmul_gflops',
           'numpy_matmul_gflops', 'run', 'report']

WEIGHT_TYPES = ('F32', 'F16', 'BF16', 'Q8_0', 'Q4_0')
# What each op-call figure measures, as the table names it.
CALLS = {'bare': 'bare `lib.ggml_add` (cffi, no validation)',
         'guarded': '`gadget.ggml.ggml_add` (C guard: abort-to-exception, pre-checks)',
         'named': "`gadget.ggml.ggml_add(..., name='h')`"}
# What --quick runs: small sizes, 1-2 repeats.
QUICK: dict[str, Any] = {'repeats': 2, 'size': 256}


def _context(mem: int, no_alloc: bool) -> Any:
    return G.ggml_init(ffi.new('struct ggml_init_params *',
                               dict(mem_size=mem, mem_buffer=ffi.NULL, no_alloc=no_alloc))[0])


def op_call_overhead(kind: str, repeats: int, n_nodes: int = 1000) -> float:
    """Median µs per call of ``ggml_add`` while chaining ``n_nodes`` nodes (a new context per run,
    untimed); ``kind`` is a key of :data:`CALLS`."""
    raw, guarded = lib.ggml_add, G.ggml_add
    times = []
    # The loops are written out (no helper call per op) so that only the op call is timed.
    for _ in range(repeats):
        ctx = _context(n_nodes * 512 + (1 << 20), no_alloc=True)
        x = G.ggml_new_tensor_2d(ctx, G.GGML_TYPE_F32, 64, 8)
        y = G.ggml_new_tensor_2d(ctx, G.GGML_TYPE_F32, 64, 1)
        if kind == 'bare':
            start = time.perf_counter()
            for _ in range(n_nodes):
                x = raw(ctx, x, y)
        elif kind == 'guarded':
            start = time.perf_counter()
            for _ in range(n_nodes):
                x = guarded(ctx, x, y)
        elif kind == 'named':
            start = time.perf_counter()
            for _ in range(n_nodes):
                x = guarded(ctx, x, y, name='h')
        else:
            lib.ggml_free(ctx)
            raise ValueError(f'kind must be one of {sorted(CALLS)}, not {kind!r}')
        times.append((time.perf_counter() - start) / n_nodes * 1e6)
        lib.ggml_free(ctx)
    return median(times)


def ggml_matmul_gflops(weight_type: str, n: int, threads: int, repeats: int) -> float:
    """GFLOPS of GGML's CPU matmul of an (n, n) weight of ``weight_type`` (``'F32'``, ``'Q8_0'``, …)
    by (n, n) F32 activations: median of ``repeats`` graph computes after one warm-up."""
    ggml_type = getattr(G, f'GGML_TYPE_{weight_type}')
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, n)).astype(np.float32)
    x = rng.standard_normal((n, n)).astype(np.float32)
    ctx = _context(4 * n * n * 4 + (16 << 20), no_alloc=False)
    try:
        tw = G.ggml_new_tensor_2d(ctx, ggml_type, n, n)
        tx = G.ggml_new_tensor_2d(ctx, G.GGML_TYPE_F32, n, n)
        if weight_type == 'F32':
            ffi.memmove(tw.data, ffi.from_buffer(w), w.nbytes)
        elif weight_type in ('F16', 'BF16'):
            from ..types import numpy_dtype
            wc = w.astype(numpy_dtype(ggml_type))
            ffi.memmove(tw.data, ffi.from_buffer(wc), wc.nbytes)
        else:
            lib.ggml_quantize_chunk(ggml_type, ffi.cast('float *', ffi.from_buffer(w)), tw.data, 0, n, n,
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
    finally:
        lib.ggml_free(ctx)
    return 2 * n ** 3 / median(times) / 1e9


def numpy_matmul_gflops(n: int, repeats: int) -> float:
    """GFLOPS of numpy's F32 (n, n) @ (n, n): median of ``repeats`` after one warm-up. Run it with
    :func:`run` (a process whose BLAS has the thread count set), or here with numpy's own threads."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / median(times) / 1e9


def run(threads: int = 2, repeats: int = 15, size: int = 1024, n_nodes: int = 1000,
        progress: bool = True) -> dict[str, Any]:
    """Measure op-call overhead and matmul GFLOPS.

    Returns ``{'suite': 'ops', 'settings', 'peers', 'calls': [{'call', 'label', 'us_per_call'}],
    'matmul': [{'library', 'weights', 'gflops', 'vs_numpy'}]}`` (the last ``matmul`` row is numpy).
    """
    bar = progress_bar(len(CALLS) + len(WEIGHT_TYPES) + 1, 'ops', progress)
    calls = []
    for kind, label in CALLS.items():
        bar.set_postfix_str(kind, refresh=False)
        calls.append({'call': kind, 'label': label, 'us_per_call': op_call_overhead(kind, repeats, n_nodes)})
        bar.update()
    matmul = []
    for weight_type in WEIGHT_TYPES:
        bar.set_postfix_str(f'matmul {weight_type}', refresh=False)
        matmul.append({'library': 'gadget', 'weights': weight_type,
                       'gflops': ggml_matmul_gflops(weight_type, size, threads, repeats)})
        bar.update()
    bar.set_postfix_str('numpy', refresh=False)
    limit = {name: str(threads) for name in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS')}
    numpy_gflops = in_subprocess('gadget.bench.ops:numpy_matmul_gflops', {'n': size, 'repeats': repeats},
                                 env=limit)
    bar.update()
    bar.close()
    for row in matmul:
        row['vs_numpy'] = row['gflops'] / numpy_gflops
    matmul.append({'library': 'numpy', 'weights': 'F32', 'gflops': numpy_gflops, 'vs_numpy': 1.0})
    return {'suite': 'ops', 'title': 'Op layer and matmul',
            'settings': {'threads': threads, 'repeats': repeats, 'size': size, 'n_nodes': n_nodes},
            'peers': [{**find_peer('numpy', ['numpy'], 'numpy', 'pip install numpy').as_dict(),
                       'blas': numpy_blas()}],
            'calls': calls, 'matmul': matmul}


def report(result: dict[str, Any]) -> str:
    """The two tables of ``benchmarks/RESULTS.md``'s op-layer section, from :func:`run`'s result."""
    s = result['settings']
    blas = result['peers'][0].get('blas')
    numpy_label = f"numpy F32 ({blas.split()[0]})" if blas else 'numpy F32'
    calls = markdown_table(['call', 'µs/call'],
                           [[c['label'], number(c['us_per_call'], 3)] for c in result['calls']])
    rows = result['matmul']
    matmul = markdown_table(['', *(r['weights'] for r in rows[:-1]), numpy_label],
                            [['GFLOPS', *(number(r['gflops']) for r in rows)],
                             ['vs numpy', *(ratio(r['vs_numpy']) for r in rows)]])
    return (f"µs per op call while building a {s['n_nodes']:,}-node graph (`ggml_add` chained "
            f"{s['n_nodes']:,} times; median of {plural(s['repeats'], 'run')}):\n\n{calls}\n\n"
            f"{s['size']} × {s['size']} × {s['size']} matmul, {plural(s['threads'], 'thread')} (GFLOPS, "
            f"median of {s['repeats']}; weights of the type shown, F32 activations; numpy in its own process "
            f"with {plural(s['threads'], 'BLAS thread')}):\n\n{matmul}")
