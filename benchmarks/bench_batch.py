"""Several sequences decoded together (``LlamaModel.batch``) against the same sequences one by one,
same run: total decode tokens/s for 1, 4, 8 and 16 sequences of different prompts.

SmolLM2-135M Q4_1 by default, greedy, ``--gen`` tokens per sequence after its prompt; flash
attention on (the configuration in which batched decoding is bit for bit one by one). Each
configuration is measured ``--repeats`` times, alternating batched and one by one; medians.

Usage: python benchmarks/bench_batch.py [--model FILE.gguf] [--gen 32] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from gadget.bench.textgen import TEXT
from gadget.models import LlamaModel
from gadget.textgen import default_model_path
from gadget.tokenizer import load_tokenizer


def one_by_one(model: LlamaModel, prompts: list[list[int]], gen: int) -> float:
    """Decode tokens/s of the prompts one after another (prefill not counted)."""
    spent = 0.0
    for ids in prompts:
        model.reset()
        token = int(np.argmax(model(ids)))
        start = time.perf_counter()
        for _ in range(gen):
            token = int(np.argmax(model([token])))
        spent += time.perf_counter() - start
    return len(prompts) * gen / spent


def batched(model: LlamaModel, prompts: list[list[int]], gen: int) -> float:
    """Decode tokens/s of the prompts as one batch (prefill not counted)."""
    model.reset()
    logits = model.batch(dict(enumerate(prompts)))
    start = time.perf_counter()
    for _ in range(gen):
        logits = model.batch({i: [int(np.argmax(row))] for i, row in logits.items()})
    return len(prompts) * gen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default=None)
    parser.add_argument('--gen', type=int, default=32)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    path = str(args.model or default_model_path())
    words = load_tokenizer(path).encode(TEXT)
    # prompts of different lengths (8 to 38 tokens), from different places of the text
    prompts = [words[7 * i:7 * i + 8 + (i * 5) % 31] for i in range(16)]
    print(f'{path.rsplit("/", 1)[-1]}, {args.threads} threads, {args.gen} greedy tokens per sequence, '
          f'flash attention, median of {args.repeats}\n')
    print('| sequences | one by one, tok/s | batched, tok/s | batched / one by one |')
    print('|---|---|---|---|')
    with LlamaModel.from_path(path, n_threads=args.threads, context_length=2048, flash_attn=True) as model:
        for n in (1, 4, 8, 16):
            rates: dict[str, list[float]] = {'alone': [], 'batch': []}
            for _ in range(args.repeats):
                rates['alone'].append(one_by_one(model, prompts[:n], args.gen))
                rates['batch'].append(batched(model, prompts[:n], args.gen))
            a, b = statistics.median(rates['alone']), statistics.median(rates['batch'])
            print(f'| {n} | {a:.1f} | {b:.1f} | {b / a:.2f}× |')


if __name__ == '__main__':
    main()
