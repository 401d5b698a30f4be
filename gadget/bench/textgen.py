"""Text generation speed: gadget's LlamaModel against llama-cpp-python on the same GGUF, and
against transformers (torch, the GGUF dequantized to F32), same run.

For each: load time, prefill tok/s (a prompt of ``prompt`` tokens), decode tok/s (``gen`` greedy
tokens), and for gadget the Python time per decoded token (the step's wall time minus GGML's
compute time). gadget and llama-cpp-python are compared like for like: their defaults (attention as
matmul + softmax), and both with flash attention; gadget also with ``weight_type='BF16'`` (each
layer's matrices converted to BF16 when loaded: GGML's BF16 kernels, faster for long prompts on
CPUs with AVX-512-BF16). gadget and llama-cpp-python alternate in one process (they share the
system's OpenMP), so both see the same machine state; transformers runs in a process of its own
each round (torch brings its own OpenMP, whose idle threads would slow whatever runs next).
llama-cpp-python builds from source: ``CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python``.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..backends import backends
from .common import (Peer, alternate, find_peer, in_subprocess, markdown_table, median, number, plural,
                     progress_bar, ratio)

__all__ = ['TEXT', 'CONTEXT_LENGTH', 'QUICK', 'prompt_tokens', 'run_gadget', 'run_llama_cpp', 'run', 'report']

TEXT = ('The history of the printing press begins in the fifteenth century, when Johannes Gutenberg '
        'combined movable metal type, oil-based ink and a wooden press adapted from wine making. ') * 20
CONTEXT_LENGTH = 1024
# What --quick runs: small sizes, 1-2 repeats.
QUICK: dict[str, Any] = {'repeats': 1, 'prompt': 32, 'gen': 16}
LLAMA_CPP_INSTALL = 'CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python'
TRANSFORMERS_INSTALL = 'pip install torch transformers gguf accelerate'
LLAMA_CPP_NO_AMX_INSTALL = ("CMAKE_ARGS=\"-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8' "
                            "-DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8'\" pip install --force-reinstall "
                            "--no-cache-dir llama-cpp-python")
GADGET_DEFAULT = 'gadget (default)'
LLAMA_DEFAULT = 'llama-cpp-python (default)'
LLAMA_FLASH = 'llama-cpp-python `flash_attn=True`'


def prompt_tokens(path: str | os.PathLike, n: int) -> list[int]:
    """The first ``n`` tokens of :data:`TEXT` in the model's own tokenizer (from the GGUF)."""
    from ..tokenizer import load_tokenizer

    ids = load_tokenizer(path).encode(TEXT)
    if len(ids) < n:
        raise ValueError(f'the benchmark text has {len(ids)} tokens in this model\'s tokenizer, '
                         f'fewer than the prompt length asked ({n}): ask for a shorter prompt')
    return [int(t) for t in ids[:n]]


def run_gadget(path: str, tokens: list[int], n_gen: int, threads: int, flash_attn: bool,
               weight_type: str | None = None, blas: bool | None = None) -> dict[str, float]:
    """Load the model with gadget, prefill ``tokens``, decode ``n_gen`` greedy tokens; return
    ``load_s``, ``prefill_tps``, ``decode_tps`` and ``python_ms_per_token``."""
    from ..models import LlamaModel

    start = time.perf_counter()
    model = LlamaModel.from_path(path, n_threads=threads, context_length=CONTEXT_LENGTH, batch_size=512,
                                 flash_attn=flash_attn, weight_type=weight_type, blas=blas)
    load = time.perf_counter() - start
    try:
        # Warm-up: one prefill of the same length (its graph built and allocated, a BLAS build's
        # OpenBLAS started), then start over: what every prompt after the first one costs.
        model(tokens)
        model.reset()
        start = time.perf_counter()
        logits = model(tokens)
        prefill = time.perf_counter() - start
        token = int(np.argmax(logits))
        model([token])                          # the first decode step builds the decode graph
        model.compute_seconds = 0.0
        start = time.perf_counter()
        for _ in range(n_gen):
            token = int(np.argmax(model([token])))
        decode = time.perf_counter() - start
        python_ms = (decode - model.compute_seconds) / n_gen * 1e3
    finally:
        model.close()
    return {'load_s': load, 'prefill_tps': len(tokens) / prefill, 'decode_tps': n_gen / decode,
            'python_ms_per_token': python_ms}


