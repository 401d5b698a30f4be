"""How close gadget's logits are to transformers' F32 logits on the same GGUF, per compute path.

transformers dequantizes the GGUF (SmolLM2-135M Q4_1 by default) to an F32 torch model: the
reference. gadget runs the same file with the CPU backend alone (``blas=False``: GGML's kernels, the
activations rounded to 8 bits for the quantized products, as llama.cpp computes), with the BLAS
backend (``blas=True``, where the build has it: the weights dequantized to F32 and multiplied in
F32), and with ``weight_type='BF16'``. For each: the largest and the mean absolute difference of
the logits over every position of the prompts, and how often the argmax (the greedy token) agrees.

Usage: python benchmarks/bench_fidelity.py [--model FILE.gguf] [--tokens 128] [--threads 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from gadget.bench.textgen import TEXT
from gadget.backends import backends
from gadget.models import LlamaModel
from gadget.textgen import default_model_path
from gadget.tokenizer import load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default=None)
    parser.add_argument('--tokens', type=int, default=128)
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args()
    path = str(args.model or default_model_path())
    ids = [int(t) for t in load_tokenizer(path).encode(TEXT)]
    # three prompts: the benchmark text from its start, from its middle, and a mix of short words
    starts = (0, len(ids) // 2, len(ids) // 3)
    prompts = [ids[s:s + args.tokens] for s in starts]

    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(args.threads)
    hf = AutoModelForCausalLM.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name,
                                              dtype=torch.float32)
    with torch.inference_mode():
        reference = [hf(torch.tensor([p])).logits[0].numpy() for p in prompts]
    del hf

    configs = {'CPU backend (`blas=False`)': dict(blas=False)}
    if 'blas' in backends():
        configs['BLAS backend (`blas=True`)'] = dict(blas=True)
    configs["`weight_type='BF16'`, `blas=False`"] = dict(weight_type='BF16', blas=False)
    print(f'{Path(path).name}: {len(prompts)} prompts of {args.tokens} tokens, logits of every position '
          f'against transformers (F32, the GGUF dequantized)\n')
    print('| gadget | max abs diff | mean abs diff | argmax agrees |')
    print('|---|---|---|---|')
    for name, kwargs in configs.items():
        diffs, agree = [], []
        with LlamaModel.from_path(path, n_threads=args.threads, context_length=512, kv_type='F32',
                                  **kwargs) as model:
            for prompt, ref in zip(prompts, reference):
                model.reset()
                got = model(prompt, all_logits=True)
                diffs.append(np.abs(got - ref))
                agree.append(got.argmax(-1) == ref.argmax(-1))
        d, a = np.concatenate(diffs), np.concatenate(agree)
        print(f'| {name} | {d.max():.4f} | {d.mean():.5f} | {100 * a.mean():.1f} % |')


if __name__ == '__main__':
    main()
