"""Several sequences decoded together (``LlamaModel.batch``) against the same sequences one by one,
same run: total decode tokens/s for 1, 4, 8 and 16 sequences of different prompts.

SmolLM2-135M Q4_1 by default, greedy, ``--gen`` tokens per sequence after its prompt; flash
attention on (the configuration in which batched decoding is bit for bit one by one). Each
configuration is measured ``--repeats`` times, alternating batched and one by one; medians.

With ``--weight-type`` (``BF16``, ``Q8_0``, ...) the model's matrices are converted when loaded.
Where llama-cpp-python is installed, the same prompts one by one with it are measured too (its
``Llama`` has no batched generation), with the same greedy decode loop and flash attention, and
llama.cpp's own batched decoding through its low-level API (one ``llama_batch`` of one token per
sequence per step, a unified KV cache): what the kernels allow, batched, to llama.cpp itself.

Usage: python benchmarks/bench_batch.py [--model FILE.gguf] [--gen 32] [--threads 2] [--repeats 3]
           [--weight-type BF16] [--sequences 1,4,8,16]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

from gadget.bench.textgen import TEXT, llama_cpp_peer
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


def llama_cpp_one_by_one(llm: Any, prompts: list[list[int]], gen: int) -> float:
    """llama-cpp-python's decode tokens/s of the prompts one after another (prefill not counted)."""
    spent = 0.0
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        start = time.perf_counter()
        for _ in range(gen):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        spent += time.perf_counter() - start
    return len(prompts) * gen / spent


class LlamaCppBatch:
    """llama.cpp's own batched decoding, through llama-cpp-python's low-level API (its high-level
    ``Llama`` has none): one context of ``n_seq_max`` sequences, each prompt decoded as its own
    batch, then every decode step one ``llama_batch`` of one token per sequence (what llama.cpp's
    server and ``llama-batched-bench`` do), flash attention, the KV cache unified (one pool of cells
    for all sequences, as gadget's) or split per sequence (``unified=False``)."""

    def __init__(self, path: str, n_seq_max: int, threads: int, unified: bool = True):
        import llama_cpp as L
        self.L = L
        self.model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
        params = L.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = 2048, 512, 512
        params.n_seq_max, params.kv_unified = n_seq_max, unified
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self.ctx = L.llama_init_from_model(self.model, params)
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.batch = L.llama_batch_init(512, 0, 1)

    def _decode(self, items: list[tuple[int, int, int]], want_all: bool) -> None:
        """Decode ``(token, pos, seq)`` items as one batch (logits of the last, or of all)."""
        b = self.batch
        b.n_tokens = len(items)
        for i, (token, pos, seq) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0] = token, pos, 1, seq
            b.logits[i] = want_all or i == len(items) - 1
        if self.L.llama_decode(self.ctx, b) != 0:
            raise RuntimeError('llama_decode failed')

    def _argmax(self, i: int) -> int:
        return int(np.argmax(np.ctypeslib.as_array(self.L.llama_get_logits_ith(self.ctx, i),
                                                   shape=(self.n_vocab,))))

    def decode_rate(self, prompts: list[list[int]], gen: int) -> float:
        """Decode tokens/s of the prompts as one batch (prefill not counted)."""
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)
        tokens = []
        for seq, ids in enumerate(prompts):
            self._decode([(t, pos, seq) for pos, t in enumerate(ids)], want_all=False)
            tokens.append(self._argmax(len(ids) - 1))
        start = time.perf_counter()
        for step in range(gen):
            self._decode([(t, len(ids) + step, seq) for seq, (t, ids) in enumerate(zip(tokens, prompts))],
                         want_all=True)
            tokens = [self._argmax(i) for i in range(len(prompts))]
        return len(prompts) * gen / (time.perf_counter() - start)

    def close(self) -> None:
        self.L.llama_batch_free(self.batch)
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default=None)
    parser.add_argument('--gen', type=int, default=32)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--weight-type', default=None)
    parser.add_argument('--sequences', default='1,4,8,16')
    args = parser.parse_args()
    counts = [int(n) for n in args.sequences.split(',')]
    path = str(args.model or default_model_path())
    words = load_tokenizer(path).encode(TEXT)
    # prompts of different lengths (8 to 38 tokens), from different places of the text
    prompts = [words[7 * i:7 * i + 8 + (i * 5) % 31] for i in range(16)]
    print(f'{path.rsplit("/", 1)[-1]}, {args.threads} threads, {args.gen} greedy tokens per sequence, '
          f'flash attention, median of {args.repeats}\n')
    checked = llama_cpp_peer(path)
    if checked.present:
        import llama_cpp
        llm = llama_cpp.Llama(model_path=path, n_ctx=2048, n_threads=args.threads, verbose=False,
                              flash_attn=True, logits_all=True)
        peer_batch = LlamaCppBatch(path, max(counts), args.threads)
    else:
        llm = peer_batch = None
    weights = f', weights {args.weight_type}' if args.weight_type else ''
    print(f'gadget{weights}; llama-cpp-python {"(as stored)" if llm else checked.reason}\n')
    peer = (' llama-cpp-python one by one, tok/s | batched / llama-cpp-python |'
            ' llama.cpp batched (low-level API), tok/s | its batched / its one by one |'
            ' gadget batched / llama.cpp batched |') if llm else ''
    print(f'| sequences | one by one, tok/s | batched, tok/s | batched / one by one |{peer}')
    print('|---|---|---|---|' + ('---|---|---|---|---|' if llm else ''))
    with LlamaModel.from_path(path, n_threads=args.threads, context_length=2048, flash_attn=True,
                              weight_type=args.weight_type) as model:
        for n in counts:
            rates: dict[str, list[float]] = {'alone': [], 'batch': [], 'peer': [], 'peer_batch': []}
            for _ in range(args.repeats):
                rates['alone'].append(one_by_one(model, prompts[:n], args.gen))
                rates['batch'].append(batched(model, prompts[:n], args.gen))
                if llm is not None:
                    rates['peer'].append(llama_cpp_one_by_one(llm, prompts[:n], args.gen))
                    rates['peer_batch'].append(peer_batch.decode_rate(prompts[:n], args.gen))
            a, b = statistics.median(rates['alone']), statistics.median(rates['batch'])
            row = f'| {n} | {a:.1f} | {b:.1f} | {b / a:.2f}× |'
            if llm is not None:
                c, d = statistics.median(rates['peer']), statistics.median(rates['peer_batch'])
                row += f' {c:.1f} | {b / c:.2f}× | {d:.1f} | {d / c:.2f}× | {b / d:.2f}× |'
            print(row)
    if peer_batch is not None:
        peer_batch.close()

if __name__ == '__main__':
    main()
