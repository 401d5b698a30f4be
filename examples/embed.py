"""Semantic search over a few sentences with the default embedding model (all-MiniLM-L6-v2).

    python examples/embed.py "Where do cats like to sleep?"
"""

import sys

from gadget import EmbedNumpy

DOCUMENTS = [
    'Cats often sleep in warm, sunny spots such as window sills.',
    'The central bank raised interest rates by a quarter point.',
    'A good sourdough needs a mature starter and a long, cool rise.',
    'The striker scored twice in the second half of the final.',
    'Dogs need a daily walk and plenty of play to stay healthy.',
    'GGML runs matrix products on the CPU with hand-written SIMD kernels.',
]

query = ' '.join(sys.argv[1:]) or 'Where do cats like to sleep?'
with EmbedNumpy() as embed:
    documents = embed.embed(DOCUMENTS)          # (6, 384), unit length
    scores = documents @ embed.embed(query)     # cosine similarities
for rank, i in enumerate(scores.argsort()[::-1][:3], 1):
    print(f'{rank}. {scores[i]:.3f}  {DOCUMENTS[i]}')
