"""Start-up: a whole ``gadget generate`` process against a whole llama-cpp-python script, same run.

Both do the same work from a cold interpreter: import, load SmolLM2-135M-Instruct Q4_1, evaluate
the prompt and generate 8 greedy tokens, print the text, exit. Caches are warm (the tokenizer built
from the GGUF is cached after the first run, which this script does before timing). Also timed, in
fresh processes: ``import gadget`` + ``TextGen()`` and ``TextGen()`` alone (the import excluded).

Runs alternate (gadget, llama-cpp-python, ...) so both see the same machine state; medians of
``--repeats``. llama-cpp-python is skipped with a message when it is not installed.

Usage: python benchmarks/bench_startup.py [--model FILE.gguf] [--threads 2] [--repeats 7]
       [--llama-python PYTHON]   (gadget runs in this interpreter, the peer in PYTHON)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

PROMPT = 'The capital of France is'

LLAMA_CPP_SCRIPT = '''
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_threads=int(sys.argv[2]), verbose=False)
print(sys.argv[3] + llm(sys.argv[3], max_tokens=8, temperature=0)['choices'][0]['text'])
'''

TEXTGEN_SCRIPT = '''
import sys, time
start = time.perf_counter()
from gadget import TextGen
imported = time.perf_counter()
gen = TextGen(sys.argv[1], n_threads=int(sys.argv[2]))
done = time.perf_counter()
print(f'{done - start:.6f} {done - imported:.6f}')
'''


def gadget_command() -> list[str]:
    script = shutil.which('gadget', path=os.path.dirname(sys.executable)) or shutil.which('gadget')
    return [script] if script else [sys.executable, '-m', 'gadget']


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - start, out


def main() -> None:
    from gadget.textgen import default_model_path

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default=None, help='GGUF file (default: SmolLM2-135M-Instruct Q4_1)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--llama-python', default=sys.executable,
                        help='the interpreter with llama-cpp-python installed (default: this one)')
    args = parser.parse_args()
    model = str(args.model or default_model_path())
    threads = str(args.threads)

    runs = {'gadget generate -n 8': [gadget_command() + ['generate', PROMPT, '-m', model, '-n', '8',
                                                         '--temperature', '0', '--threads', threads]]}
    peer = [args.llama_python, '-c']
    if subprocess.run(peer + ['import llama_cpp'], capture_output=True).returncode == 0:
        runs['llama-cpp-python script'] = [peer + [LLAMA_CPP_SCRIPT, model, threads, PROMPT]]
    else:
        print('llama-cpp-python is not installed: only gadget is timed '
              '(CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36)')
    textgen_cmd = [sys.executable, '-c', TEXTGEN_SCRIPT, model, threads]

    texts = {name: timed(cmd)[1].strip() for name, [cmd] in runs.items()}   # warm-up: caches, page cache
    timed(textgen_cmd)
    times: dict[str, list[float]] = {name: [] for name in runs}
    textgen_total, textgen_only = [], []
    for _ in range(args.repeats):
        for name, [cmd] in runs.items():
            times[name].append(timed(cmd)[0])
        total, only = map(float, timed(textgen_cmd)[1].split())
        textgen_total.append(total)
        textgen_only.append(only)

    print(f'{os.path.basename(model)}, {threads} threads, median of {args.repeats} alternating runs, '
          'warm caches')
    print('| whole process | s (median) | min | max |')
    print('|---|---|---|---|')
    for name, values in times.items():
        print(f'| {name} | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} |')
    if len(times) == 2:
        a, b = (statistics.median(v) for v in times.values())
        print(f'\nratio gadget / llama-cpp-python: {a / b:.2f}')
    print(f'\nin a fresh process: import gadget + TextGen() {statistics.median(textgen_total):.3f} s, '
          f'TextGen() alone {statistics.median(textgen_only):.3f} s (median of {args.repeats})')
    for name, text in texts.items():
        print(f'{name}: {text!r}')


if __name__ == '__main__':
    main()