def run_llama_cpp(path: str, tokens: list[int], n_gen: int, threads: int,
                  flash_attn: bool) -> dict[str, float]:
    """The same with llama-cpp-python (no Python-time figure: it has no compute-time counter)."""
    from llama_cpp import Llama

    start = time.perf_counter()
    llm = Llama(model_path=path, n_ctx=CONTEXT_LENGTH, n_batch=512, n_ubatch=512, n_threads=threads,
                n_threads_batch=threads, flash_attn=flash_attn, verbose=False)
    load = time.perf_counter() - start
    try:
        llm.eval(tokens)                        # the same warm-up
        llm.reset()
        start = time.perf_counter()
        llm.eval(tokens)
        prefill = time.perf_counter() - start
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([token])
        start = time.perf_counter()
        for _ in range(n_gen):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            llm.eval([token])
        decode = time.perf_counter() - start
    finally:
        llm.close()
    return {'load_s': load, 'prefill_tps': len(tokens) / prefill, 'decode_tps': n_gen / decode}


def llama_cpp_prompt_check(path: str) -> int:
    """llama-cpp-python evaluates a two-token prompt (run in a child by :func:`llama_cpp_peer`);
    returns how many tokens its context then holds."""
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=64, n_batch=64, n_threads=1, verbose=False)
    try:
        llm.eval([1, 2])
        return int(llm.n_tokens)
    finally:
        llm.close()


def llama_cpp_peer(path: str) -> Peer:
    """llama-cpp-python as a peer, once a child process has seen it evaluate a prompt: a build that
    kills its process (a native build of GGML's AMX kernels does on Sapphire Rapids with GCC 12: the
    tile configuration is optimised away, llama.cpp PR #26954) is reported, not run in this one."""
    peer = find_peer('llama-cpp-python', ['llama_cpp'], 'llama_cpp_python', LLAMA_CPP_INSTALL,
                     import_first=True)
    if peer.present:
        try:
            in_subprocess(f'{__name__}:llama_cpp_prompt_check', {'path': path}, timeout=300)
        except RuntimeError as exc:
            return Peer(peer.name, peer.install, reason=(
                f'its build failed on a two-token prompt ({exc}); on a CPU with AMX, build it '
                f'without AMX: {LLAMA_CPP_NO_AMX_INSTALL}'))
    return peer


def interleaved_decode(path: str, tokens: list[int], threads: int, rounds: int,
                       block: int = 64) -> dict[str, Any]:
    """Decode speed of gadget (default) and of llama-cpp-python in both its attention modes (its
    default, unfused, and ``flash_attn=True``: which is faster depends on the CPU), all three loaded
    in this process, taking turns every ``block`` greedy tokens after the same prompt (A B C C B A
    in each round, the order rotated from round to round): on a shared machine they see the same
    minute far more closely than whole runs one after the other do. Returns each one's median tok/s
    over its blocks (``tps``), and the median over the rounds of gadget / the faster
    llama-cpp-python mode of that round (``ratio``, each round's in ``ratios``)."""
    from llama_cpp import Llama

    from ..models import LlamaModel

    model = LlamaModel.from_path(path, n_threads=threads, context_length=CONTEXT_LENGTH, batch_size=512)
    peers = {mode: Llama(model_path=path, n_ctx=CONTEXT_LENGTH, n_batch=512, n_ubatch=512,
                         n_threads=threads, n_threads_batch=threads, flash_attn=flash, verbose=False)
             for mode, flash in ((LLAMA_DEFAULT, False), (LLAMA_FLASH, True))}

    def gadget_block() -> float:
        model.reset()
        token = int(np.argmax(model(tokens)))
        token = int(np.argmax(model([token])))
        start = time.perf_counter()
        for _ in range(block):
            token = int(np.argmax(model([token])))
        return block / (time.perf_counter() - start)

    def llama_block(llm: Any) -> float:
        llm.reset()
        llm.eval(tokens)
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        start = time.perf_counter()
        for _ in range(block):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        return block / (time.perf_counter() - start)

    runners: dict[str, Callable[[], float]] = {GADGET_DEFAULT: gadget_block}
    runners.update({mode: functools.partial(llama_block, llm) for mode, llm in peers.items()})
    names = list(runners)
    try:
        rates: dict[str, list[float]] = {name: [] for name in names}
        ratios = []
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            got: dict[str, float] = dict.fromkeys(names, 0.0)
            for name in order + order[::-1]:
                rate = runners[name]()
                rates[name].append(rate)
                got[name] += rate
            ratios.append(got[GADGET_DEFAULT] / max(got[mode] for mode in peers))
    finally:
        model.close()
        for llm in peers.values():
            llm.close()
    return {'rounds': rounds, 'block': block, 'tps': {name: median(v) for name, v in rates.items()},
            'ratio': median(ratios), 'ratios': ratios}


