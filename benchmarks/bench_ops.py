"""Op-layer overhead and matmul throughput (the logic is :mod:`gadget.bench.ops`; ``gadget bench ops``
runs the same from an installed package).

Prints:
* µs per op call while building a 1,000-node graph: the bare ``lib`` call, the guarded
  ``gadget.ggml`` call (its validation is the C guard), and the same with ``name=``;
* GFLOPS of a 1024×1024 × 1024×1024 matmul on the CPU for F32 / F16 / BF16 / Q8_0 / Q4_0 weights
  (F32 activations), next to numpy's F32 matmul, all with the same number of threads.

Usage: ``python benchmarks/bench_ops.py [--threads 2] [--repeats 15]``. Medians of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse

from gadget.bench import ops
from gadget.bench.common import describe_machine, machine_info


def main() -> None:
    """Parse the options, run the suite, print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=15)
    parser.add_argument('--size', type=int, default=1024)
    args = parser.parse_args()
    print(describe_machine(machine_info()) + '\n')
    print(ops.report(ops.run(threads=args.threads, repeats=args.repeats, size=args.size)))


if __name__ == '__main__':
    main()
