"""The machinery every KV-cached decoder shares: the cache tensors and per-call inputs, the
states the graph is built for, and calling the model with token ids (chunked into batches,
planned by :class:`~gadget.models.cache.KVCache`, a failed call leaving the cache as it was).

An architecture subclasses :class:`CachedDecoder`, declares its hyper-parameters (with ``n_layer``,
``n_kv`` = values per cache row, ``n_ctx_train``) and weights, sets ``params['n_vocab']`` and
writes ``forward``, taking its inputs from :meth:`CachedDecoder.call_inputs`.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .. import ggml as G
from ..model import Buffer, GgmlModel, Input, Parameter, State, ggml_type_in, one_of, positive_int
from .cache import KV_STEP, KVCache
from .tokens import token_ids

__all__ = ['CachedDecoder', 'DEFAULT_CONTEXT', 'KV_STEP']

DEFAULT_CONTEXT = 4096   # default cap on the KV cache (the model's own length may be far larger)
_LAST_ROW = np.zeros(1, dtype=np.int32)   # out_index of a one-token call (read-only, shared)
_LAST_ROW.flags.writeable = False


class CachedDecoder(GgmlModel):
    """A decoder-only language model over a KV cache (see the module docstring).

    Call it with token ids: ``logits = model(tokens)`` returns the logits of the last position
    (numpy ``(n_vocab,)``), or of every new position with ``all_logits=True`` (``(n, n_vocab)``).
    The cache keeps the tokens seen so far (``n_past``); ``reset()`` empties it and ``rewind(n)``
    keeps only the first ``n``. Calls from several threads are serialised (``self.lock``).
    """

    context_length: Parameter(lambda p: min(int(p['n_ctx_train']), DEFAULT_CONTEXT), check=positive_int)
    batch_size: Parameter(lambda p: min(512, int(p['context_length'])), check=positive_int)
    kv_type: Parameter('F16', check=ggml_type_in('F16', 'F32', 'BF16'))
    # True (default): GGML's fused flash attention, as llama.cpp computes attention by default (its
    # 'auto' turns it on where the backend has it) and llama-cpp-python with flash_attn=True;
    # False: matmul + softmax over a transposed V cache, llama-cpp-python's default.
    flash_attn: Parameter(True, check=one_of(False, True))
    mask_size: Parameter(lambda p: p['context_length'] * p['batch_size'])
    # Without flash attention the V cache is stored transposed (positions along rows), as llama.cpp
    # does, and written element by element through v_index.
    v_ne0: Parameter(lambda p: p['n_kv'] if p['flash_attn'] else p['context_length'])
    v_ne1: Parameter(lambda p: p['context_length'] if p['flash_attn'] else p['n_kv'])
    v_index_size: Parameter(lambda p: 1 if p['flash_attn'] else p['batch_size'] * p['n_kv'])

    # KV cache and per-call inputs
    cache_k: Buffer('kv_type', ('n_kv', 'context_length'), name='cache_k.{i}', repeat='n_layer')
    cache_v: Buffer('kv_type', ('v_ne0', 'v_ne1'), name='cache_v.{i}', repeat='n_layer')
    tokens: Input('I32', ('batch_size',))
    positions: Input('I32', ('batch_size',))
    kv_index: Input('I64', ('batch_size',))
    out_index: Input('I32', ('batch_size',))
    v_index: Input('I64', ('v_index_size',))
    mask: Input('F16', ('mask_size',))

    # what the graph is built for
    n_tokens: State(1)
    n_window: State(KV_STEP)
    n_outputs: State(1)
    rowwise: State(False)      # the graph of several sequences' single tokens: no BLAS offload

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        p = self.params
        self.cache = KVCache(int(p['context_length']), int(p['n_kv']), transposed_v=not p['flash_attn'])
        self.state['n_window'] = min(KV_STEP, int(p['context_length']))

    def call_inputs(self) -> tuple[Any, ...]:
        """Views of this call's inputs, for ``forward``: token ids, positions, cache rows (I64), output
        rows, the transposed-V index (None with flash attention) and the mask ``kq_mask``."""
        ctx, p, T = self.ctx_graph, self.params, self.tensors
        n_tokens, n_window = self.state['n_tokens'], self.state['n_window']
        return (G.ggml_view_1d(ctx, T['tokens'], n_tokens, 0),
                G.ggml_view_1d(ctx, T['positions'], n_tokens, 0),
                G.ggml_view_1d(ctx, T['kv_index'], n_tokens, 0),
                G.ggml_view_1d(ctx, T['out_index'], self.state['n_outputs'], 0),
                None if p['flash_attn'] else G.ggml_view_1d(ctx, T['v_index'], n_tokens * p['n_kv'], 0),
                G.ggml_view_2d(ctx, T['mask'], n_window, n_tokens, n_window * 2, 0, name='kq_mask'))

    # --- running it -------------------------------------------------------------------------------

    @property
    def n_past(self) -> int:
        """Tokens in the cache."""
        return self.cache.n_past()

    def reset(self) -> None:
        """Forget every cached token."""
        with self.lock:
            self.cache.clear()

    def rewind(self, n_keep: int) -> None:
        """Keep only the first ``n_keep`` cached tokens (the rest are overwritten by later calls)."""
        with self.lock:
            self.cache.keep(n_keep)

    def __call__(self, tokens: Any, all_logits: bool = False) -> np.ndarray:  # type: ignore[override]
        """Evaluate ``tokens`` after the cached ones; return the last position's logits (n_vocab,)
        or, with ``all_logits``, every new position's (n_tokens, n_vocab), numpy order, float32."""
        ids = token_ids(tokens, self.params['n_vocab'])
        with self.lock:                        # one call at a time; close() waits for it
            self._check_open()
            self.cache.check_fits(ids.size)    # before anything is computed
            batch = self.params['batch_size']
            outputs = []
            for start in range(0, ids.size, batch):
                chunk = ids[start:start + batch]
                n_out = chunk.size if all_logits else 1
                logits = self._step(chunk, n_out)
                if all_logits or start + batch >= ids.size:
                    outputs.append(logits)
        return np.concatenate(outputs) if all_logits else outputs[-1][-1]

    def _step(self, chunk: np.ndarray, n_out: int) -> np.ndarray:
        return self._run_chunk([(0, chunk)], list(range(chunk.size - n_out, chunk.size)))

    def _host_offload(self) -> bool:
        return not self.state['rowwise']

    def _run_chunk(self, parts: list[tuple[int, np.ndarray]], out_rows: list[int],
                   rowwise: bool = False) -> np.ndarray:
        """One graph: the tokens of ``parts`` (``(seq, ids)``, each sequence once) after their
        cached ones; the logits of the rows ``out_rows`` of the chunk, ``(len(out_rows), n_vocab)``.
        ``rowwise``: every row on the CPU backend's kernels, as a row alone (no BLAS offload)."""
        plan = self.cache.plan_batch([(seq, ids.size) for seq, ids in parts])
        tokens = parts[0][1] if len(parts) == 1 else np.concatenate([ids for _, ids in parts])
        n, n_out = tokens.size, len(out_rows)
        for key, value in (('n_tokens', n), ('n_window', plan.window), ('n_outputs', n_out),
                           ('rowwise', rowwise)):
            if self.state[key] != value:
                self.state[key] = value
        self.ensure_graph()
        self.write('tokens', tokens)
        self.write('positions', plan.positions)
        self.write('kv_index', plan.rows)
        first_only = n_out == 1 and out_rows[0] == 0
        self.write('out_index', _LAST_ROW if first_only else np.asarray(out_rows, dtype=np.int32))
        self.write('mask', plan.mask)
        if plan.v_index is not None:
            self.write('v_index', plan.v_index)
        self.run()
        self.cache.commit(plan)
        return self.read(np.empty((n_out, self.params['n_vocab']), dtype=np.float32))

    # --- several sequences ------------------------------------------------------------------------

    def batch(self, sequences: Mapping[int, Any]) -> dict[int, np.ndarray]:
        """Evaluate new tokens of several sequences together: ``{seq: tokens}`` -> ``{seq: logits}``
        of each sequence's last new position (numpy ``(n_vocab,)``, float32).

        Each sequence's tokens follow its own cached ones (sequence ids are ints >= 0; id 0 is the
        one plain calls use). The tokens are packed into graphs of at most ``batch_size`` tokens, so
        one decode step of N sequences (one token each) is one graph of N rows; a token attends
        only to its own sequence. All sequences share the cache's ``context_length`` cells:
        :class:`ContextOverflowError` before anything is computed when the tokens do not fit.
        :meth:`forget` frees a finished sequence's cells for a new prompt.

        A sequence's several new tokens (a prompt) are computed in graphs of their own, as a call
        of their own would compute them; the sequences' single new tokens (decode steps) share
        graphs, one row each, on the CPU backend's kernels. So with flash attention (the default)
        and weights whose products GGML computes row by row (e.g. Q4_1, Q8_0) each sequence's
        logits are bit for bit its one-by-one logits. With the unfused attention they agree up to
        rounding (GGML tiles the attention products of several rows differently from one row's),
        which the 8-bit rounding of the activations can turn into a visible difference at some
        steps (SmolLM2 Q4_1: 1 of 8 greedy continuations differed after a few tokens).
        """
        if not isinstance(sequences, Mapping):
            raise TypeError(f'batch() takes {{sequence id: tokens}}, got {type(sequences).__name__}')
        n_vocab = self.params['n_vocab']
        items = []
        for seq, tokens in sequences.items():
            if isinstance(seq, bool) or not isinstance(seq, (int, np.integer)) or seq < 0:
                raise ValueError(f'sequence ids are ints >= 0, got {seq!r}')
            items.append((int(seq), token_ids(tokens, n_vocab)))
        with self.lock:
            self._check_open()
            self.cache.check_fits_batch([(seq, ids.size) for seq, ids in items])   # before computing
            batch = self.params['batch_size']
            results: dict[int, np.ndarray] = {}
            # A sequence's several new tokens (a prompt) run in graphs of their own, chunked as a
            # call of its own would chunk them: the same products, over the same number of rows,
            # as alone. The single new tokens of the others (decode steps) share graphs, one row
            # each, on the CPU's row-by-row kernels (never BLAS, which a row alone would not get).
            singles = [(seq, ids) for seq, ids in items if ids.size == 1]
            for seq, ids in items:
                if ids.size > 1:
                    for start in range(0, ids.size, batch):
                        chunk = ids[start:start + batch]
                        results[seq] = self._run_chunk([(seq, chunk)], [chunk.size - 1])[0]
            for start in range(0, len(singles), batch):
                parts = singles[start:start + batch]
                logits = self._run_chunk(parts, list(range(len(parts))), rowwise=len(parts) > 1)
                for i, (seq, _) in enumerate(parts):
                    results[seq] = logits[i]
        return {seq: results[seq] for seq, _ in items}

    def forget(self, seq: int) -> None:
        """Drop sequence ``seq`` from the cache (its cells are free for other sequences)."""
        with self.lock:
            self.cache.forget(int(seq))

    def sequence_length(self, seq: int) -> int:
        """Tokens of sequence ``seq`` in the cache (``n_past`` is sequence 0's)."""
        return self.cache.n_past(int(seq))