def run_transformers(path: str, tokens: list[int], n_gen: int, threads: int) -> dict[str, float]:
    """The same with transformers: the GGUF dequantized to an F32 torch model (``load_s`` includes
    the dequantization), prefill as one forward pass, decode with its KV cache (``past_key_values``)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name,
                                                 dtype=torch.float32)
    model.eval()
    load = time.perf_counter() - start
    ids = torch.tensor([tokens])
    with torch.inference_mode():
        model(ids)                              # the same warm-up
        start = time.perf_counter()
        out = model(ids, use_cache=True)
        prefill = time.perf_counter() - start
        past, token = out.past_key_values, out.logits[0, -1].argmax().view(1, 1)
        out = model(token, past_key_values=past, use_cache=True)
        past, token = out.past_key_values, out.logits[0, -1].argmax().view(1, 1)
        start = time.perf_counter()
        for _ in range(n_gen):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[0, -1].argmax().view(1, 1)
        decode = time.perf_counter() - start
    return {'load_s': load, 'prefill_tps': len(tokens) / prefill, 'decode_tps': n_gen / decode}


def run(path: str | os.PathLike | None = None, threads: int = 2, repeats: int = 5, prompt: int = 256,
        gen: int = 128, progress: bool = True) -> dict[str, Any]:
    """Measure gadget (default: flash attention; ``flash_attn=False``, ``weight_type='BF16'``, and
    ``blas=False`` in a build with BLAS) and, when installed, llama-cpp-python (default: unfused
    attention; ``flash_attn=True``) and transformers, alternating for ``repeats`` rounds; medians.
    Ratios: each library's default against the other's, and each attention against the same.

    Arguments:
        path: a Llama-architecture GGUF (default: gadget's default model, SmolLM2-135M-Instruct Q4_1).

    Returns ``{'suite': 'textgen', 'blas_build', 'settings', 'peers', 'model', 'rows': [{'name',
    'library', 'flash_attn', 'weight_type', 'blas' (None: the default), 'variant', 'load_s',
    'prefill_tps', 'decode_tps', 'python_ms_per_token'}],
    'ratios': [{'mode', 'peer', 'prefill', 'decode', 'load_faster'}]}`` (gadget / the peer; no
    ratios for an absent peer).
    """
    if prompt < 1 or gen < 1 or prompt + gen + 2 > CONTEXT_LENGTH:
        raise ValueError(f'prompt ({prompt}) and gen ({gen}) must be positive and fit in '
                         f'{CONTEXT_LENGTH} tokens with the warm-up steps')
    if path is None:
        from ..textgen import default_model_path
        path = default_model_path()
    path = str(path)
    tokens = prompt_tokens(path, prompt)
    peer = llama_cpp_peer(path)
    hf = find_peer('transformers', ['transformers', 'torch', 'gguf', 'accelerate'], 'transformers',
                   TRANSFORMERS_INSTALL)
    # (name, library, flash_attn, variant, runner), variant None, 'BF16' (weight_type) or 'no BLAS'
    # (blas=False); gadget and the peers interleaved, as the table shows them.
    configs: list[tuple[str, str, bool, str | None, Callable[[], dict[str, float]]]] = []
    for flash in (True, False):
        # gadget's default is flash attention (llama.cpp's 'auto'); llama-cpp-python's is unfused
        mode = '(default)' if flash else '`flash_attn=False`'
        configs.append((f'gadget {mode}', 'gadget', flash, None,
                        functools.partial(run_gadget, path, tokens, gen, threads, flash)))
        if peer.present:
            mode = '`flash_attn=True`' if flash else '(default)'
            configs.append((f'llama-cpp-python {mode}', 'llama-cpp-python', flash, None,
                            functools.partial(run_llama_cpp, path, tokens, gen, threads, flash)))
    configs.append(("gadget `weight_type='BF16'`", 'gadget', True, 'BF16',
                    functools.partial(run_gadget, path, tokens, gen, threads, True, 'BF16')))
    if 'blas' in backends():
        # the default of a BLAS build is BLAS on: the CPU backend alone as well
        configs.append(('gadget `blas=False`', 'gadget', True, 'no BLAS',
                        functools.partial(run_gadget, path, tokens, gen, threads, True, None, False)))
    if hf.present:
        configs.append(('transformers (F32)', 'transformers', False, None, functools.partial(
            in_subprocess, f'{__name__}:run_transformers',
            {'path': path, 'tokens': tokens, 'n_gen': gen, 'threads': threads})))
    bar = progress_bar(repeats * len(configs), 'textgen', progress)
    runs = alternate({name: fn for name, _, _, _, fn in configs}, repeats, bar)
    bar.close()
    # the decode ratio once more, the two libraries alternating every block of tokens
    interleaved = (interleaved_decode(path, tokens, threads, rounds=2 * repeats, block=min(gen, 64))
                   if peer.present else None)
    rows = []
    for name, library, flash, variant, _ in configs:
        results = runs[name]
        row: dict[str, Any] = {'name': name, 'library': library, 'flash_attn': flash,
                               'weight_type': 'BF16' if variant == 'BF16' else None,
                               'blas': False if variant == 'no BLAS' else None, 'variant': variant}
        for key in ('load_s', 'prefill_tps', 'decode_tps', 'python_ms_per_token'):
            row[key] = median(r[key] for r in results) if key in results[0] else None
        rows.append(row)
    by_key = {(row['library'], row['flash_attn'], row['variant']): row for row in rows}
    pairs = []   # (mode, gadget row, peer row)
    if peer.present:
        llama_fa = by_key['llama-cpp-python', True, None]
        llama_unfused = by_key['llama-cpp-python', False, None]
        pairs += [('default', by_key['gadget', True, None], llama_unfused),
                  ('flash_attn', by_key['gadget', True, None], llama_fa),
                  ('unfused', by_key['gadget', False, None], llama_unfused)]
        if ('gadget', True, 'no BLAS') in by_key:
            pairs.append(('`blas=False`', by_key['gadget', True, 'no BLAS'], llama_fa))
        pairs.append(('BF16 weights', by_key['gadget', True, 'BF16'], llama_fa))
    if hf.present:
        pairs += [(mode, by_key['gadget', True, wtype], by_key['transformers', False, None])
                  for mode, wtype in (('default', None), ('BF16 weights', 'BF16'))]
    ratios = [{'mode': mode, 'peer': p['library'], 'prefill': g['prefill_tps'] / p['prefill_tps'],
               'decode': g['decode_tps'] / p['decode_tps'], 'load_faster': p['load_s'] / g['load_s']}
              for mode, g, p in pairs]
    return {'suite': 'textgen', 'title': 'Text generation', 'blas_build': 'blas' in backends(),
            'settings': {'threads': threads, 'repeats': repeats, 'prompt': prompt, 'gen': gen},
            'model': {'path': path, 'name': Path(path).name}, 'peers': [peer.as_dict(), hf.as_dict()],
            'rows': rows, 'ratios': ratios, 'interleaved': interleaved}


def _blas_note(result: dict[str, Any]) -> str:
    return (' This build has the BLAS backend: gadget uses it unless `blas=False`.'
            if result.get('blas_build') else '')


def _speed(faster: float) -> str:
    return f'{faster:.1f}× faster' if faster >= 1 else f'{1 / faster:.1f}× slower'


def report(result: dict[str, Any]) -> str:
    """The table of ``benchmarks/RESULTS.md``'s text-generation sections, from :func:`run`'s result."""
    s = result['settings']
    table = markdown_table(['', 'load s', 'prefill tok/s', 'decode tok/s', 'python ms/tok'],
                           [[r['name'], number(r['load_s'], 3), number(r['prefill_tps']),
                             number(r['decode_tps']), '' if r['python_ms_per_token'] is None
                             else number(r['python_ms_per_token'], 3)] for r in result['rows']])
    present = [p for p in result['peers'] if p['version'] is not None]
    absent = [f"{p['name']}: {p['reason']}" for p in result['peers'] if p['version'] is None]
    if result['ratios']:
        ratios = markdown_table(['gadget / peer', 'peer', 'prefill', 'decode', 'load'],
                                [[q['mode'], q['peer'], ratio(q['prefill']), ratio(q['decode']),
                                  _speed(q['load_faster'])] for q in result['ratios']])
    else:
        ratios = 'no comparison.'
    who = ', '.join(f"{p['name']} {p['version']}" for p in present) or 'gadget alone'
    notes = ''.join(f'\n\n{line}' for line in absent)
    i = result.get('interleaved')
    if i:
        rounds = ', '.join(f'{x:.2f}' for x in i['ratios'])
        rates = ', '.join(f'{name} {number(tps)}' for name, tps in i['tps'].items())
        notes += (f"\n\nDecode, the three taking turns every {i['block']} tokens in one process "
                  f"(A B C C B A, {i['rounds']} rounds), tok/s: {rates}; median over the rounds of "
                  f"gadget / the faster llama-cpp-python mode **{ratio(i['ratio'])}** (rounds {rounds}).")
    return (f"{result['model']['name']}, {plural(s['threads'], 'thread')}, a {s['prompt']}-token prompt, "
            f"{s['gen']} greedy tokens; gadget and {who} alternating, median of {s['repeats']}."
            f"{_blas_note(result)}\n\n"
            f"{table}\n\n{ratios}{notes}")
