"""GGML's BLAS backend (a build with GADGET_BLAS=1) against the CPU backend alone, same run.

Each configuration runs in a process of its own (OpenMP and OpenBLAS thread pools start at load,
and their spinning is what this measures), the configurations alternating for ``--rounds`` rounds;
figures are medians over the rounds. Workloads, 2 threads:

* ``matmul``: a 1024² × 1024² product, weights F32 / F16 / BF16 / Q8_0 / Q4_1 (F32 activations),
  GFLOPS, next to numpy's F32 (its own OpenBLAS, ``OPENBLAS_NUM_THREADS`` = threads);
* ``textgen``: SmolLM2-135M Q4_1, prefill of a 256-token prompt and decode, tokens/s;
* ``embed``: all-MiniLM-L6-v2 F32, 256 texts of ~18 tokens and 64 of ~120, texts/s.

``--env`` adds configurations with environment settings for GCC's OpenMP (read when GGML loads),
e.g. ``--env OMP_WAIT_POLICY=passive --env GOMP_SPINCOUNT=10000``.

Usage: python benchmarks/bench_blas.py [--rounds 3] [--threads 2] [--env NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time


def _median_rate(fn, work: float, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return work / statistics.median(times)


def worker(suite: str, blas: bool, threads: int) -> dict[str, float]:
    """One configuration's figures (runs in its own process)."""
    import numpy as np

    n = 1024
    if suite == 'numpy':
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
        return {'F32': _median_rate(lambda: a @ b, 2 * n ** 3 / 1e9, 9)}
    if suite == 'matmul':
        from gadget import ggml as G
        from gadget.compute import GgmlCompute

        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
        out = {}
        for wtype in ('F32', 'F16', 'BF16', 'Q8_0', 'Q4_1'):
            with GgmlCompute({}, {'w': (wtype, (n, n)), 'x': ('F32', (n, n))},
                             lambda ctx, p, t: G.ggml_mul_mat(ctx, t['w'], t['x']), n_threads=threads,
                             blas=blas) as c:
                c.set_input('w', a)
                c.set_input('x', b)
                out[wtype] = _median_rate(c.run, 2 * n ** 3 / 1e9, 9)
        return out
    if suite == 'textgen':
        from gadget.models import load_model
        from gadget.textgen import default_model_path

        model = load_model(default_model_path(), context_length=1024, batch_size=512, n_threads=threads,
                           blas=blas)
        prompt = list(range(1000, 1256))

        def prefill() -> None:
            model.reset()
            model(prompt)

        rate = _median_rate(prefill, len(prompt))
        model.reset()
        model(prompt[:16])
        tokens = iter(range(100, 10_000))
        return {'prefill': rate, 'decode': _median_rate(lambda: model([next(tokens)]), 1.0, 40)}
    if suite == 'embed':
        from gadget import EmbedNumpy

        rng = random.Random(0)
        words = 'the a of cat dog runs park quickly blue model language system data text river city'.split()
        short = [' '.join(rng.choice(words) for _ in range(14)) for _ in range(256)]
        long = [' '.join(rng.choice(words) for _ in range(110)) for _ in range(64)]
        embedder = EmbedNumpy(n_threads=threads, blas=blas)
        return {'short': _median_rate(lambda: embedder.embed(short), len(short), 3),
                'long': _median_rate(lambda: embedder.embed(long), len(long), 3)}
    raise ValueError(suite)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--env', action='append', default=[], help='NAME=VALUE: extra configurations')
    parser.add_argument('--worker', nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        suite, blas = args.worker
        print(json.dumps(worker(suite, blas == 'blas', args.threads)))
        return
    configs = [('cpu', ''), ('blas', '')] + [(mode, e) for e in args.env for mode in ('cpu', 'blas')]
    results: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for suite in ('matmul', 'textgen', 'embed'):
            runs = [('numpy', '')] if suite == 'matmul' else []
            for mode, env in runs + configs:
                extra = dict(e.split('=', 1) for e in env.split()) if env else {}
                environ = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads), **extra)
                done = subprocess.run([sys.executable, __file__, '--threads', str(args.threads), '--worker',
                                       'numpy' if mode == 'numpy' else suite, mode],
                                      capture_output=True, text=True, env=environ, check=True)
                results.setdefault((suite, mode, env), []).append(json.loads(done.stdout.splitlines()[-1]))
    for suite in ('matmul', 'textgen', 'embed'):
        rows = [(k, v) for k, v in results.items() if k[0] == suite]
        columns = list(rows[-1][1][0])
        unit = {'matmul': 'GFLOPS', 'textgen': 'tokens/s', 'embed': 'texts/s'}[suite]
        print(f'\n{suite} ({unit}, median of {args.rounds} rounds, {args.threads} threads)\n')
        print('| configuration | ' + ' | '.join(columns) + ' |')
        print('|---|' + '---|' * len(columns))
        for (_, mode, env), runs in rows:
            cells = [f'{statistics.median(r[c] for r in runs if c in r):.1f}' if any(c in r for r in runs)
                     else '—' for c in columns]
            print(f'| {mode}{" " + env if env else ""} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    main()
