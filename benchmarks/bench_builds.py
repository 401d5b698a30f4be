"""Builds or checkouts of gadget side by side, same run: matmul GFLOPS and SmolLM2 prefill/decode.

Each ``--build LABEL=PYTHON[:SOURCE]`` names an interpreter (e.g. a virtual environment with a
native or a portable wheel installed) and optionally a source tree put first on its path (e.g. a
git worktree of an older commit, with the compiled extension copied in). The measurements run in
fresh processes, alternating between the builds, and the medians are printed side by side with
each build's ratio to the first. A portable build (``GADGET_PORTABLE=1``) loads the CPU module for
the running CPU's x86-64 level at run time; a native build is compiled for the build machine.

Usage: python benchmarks/bench_builds.py --build native=VENV1/bin/python --build portable=VENV2/bin/python
       [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))

# Run by each build's interpreter, from a neutral folder so it imports that build's gadget.
MEASURE = '''
import json, sys
sys.path.insert(0, sys.argv[1])
import bench_ops, bench_textgen
from gadget import _ffi
from gadget.ggml import GgmlType
from gadget.textgen import default_model_path
threads = int(sys.argv[2])
out = {'cpu module': _ffi.MODULES.get('cpu', 'linked (native)')}
for name in ('F32', 'Q8_0', 'Q4_0'):
    out[name + ' GFLOPS'] = bench_ops.ggml_matmul_gflops(GgmlType[name], 1024, threads, 5)
path = str(default_model_path())
tokens = bench_textgen.prompt_tokens(path, 256)
run = bench_textgen.run_gadget(path, tokens, 64, threads, False)
out['prefill tok/s'] = run['prefill_tps']
out['decode tok/s'] = run['decode_tps']
print(json.dumps(out))
'''


def measure(python: str, source: str | None, threads: int) -> dict:
    env = dict(os.environ)
    if source:
        env['PYTHONPATH'] = source + os.pathsep + env.get('PYTHONPATH', '')
    out = subprocess.run([python, '-c', MEASURE, HERE, str(threads)], check=True, capture_output=True,
                         text=True, cwd='/', env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--build', action='append', required=True, metavar='LABEL=PYTHON[:SOURCE]',
                        help='a build to measure (repeatable; the first is the reference)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()
    builds = {}
    for spec in args.build:
        label, _, where = spec.partition('=')
        python, _, source = where.partition(':')
        builds[label] = (python, source or None)
    runs: dict[str, list[dict]] = {name: [] for name in builds}
    for _ in range(args.repeats):
        for name, (python, source) in builds.items():
            runs[name].append(measure(python, source, args.threads))
    first = next(iter(builds))
    keys = [k for k in runs[first][0] if k != 'cpu module']
    print(f'{args.threads} threads, median of {args.repeats} alternating runs')
    print('| build | CPU module | ' + ' | '.join(keys) + ' |')
    print('|---|---|' + '---|' * len(keys))
    medians = {}
    for name, results in runs.items():
        medians[name] = {k: statistics.median(r[k] for r in results) for k in keys}
        cells = ' | '.join(f'{medians[name][k]:.1f}' for k in keys)
        print(f'| {name} | {results[0]["cpu module"]} | {cells} |')
    for name in list(builds)[1:]:
        ratios = ' | '.join(f'{medians[name][k] / medians[first][k]:.2f}' for k in keys)
        print(f'| {name} / {first} | | {ratios} |')


if __name__ == '__main__':
    main()
