"""The machinery every bidirectional encoder shares: batches of token sequences padded side by
side, attention that never crosses texts, pooling, and calling the model with token ids.

A batch is ``n_seq`` sequences padded to one length ``n_len`` (texts of similar length are batched
together, so padding is small), laid out ``(n_embd, n_len, n_seq)``. Attention is computed per
sequence over its own real tokens only, so its cost grows with each text's length, not with the
batch's, and a text's vector does not depend on the batch it was in (bit for bit: tested):

* on the CPU, sequences shorter than ``SHORT`` (64) tokens run gadget's own attention kernel
  (:func:`gadget.ggml.gadget_attention`: each query over its sequence's real keys, sums in a fixed
  order), several times faster there than GGML's batched products or its untiled flash attention;
* longer ones (and every sequence on other backends) run GGML's flash attention with the padded
  keys masked: from 64 queries per head its CPU kernel is tiled and fast. The two kinds of
  sequence never share a batch.

Pooling (mean, first or last real token of each sequence) is done on the hidden states read back,
the mean accumulated in float64.

An architecture subclasses :class:`SequenceEncoder`, declares its hyper-parameters (with
``n_embd``, ``n_ctx_train`` and ``default_pooling``) and weights (with ``token_embd.weight``), and
writes ``forward`` from :meth:`SequenceEncoder.call_inputs` and :meth:`SequenceEncoder.attention`
to the last hidden states. Shapes in comments are in ggml order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import ggml as G
from ..model import GgmlModel, Input, Parameter, State, at_most, positive_int
from .layers import attention

__all__ = ['SequenceEncoder', 'POOLINGS', 'SHORT']

#: Sequences shorter than this run gadget's attention kernel on the CPU; from this length on, the
#: queries of one head fill GGML's flash-attention tile (GGML_FA_TILE_Q) and its tiled kernel runs.
SHORT = 64

#: Pooling names: per-token vectors, their mean, the first ([CLS]) or the last token's.
POOLINGS = ('none', 'mean', 'cls', 'last')


class SequenceEncoder(GgmlModel):
    """An encoder of token sequences (see the module docstring): ``model.embed(sequences)``.

    Parameters: ``context_length`` (the longest sequence, at most the model's positions),
    ``batch_size`` (tokens per graph, padding included; default 2048), ``max_sequences``
    (sequences per graph, default 256). Calls from several threads are serialised (``self.lock``).
    """

    context_length: Parameter(lambda p: p['n_ctx_train'], check=at_most('n_ctx_train'))
    batch_size: Parameter(lambda p: max(2048, p['context_length']), check=at_most('max_batch'))
    max_batch: Parameter(1 << 16)
    max_sequences: Parameter(lambda p: min(p['batch_size'], 256), check=positive_int)
    mask_size: Parameter(lambda p: p['batch_size'] * p['context_length'])

    # per-call inputs: padded token ids, each sequence's length, the flash-attention mask
    tokens: Input('I32', ('batch_size',))
    lengths: Input('I32', ('max_sequences',))
    mask: Input('F16', ('mask_size',))

    # what the graph is built for
    n_len: State(SHORT)
    n_seq: State(1)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.params['n_vocab'] = int(self.tensors['token_embd.weight'].ne[1])

    def call_inputs(self) -> Any:
        """For ``forward``: this call's token ids (I32, n_len * n_seq)."""
        n_tokens = self.state['n_len'] * self.state['n_seq']
        return G.ggml_view_1d(self.ctx_graph, self.tensors['tokens'], n_tokens, 0)

    def short(self, n_len: int) -> bool:
        """Whether sequences padded to ``n_len`` run gadget's attention kernel (see the module)."""
        return n_len < SHORT and self.custom_ops

    def attention(self, q: Any, k: Any, v: Any, name: str) -> Any:
        """Attention of each sequence's queries over its own real keys and values, scale
        ``1 / sqrt(head_dim)``. q, k, v: (head_dim, n_head, n_len, n_seq), contiguous (a linear
        layer's output reshaped). Returns (head_dim * n_head, n_len * n_seq)."""
        ctx, T = self.ctx_graph, self.tensors
        n_len, n_seq = self.state['n_len'], self.state['n_seq']
        if self.short(n_len):
            lengths = G.ggml_view_1d(ctx, T['lengths'], n_seq, 0)
            return G.gadget_attention(ctx, q, k, v, lengths, name=name)
        mask = G.ggml_view_4d(ctx, T['mask'], n_len, n_len, 1, n_seq, n_len * 2, n_len * n_len * 2,
                              n_len * n_len * 2, 0, name='kq_mask')              # (n_len, n_len, 1, n_seq)
        keys = G.ggml_permute(ctx, k, 0, 2, 1, 3)                        # (head_dim, n_len, n_head, n_seq)
        values = G.ggml_permute(ctx, v, 0, 2, 1, 3)
        return attention(ctx, q, keys, values=values, mask=mask, scale=1.0 / float(q.ne[0]) ** 0.5,
                         name=name, fused=True)

    # --- running it -------------------------------------------------------------------------------

    def batches(self, lengths: Sequence[int]) -> list[np.ndarray]:
        """How :meth:`embed` groups sequences of these lengths: lists of indices, longest first, each
        group padded to its longest member, within ``batch_size`` tokens and ``max_sequences``.
        A group holds short sequences (see :meth:`short`) or long ones, never both; a sequence
        less than half as long as a group's first starts a new group (padding it would cost more
        than a graph of its own)."""
        p = self.params
        n_tokens = np.asarray(lengths, dtype=np.int64)
        order = np.argsort(-n_tokens, kind='stable')
        groups: list[np.ndarray] = []
        start = 0
        while start < len(order):
            n_len = int(n_tokens[order[start]])
            count = max(1, min(p['max_sequences'], p['batch_size'] // n_len, len(order) - start))
            members = n_tokens[order[start:start + count]]
            # (the group's first member is never apart from itself, so every group has one)
            shorts = (members < SHORT) & self.short(1)
            apart = np.flatnonzero((members * 2 < n_len) | (shorts != self.short(n_len)))
            count = int(apart[0]) if apart.size else count
            groups.append(order[start:start + count])
            start += count
        return groups

    def embed(self, sequences: Sequence[Any], pooling: str | None = None,
              progress: Callable[[int], None] | None = None) -> Any:
        """Encode token sequences (each a 1-D sequence of ids, ``[CLS] ... [SEP]`` included).

        Returns a float32 array ``(len(sequences), n_embd)`` (numpy order) of pooled vectors in
        input order, or with ``pooling='none'`` a list of ``(n_tokens_i, n_embd)`` arrays, one per
        sequence.
        ``pooling`` defaults to the file's (``default_pooling``). Sequences are grouped by
        :meth:`batches`, one graph each; ``progress(n)`` is called after each group of ``n``.
        """
        self._check_open()
        pooling = self.params['default_pooling'] if pooling is None else pooling
        if pooling not in POOLINGS:
            raise ValueError(f'pooling must be one of {", ".join(POOLINGS)}, got {pooling!r}')
        ids = [self._checked(seq, i) for i, seq in enumerate(sequences)]
        out: list[Any] = [None] * len(ids)
        with self.lock:
            self._check_open()
            for group in self.batches([len(s) for s in ids]):
                for i, vectors in zip(group, self._run([ids[i] for i in group], pooling)):
                    out[i] = vectors
                if progress is not None:
                    progress(len(group))
        if pooling == 'none':
            return out
        return np.stack(out) if out else np.zeros((0, self.params['n_embd']), dtype=np.float32)

    def _checked(self, seq: Any, index: int) -> np.ndarray:
        p = self.params
        ids = np.asarray(seq)
        if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
            raise TypeError(f'sequence {index}: expected a 1-D sequence of token ids, got shape {ids.shape} '
                            f'of {ids.dtype}')
        if not 1 <= ids.size <= p['context_length']:
            raise ValueError(f"sequence {index} has {ids.size} tokens; allowed: 1 to context_length "
                             f"({p['context_length']})")
        n_vocab = p['n_vocab']
        if ids.min() < 0 or ids.max() >= n_vocab:
            bad = ids[(ids < 0) | (ids >= n_vocab)][0]
            raise ValueError(f'sequence {index}: token id {bad} is outside the vocabulary '
                             f'(0 to {n_vocab - 1})')
        return ids.astype(np.int32)

    def _run(self, seqs: list[np.ndarray], pooling: str) -> list[np.ndarray]:
        """One graph: the pooled vectors (or per-token states) of ``seqs``, in their order."""
        n_len, n_seq = max(s.size for s in seqs), len(seqs)
        lengths = np.array([s.size for s in seqs], dtype=np.int32)
        for key, value in (('n_len', n_len), ('n_seq', n_seq)):
            if self.state[key] != value:
                self.state[key] = value
        self.ensure_graph()
        tokens = np.zeros((n_seq, n_len), dtype=np.int32)
        for j, s in enumerate(seqs):
            tokens[j, :s.size] = s
        self.write('tokens', tokens)
        self.write('lengths', lengths)
        if not self.short(n_len):
            real = np.arange(n_len)[None, :] < lengths[:, None]                  # (n_seq, n_len): keys
            mask = np.where(real, np.float16(0), np.float16(-np.inf))
            self.write('mask', np.ascontiguousarray(np.broadcast_to(mask[:, None, :], (n_seq, n_len, n_len))))
        self.run()
        states = self.read(np.empty((n_seq, n_len, self.params['n_embd']), dtype=np.float32))
        if pooling == 'none':
            return [states[j, :n] for j, n in enumerate(lengths)]
        if pooling == 'mean':
            return [states[j, :n].mean(axis=0, dtype=np.float64).astype(np.float32)
                    for j, n in enumerate(lengths)]
        return list(states[np.arange(n_seq), 0 if pooling == 'cls' else lengths - 1])
