"""Stream a continuation piece by piece as it is generated.

Run: python examples/stream.py ["your prompt"]
"""

import sys

from gadget import TextGen

prompt = sys.argv[1] if len(sys.argv) > 1 else 'Once upon a time'
with TextGen() as gen:
    print(prompt, end='', flush=True)
    for piece in gen.stream(prompt, max_gen=96, temperature=0.7, min_p=0.05, seed=0, stop=['\n\n']):
        print(piece, end='', flush=True)
    print()
