"""Greedy continuations equal llama-cpp-python's on the same GGUF, attention computed alike.

Runs where llama-cpp-python is installed (it builds from source; see benchmarks/bench_textgen.py);
gadget's GGML libraries have their own names, so both GGML versions live in one process.
"""

from __future__ import annotations

import pytest

from gadget.textgen import TextGen, default_model_path

llama_cpp = pytest.importorskip('llama_cpp', reason='llama-cpp-python is not installed')

PROMPTS = ['The capital of France is', 'In 1969, astronauts', 'def fibonacci(n):',
           'The three laws of robotics are', 'Once upon a time in a small village,',
           'Photosynthesis is the process', 'The best way to learn a language']


@pytest.mark.parametrize('flash_attn', [False, True], ids=['defaults', 'flash_attn'])
def test_greedy_continuations_equal_llama_cpp(flash_attn):
    path = str(default_model_path())
    llm = llama_cpp.Llama(model_path=path, n_ctx=512, n_threads=2, verbose=False, flash_attn=flash_attn)
    try:
        with TextGen(path, context_length=512, n_threads=2, flash_attn=flash_attn, blas=False) as gen:
            for prompt in PROMPTS:
                ref = llm.create_completion(prompt, max_tokens=16, temperature=0, repeat_penalty=1.0,
                                            top_k=1)['choices'][0]['text']
                assert gen.generate(prompt, max_gen=16, temperature=0) == ref, prompt
    finally:
        llm.close()
