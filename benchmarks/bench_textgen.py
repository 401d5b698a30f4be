"""Text generation speed: gadget's LlamaModel vs llama-cpp-python on the same GGUF, same run.

Prints, for each: load time, prefill tok/s (a 256-token prompt), decode tok/s (128 greedy tokens),
and for gadget the Python time per decoded token (the step's wall time minus GGML's compute time).
Medians of ``--repeats`` runs, alternating the two libraries so both see the same machine state.
llama-cpp-python is skipped with a message when it is not installed (it builds from source:
``CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36``).

Usage: python benchmarks/bench_textgen.py [--model FILE.gguf] [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from gadget.models import LlamaModel
from gadget.textgen import default_model_path

TEXT = ('The history of the printing press begins in the fifteenth century, when Johannes Gutenberg '
        'combined movable metal type, oil-based ink and a wooden press adapted from wine making. ') * 20


def prompt_tokens(path: str, n: int) -> list[int]:
    from gadget.tokenizer import load_tokenizer
    ids = load_tokenizer(path).encode(TEXT)
    assert len(ids) >= n, len(ids)
    return [int(t) for t in ids[:n]]


def run_gadget(path: str, tokens: list[int], n_gen: int, threads: int, flash_attn: bool) -> dict[str, float]:
    start = time.perf_counter()
    model = LlamaModel.from_path(path, n_threads=threads, context_length=1024, batch_size=512,
                                 flash_attn=flash_attn)
    load = time.perf_counter() - start
    model([tokens[0]])                      # build the decode graph once (warm-up), then start over
    model.reset()
    start = time.perf_counter()
    logits = model(tokens)
    prefill = time.perf_counter() - start
    token = int(np.argmax(logits))
    model([token])                          # the first decode step builds the decode graph
    model.compute_seconds = 0.0
    start = time.perf_counter()
    for _ in range(n_gen):
        token = int(np.argmax(model([token])))
    decode = time.perf_counter() - start
    python_ms = (decode - model.compute_seconds) / n_gen * 1e3
    model.close()
    return {'load_s': load, 'prefill_tps': len(tokens) / prefill, 'decode_tps': n_gen / decode,
            'python_ms_per_token': python_ms}


def run_llama_cpp(path: str, tokens: list[int], n_gen: int, threads: int,
                  flash_attn: bool) -> dict[str, float]:
    from llama_cpp import Llama
    start = time.perf_counter()
    llm = Llama(model_path=path, n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=threads,
                n_threads_batch=threads, flash_attn=flash_attn, verbose=False)
    load = time.perf_counter() - start
    llm.eval([tokens[0]])
    llm.reset()
    start = time.perf_counter()
    llm.eval(tokens)
    prefill = time.perf_counter() - start
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    llm.eval([token])
    start = time.perf_counter()
    for _ in range(n_gen):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([token])
    decode = time.perf_counter() - start
    llm.close()
    return {'load_s': load, 'prefill_tps': len(tokens) / prefill, 'decode_tps': n_gen / decode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default=None)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--prompt', type=int, default=256)
    parser.add_argument('--gen', type=int, default=128)
    args = parser.parse_args()
    path = str(args.model or default_model_path())
    tokens = prompt_tokens(path, args.prompt)
    # Compared like for like: the defaults (attention without flash attention in both), and
    # flash attention on in both.
    ours = {'gadget': lambda: run_gadget(path, tokens, args.gen, args.threads, False),
            'gadget flash_attn=True': lambda: run_gadget(path, tokens, args.gen, args.threads, True)}
    try:
        import llama_cpp
        version = llama_cpp.__version__
        peers = {f'llama-cpp-python {version}':
                 lambda: run_llama_cpp(path, tokens, args.gen, args.threads, False),
                 f'llama-cpp-python {version} flash_attn=True':
                 lambda: run_llama_cpp(path, tokens, args.gen, args.threads, True)}
    except ImportError:
        peers = {}
        print('llama-cpp-python is not installed: gadget only')
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in [*ours, *peers]}
    for _ in range(args.repeats):   # alternate, so both see the same machine state
        for name, fn in [*ours.items(), *peers.items()]:
            runs[name].append(fn())
    print(f'{os.path.basename(path)}, {args.threads} threads, prompt {args.prompt} tokens, '
          f'{args.gen} decoded tokens, median of {args.repeats}')
    print(f'  {"":<45} {"load s":>8} {"prefill tok/s":>14} {"decode tok/s":>13} {"python ms/tok":>14}')
    medians = {}
    for name, results in runs.items():
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        medians[name] = med
        py = f'{med["python_ms_per_token"]:14.3f}' if 'python_ms_per_token' in med else f'{"":>14}'
        print(f'  {name:<45} {med["load_s"]:8.3f} {med["prefill_tps"]:14.1f} {med["decode_tps"]:13.1f} {py}')
    for ours_name, peer_name in zip(ours, peers):
        g, p = medians[ours_name], medians[peer_name]
        print(f'  {ours_name} / {peer_name}: prefill {g["prefill_tps"] / p["prefill_tps"]:.2f}x, '
              f'decode {g["decode_tps"] / p["decode_tps"]:.2f}x, '
              f'load {p["load_s"] / g["load_s"]:.2f}x faster')

if __name__ == '__main__':
    main()
