"""Text generation speed: gadget's LlamaModel vs llama-cpp-python on the same GGUF, same run (the
logic is :mod:`gadget.bench.textgen`; ``gadget bench textgen`` runs the same from an installed package).

Prints, for each: load time, prefill tok/s (a 256-token prompt), decode tok/s (128 greedy tokens),
and for gadget the Python time per decoded token (the step's wall time minus GGML's compute time).
Medians of ``--repeats`` runs, alternating the two libraries so both see the same machine state.
llama-cpp-python is skipped with a message when it is not installed (it builds from source:
``CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36``).

Usage: python benchmarks/bench_textgen.py [--model FILE.gguf] [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse

from gadget.bench import textgen
from gadget.bench.common import describe_machine, machine_info


def main() -> None:
    """Parse the options, run the suite, print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default=None)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--prompt', type=int, default=256)
    parser.add_argument('--gen', type=int, default=128)
    args = parser.parse_args()
    print(describe_machine(machine_info()) + '\n')
    print(textgen.report(textgen.run(args.model, threads=args.threads, repeats=args.repeats,
                                     prompt=args.prompt, gen=args.gen)))


if __name__ == '__main__':
    main()
