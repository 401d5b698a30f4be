"""The machinery every bidirectional encoder shares: batches of token sequences padded side by
side, attention blocks that never cross texts, pooling, and calling the model with token ids.

A batch is ``n_seq`` sequences padded to one length ``n_len`` (texts of similar length are batched
together, so padding is small), laid out ``(n_embd, n_len, n_seq)``. Attention runs on blocks of
``group`` neighbouring sequences (``group * n_len`` >= 64 tokens, the size from which GGML's CPU
flash attention uses its tiled kernel; one sequence per block from 64 tokens on), masked so that
no token attends to another text or to padding: the cost grows with each text's length, not with
the batch's. Pooling is a product with a ``(n_len * n_seq, n_seq)`` weight matrix (mean, first or
last real token of each sequence).

An architecture subclasses :class:`SequenceEncoder`, declares its hyper-parameters (with
``n_embd``, ``n_ctx_train`` and ``default_pooling``) and weights (with ``token_embd.weight``), and
writes ``forward`` from :meth:`SequenceEncoder.call_inputs` to :meth:`SequenceEncoder.pooled`.
Shapes in comments are in ggml order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import ggml as G
from ..model import GgmlModel, Input, Parameter, State, at_most, positive_int

__all__ = ['SequenceEncoder', 'POOLINGS', 'ATTENTION_BLOCK']

#: Tokens per attention block from which GGML's CPU flash attention runs its tiled kernel
#: (GGML_FA_TILE_Q); shorter sequences are grouped into blocks at least this long.
ATTENTION_BLOCK = 64

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
    mask_size: Parameter(lambda p: p['batch_size'] * (p['context_length'] + ATTENTION_BLOCK))
    pool_size: Parameter(lambda p: p['batch_size'] * p['max_sequences'])

    # per-call inputs: padded token ids, the attention mask, the pooling weights
    tokens: Input('I32', ('batch_size',))
    mask: Input('F16', ('mask_size',))
    pool: Input('F32', ('pool_size',))

    # what the graph is built for
    n_len: State(ATTENTION_BLOCK)      # (one block: the graph built at load)
    n_seq: State(1)
    pooling: State('mean')

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.params['n_vocab'] = int(self.tensors['token_embd.weight'].ne[1])

    def call_inputs(self) -> tuple[Any, Any, int, int]:
        """For ``forward``: the token ids (I32, n_len * n_seq), the attention mask
        (n_block, n_block, 1, n_blocks) and the block shape ``(n_block, n_blocks)``."""
        ctx, T = self.ctx_graph, self.tensors
        n_len, n_seq = self.state['n_len'], self.state['n_seq']
        group = self.group(n_len)
        n_block, n_blocks = n_len * group, n_seq // group
        block_bytes = n_block * n_block * 2
        mask = G.ggml_view_4d(ctx, T['mask'], n_block, n_block, 1, n_blocks, n_block * 2, block_bytes,
                              block_bytes, 0, name='kq_mask')
        return G.ggml_view_1d(ctx, T['tokens'], n_len * n_seq, 0), mask, n_block, n_blocks

    def pooled(self, x: Any) -> Any:
        """The graph's output from the last hidden states ``x`` (n_embd, n_tokens): pooled
        (n_embd, n_seq), or ``x`` itself with pooling ``'none'``."""
        if self.state['pooling'] == 'none':
            return x
        ctx, n_tokens, n_seq = self.ctx_graph, x.ne[1], self.state['n_seq']
        pool = G.ggml_view_2d(ctx, self.tensors['pool'], n_tokens, n_seq, n_tokens * 4, 0)   # (n_tok, n_seq)
        x_t = G.ggml_cont(ctx, G.ggml_transpose(ctx, x))                             # (n_tokens, n_embd)
        return G.ggml_mul_mat(ctx, x_t, pool, name='result_embd_pooled')            # (n_embd, n_seq)

    # --- running it -------------------------------------------------------------------------------

    def group(self, n_len: int) -> int:
        """How many sequences of ``n_len`` tokens share an attention block."""
        p = self.params
        return max(1, min(-(-ATTENTION_BLOCK // n_len), p['batch_size'] // n_len, p['max_sequences']))

    def batches(self, lengths: Sequence[int]) -> list[np.ndarray]:
        """How :meth:`embed` groups sequences of these lengths: lists of indices, longest first, each
        group padded to its longest member, within ``batch_size`` tokens and ``max_sequences``; a
        sequence less than half as long as a group's first starts a new group (padding it would
        cost more than a graph of its own)."""
        p = self.params
        lengths = np.asarray(lengths, dtype=np.int64)
        order = np.argsort(-lengths, kind='stable')
        groups: list[np.ndarray] = []
        start = 0
        while start < len(order):
            n_len = int(lengths[order[start]])
            group = self.group(n_len)
            most = min(p['max_sequences'], p['batch_size'] // n_len) // group * group   # whole blocks
            count = max(1, min(most, len(order) - start))
            short = np.flatnonzero(lengths[order[start:start + count]] * 2 < n_len)
            count = int(short[0]) if short.size else count
            groups.append(order[start:start + count])
            start += count
        return groups

    def embed(self, sequences: Sequence[Any], pooling: str | None = None,
              progress: Callable[[int], None] | None = None) -> Any:
        """Encode token sequences (each a 1-D sequence of ids, ``[CLS] ... [SEP]`` included).

        Returns a float32 array ``(len(sequences), n_embd)`` of pooled vectors in input order, or
        with ``pooling='none'`` a list of ``(n_tokens_i, n_embd)`` arrays, one per sequence.
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
        n_len, n_real = max(s.size for s in seqs), len(seqs)
        group = self.group(n_len)
        n_seq = -(-n_real // group) * group
        # whole attention blocks: sequences of one padding token fill the last one (never all-masked)
        lengths = np.array([s.size for s in seqs] + [1] * (n_seq - n_real))
        for key, value in (('n_len', n_len), ('n_seq', n_seq), ('pooling', pooling)):
            if self.state[key] != value:
                self.state[key] = value
        self.ensure_graph()
        tokens = np.zeros((n_seq, n_len), dtype=np.int32)
        for j, s in enumerate(seqs):
            tokens[j, :s.size] = s
        real = np.arange(n_len)[None, :] < lengths[:, None]                      # (n_seq, n_len)
        # per block: a query sees the real keys of its own sequence only
        n_block = n_len * group
        owner = np.arange(n_block) // n_len
        allowed = (owner[:, None] == owner[None, :])[None] & real.reshape(-1, 1, n_block)  # (n_blocks, q, k)
        self.write('tokens', tokens)
        self.write('mask', np.where(allowed, np.float16(0), np.float16(-np.inf)))
        if pooling != 'none':
            pool = np.zeros((n_seq, n_seq, n_len), dtype=np.float32)    # numpy order of (n_tokens, n_seq)
            rows = np.arange(n_seq)
            if pooling == 'mean':
                pool[rows, rows] = real / lengths[:, None]
            else:
                pool[rows, rows, 0 if pooling == 'cls' else lengths - 1] = 1.0
            self.write('pool', pool)
        self.run()
        if pooling != 'none':
            return list(self.read(np.empty((n_seq, self.params['n_embd']), dtype=np.float32))[:n_real])
        states = self.read(np.empty((n_seq, n_len, self.params['n_embd']), dtype=np.float32))
        return [states[j, :n] for j, n in enumerate(lengths[:n_real])]
