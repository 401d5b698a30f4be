"""A short conversation with the default chat model; each turn reuses the KV cache.

Run: python examples/chat.py
"""

from gadget import TextChat

with TextChat(system='You are a helpful assistant. Answer briefly.') as chat:
    for question in ['What is the capital of France?', 'And what river flows through it?']:
        print('user     :', question)
        print('assistant: ', end='', flush=True)
        for piece in chat.stream_chat(question, max_gen=64, temperature=0):
            print(piece, end='', flush=True)
        print()
