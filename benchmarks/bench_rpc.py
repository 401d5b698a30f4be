"""A model split over GGML RPC servers on loopback against the same model local, same run: what
the RPC protocol costs per token, and what crosses the network.

Starts ``--servers`` ``gadget rpc-server`` processes on this machine (``--server-threads`` each),
loads the model local (the CPU backend alone: what the servers compute with) and split evenly over
the servers, and alternates them ``--repeats`` times: prefill of a ``--prompt``-token prompt and
``--gen`` greedy decode tokens, medians (and the range of the split's decode). Also counts the bytes
a decode step sends over the loopback interface (``/proc/net/dev``, every process's: run it on a
quiet machine).

Usage: python benchmarks/bench_rpc.py [--model FILE.gguf] [--servers 2] [--prompt 128] [--gen 64]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from gadget import rpc
from gadget.bench.textgen import TEXT
from gadget.models import LlamaModel
from gadget.textgen import default_model_path
from gadget.tokenizer import load_tokenizer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def start_servers(n: int, threads: int) -> tuple[list[str], list[subprocess.Popen]]:
    names, procs = [], []
    for _ in range(n):
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, '-m', 'gadget', 'rpc-server', '--port', str(port),
                                       '--threads', str(threads)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        names.append(f'rpc://127.0.0.1:{port}')
    for name, proc in zip(names, procs):
        rpc.wait_for_server(name, alive=lambda: proc.poll() is None)
    return names, procs


def loopback_bytes() -> int:
    """Bytes sent over the loopback interface so far, by every process (``/proc/net/dev``): on a
    quiet machine, the client's and servers' traffic."""
    for line in Path('/proc/net/dev').read_text().splitlines():
        name, _, fields = line.partition(':')
        if name.strip() == 'lo':
            return int(fields.split()[8])      # transmitted bytes (each is received once too)
    return 0


def run(model: LlamaModel, prompt: list[int], gen: int) -> tuple[float, float, float]:
    """(prefill tok/s, decode tok/s, bytes over the network per decode token)."""
    model.reset()
    start = time.perf_counter()
    token = int(np.argmax(model(prompt)))
    prefill = len(prompt) / (time.perf_counter() - start)
    before = loopback_bytes()
    start = time.perf_counter()
    for _ in range(gen):
        token = int(np.argmax(model([token])))
    decode = gen / (time.perf_counter() - start)
    return prefill, decode, (loopback_bytes() - before) / gen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default=None)
    parser.add_argument('--servers', type=int, default=2)
    parser.add_argument('--server-threads', type=int, default=2)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--prompt', type=int, default=128)
    parser.add_argument('--gen', type=int, default=64)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()
    path = str(args.model or default_model_path())
    prompt = load_tokenizer(path).encode(TEXT)[:args.prompt]
    names, procs = start_servers(args.servers, args.server_threads)
    try:
        local = LlamaModel.from_path(path, context_length=1024, n_threads=args.threads, blas=False)
        started = time.perf_counter()
        split = LlamaModel.from_path(path, context_length=1024, n_threads=args.threads, backend=names)
        load = time.perf_counter() - started
        rows: dict[str, list[tuple[float, float, float]]] = {'local': [], 'split': []}
        for model in (local, split):
            run(model, prompt, 4)             # warm-up: graphs built, buffers grown
        for _ in range(args.repeats):
            rows['local'].append(run(local, prompt, args.gen))
            rows['split'].append(run(split, prompt, args.gen))
        local.close()
        split.close()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    print(f'{Path(path).name}, {args.prompt}-token prompt, {args.gen} greedy tokens, client {args.threads} '
          f'threads, {args.servers} loopback servers x {args.server_threads} threads, medians of '
          f'{args.repeats}; split model loaded in {load:.2f} s\n')
    print('| | prefill tok/s | decode tok/s | ms per token | network bytes per token |')
    print('|---|---|---|---|---|')
    med = {k: [statistics.median(r[i] for r in v) for i in range(3)] for k, v in rows.items()}
    for name, label in (('local', 'local CPU backend'), ('split', f'split over {args.servers} RPC servers')):
        prefill, decode, traffic = med[name]
        shown = f'{traffic:,.0f}' if name == 'split' else '—'
        print(f'| {label} | {prefill:.1f} | {decode:.1f} | {1000 / decode:.2f} | {shown} |')
    decodes = sorted(r[1] for r in rows['split'])
    print(f'\nsplit decode over the {args.repeats} rounds: {decodes[0]:.1f} to {decodes[-1]:.1f} tok/s')
    over = 1000 / med['split'][1] - 1000 / med['local'][1]
    print(f'split / local: prefill {med["split"][0] / med["local"][0]:.2f}x, decode '
          f'{med["split"][1] / med["local"][1]:.2f}x; the protocol adds {over:.2f} ms per token')


if __name__ == '__main__':
    main()
