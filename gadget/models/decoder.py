"""The machinery every KV-cached decoder shares: the cache tensors and per-call inputs, the
states the graph is built for, and calling the model with token ids (chunked into batches,
planned by :class:`~gadget.models.cache.KVCache`, a failed call leaving the cache as it was).

An architecture subclasses :class:`CachedDecoder`, declares its hyper-parameters (with ``n_layer``,
``n_kv`` = values per cache row, ``n_ctx_train``) and weights, sets ``params['n_vocab']`` and
writes ``forward``, taking its inputs from :meth:`CachedDecoder.call_inputs`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import ggml as G
from ..model import Buffer, GgmlModel, Input, Parameter, State, ggml_type_in, one_of, positive_int
from .cache import KV_STEP, KVCache
from .tokens import token_ids

__all__ = ['CachedDecoder', 'DEFAULT_CONTEXT', 'KV_STEP']

DEFAULT_CONTEXT = 4096   # default cap on the KV cache (the model's own length may be far larger)


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
    # False (default): matmul + softmax as llama.cpp (and llama-cpp-python by default) computes
    # attention; True: GGML's fused flash attention, as llama.cpp with flash attention on.
    flash_attn: Parameter(False, check=one_of(False, True))
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
        n = chunk.size
        plan = self.cache.plan(n)
        for key, value in (('n_tokens', n), ('n_window', plan.window), ('n_outputs', n_out)):
            if self.state[key] != value:
                self.state[key] = value
        self.ensure_graph()
        self.write('tokens', chunk)
        self.write('positions', plan.positions)
        self.write('kv_index', plan.rows)
        self.write('out_index', np.arange(n - n_out, n, dtype=np.int32))
        self.write('mask', plan.mask)
        if plan.v_index is not None:
            self.write('v_index', plan.v_index)
        self.run()
        self.cache.commit(plan)
        return self.read(np.empty((n_out, self.params['n_vocab']), dtype=np.float32))
