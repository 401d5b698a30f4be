"""The KV cache's bookkeeping: which cell holds which position of which sequence.

The cache tensors themselves are declared by the model (``Buffer`` tensors, one K and one V per
layer, ``n_ctx`` cells each) and written by its graph; this object decides where new tokens go and
builds the per-call inputs from its cells, as llama.cpp's ``llama_kv_cache`` does:

* ``rows``: the cells the new tokens' keys and values are written to;
* ``positions``: each new token's position in its sequence;
* ``mask``: F16 ``(n_tokens, window)`` in numpy order, 0 where a token may attend to a cell (same
  sequence, position not after its own), ``-inf`` elsewhere, over the first ``window`` cells
  (a multiple of ``step``, so the graph is rebuilt only when the window grows);
* ``v_index``: for a V cache stored transposed (positions along rows, as llama.cpp keeps it without
  flash attention), the flat element index of each new value.

A call is planned with :meth:`plan` (nothing changes) and recorded with :meth:`commit` once the
graph has run, so a failed call leaves the cache as it was. A call may carry tokens of several
sequences (:meth:`plan_batch`): each goes to a free cell, at its own sequence's next position, and
the mask lets a token see only its own sequence's cells: several sequences decoded in one graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ContextOverflowError

__all__ = ['KVCache', 'CachePlan', 'KV_STEP']

KV_STEP = 256   # the attention window grows in steps of this many cells

_EMPTY = -1


@dataclass
class CachePlan:
    """The inputs of one call (see the module docstring), for ``seq`` ids ``seqs``."""
    rows: np.ndarray          # int64 (n_tokens,)
    positions: np.ndarray     # int32 (n_tokens,)
    seqs: np.ndarray          # int32 (n_tokens,)
    window: int
    mask: np.ndarray          # float16 (n_tokens, window)
    v_index: np.ndarray | None
    dense: tuple[int, int] | None = None   # (seq, n): after it, seq alone in cells [0, n)


class KVCache:
    """Cells of a KV cache of ``n_ctx`` cells of ``row`` values each (``head_dim * n_head_kv``).

    Arguments:
        n_ctx: cells (the context length).
        row: values per cell and layer (``head_dim * n_head_kv``).
        transposed_v: the V cache is stored transposed, so :meth:`plan` also gives ``v_index``.
        step: the attention window grows in multiples of this many cells.
    """

    def __init__(self, n_ctx: int, row: int, transposed_v: bool, step: int = KV_STEP):
        if n_ctx <= 0:
            raise ValueError(f'a KV cache needs at least one cell, got n_ctx={n_ctx}')
        self.n_ctx, self.row, self.transposed_v, self.step = int(n_ctx), int(row), transposed_v, int(step)
        self.cell_pos = np.full(self.n_ctx, _EMPTY, dtype=np.int64)
        self.cell_seq = np.full(self.n_ctx, _EMPTY, dtype=np.int32)
        # The common case, one sequence decoded alone, kept as two numbers so that planning a step
        # costs a few small arrays, not passes over every cell: when ``_dense`` is an int, cells
        # [0, _dense) hold sequence ``_dense_seq`` at positions 0.._dense-1 and every other cell is
        # empty; None: the cells are in any other state (see the cell arrays).
        self._dense: int | None = 0
        self._dense_seq = 0
        self._cols = np.arange(self.n_ctx, dtype=np.int32)

    # --- sequences --------------------------------------------------------------------------------

    def n_past(self, seq: int = 0) -> int:
        """Tokens of sequence ``seq`` in the cache."""
        if self._dense is not None:
            return self._dense if seq == self._dense_seq else 0
        return int(np.count_nonzero(self.cell_seq == seq))

    def clear(self) -> None:
        """Empty every cell."""
        self.cell_pos.fill(_EMPTY)
        self.cell_seq.fill(_EMPTY)
        self._dense = 0

    def keep(self, n_keep: int, seq: int = 0) -> None:
        """Keep only the first ``n_keep`` positions of sequence ``seq`` (the rest of its cells are freed;
        their contents are never read again, being masked, and later calls overwrite them)."""
        n = self.n_past(seq)
        if not 0 <= n_keep <= n:
            raise ValueError(f'rewind({n_keep}): the cache holds {n} tokens')
        drop = (self.cell_seq == seq) & (self.cell_pos >= n_keep)
        self.cell_pos[drop] = _EMPTY
        self.cell_seq[drop] = _EMPTY
        if self._dense is not None and n:     # the sequence alone in [0, n): now in [0, n_keep)
            self._dense = n_keep

    # --- one call ---------------------------------------------------------------------------------

    def check_fits(self, n_tokens: int, seq: int = 0) -> None:
        """:class:`ContextOverflowError` unless ``n_tokens`` more tokens fit in the free cells."""
        self._check_room(n_tokens, self._n_free(), seq)

    def _n_free(self) -> int:
        if self._dense is not None:
            return self.n_ctx - self._dense
        return int(np.count_nonzero(self.cell_seq == _EMPTY))

    def _check_room(self, n_tokens: int, n_free: int, seq: int) -> None:
        if n_tokens > n_free:
            raise ContextOverflowError(
                f'{n_tokens} new tokens after {self.n_past(seq)} cached ones exceed context_length '
                f'({self.n_ctx}): reset() or rewind(), or load the model with a larger context_length')

    def plan(self, n_tokens: int, seq: int = 0) -> CachePlan:
        """Where ``n_tokens`` new tokens of sequence ``seq`` go, and the inputs to compute them;
        :class:`ContextOverflowError` (nothing changed) when they do not fit."""
        return self.plan_batch([(seq, n_tokens)])

    def plan_batch(self, items: list[tuple[int, int]]) -> CachePlan:
        """The same for one call holding ``(seq, n_tokens)`` of several sequences, in that order
        (each sequence at most once): the tokens of each follow its cached ones."""
        if (len(items) == 1 and items[0][1] > 0 and self._dense is not None
                and (self._dense == 0 or items[0][0] == self._dense_seq)):
            return self._plan_dense(*items[0])
        empty = self.check_fits_batch(items)
        n_tokens = sum(n for _, n in items)
        rows, positions, seqs = self._place(items, empty)
        used = np.flatnonzero(~empty)
        last = max(int(rows.max()) if n_tokens else 0, int(used[-1]) if used.size else 0)
        window = min(self.n_ctx, (last // self.step + 1) * self.step)
        # The cells as they will be once this call has run, over the window.
        cell_pos, cell_seq = self.cell_pos[:window].copy(), self.cell_seq[:window].copy()
        cell_pos[rows], cell_seq[rows] = positions, seqs
        visible = (cell_seq[None, :] == seqs[:, None]) & (cell_pos[None, :] <= positions[:, None])
        mask = np.where(visible, np.float16(0), np.float16(-np.inf))
        v_index = None
        if self.transposed_v:
            # element (d, t) of the transposed new values goes to cache_v[d, row_t]
            d = np.arange(self.row, dtype=np.int64)[:, None]
            v_index = (d * self.n_ctx + rows[None, :]).ravel()
        return CachePlan(rows=rows, positions=positions, seqs=seqs, window=window, mask=mask, v_index=v_index)

    def _plan_dense(self, seq: int, n_tokens: int) -> CachePlan:
        """:meth:`plan_batch` of one sequence's tokens when it is alone in the first cells: they go
        to the next cells, and each sees the cells up to its own (the same plan, computed from two
        numbers instead of the cell arrays)."""
        n = self._dense
        assert n is not None
        self._check_room(n_tokens, self.n_ctx - n, seq)
        rows = np.arange(n, n + n_tokens, dtype=np.int64)
        positions = rows.astype(np.int32)
        last = n + n_tokens - 1
        window = min(self.n_ctx, (last // self.step + 1) * self.step)
        if n_tokens == 1:
            mask = np.full((1, window), -np.inf, dtype=np.float16)
            mask[0, :n + 1] = 0
        else:
            visible = self._cols[None, :window] <= positions[:, None]
            mask = np.where(visible, np.float16(0), np.float16(-np.inf))
        v_index = None
        if self.transposed_v:
            d = np.arange(self.row, dtype=np.int64)[:, None]
            v_index = (d * self.n_ctx + rows[None, :]).ravel()
        return CachePlan(rows=rows, positions=positions, seqs=np.full(n_tokens, seq, dtype=np.int32),
                         window=window, mask=mask, v_index=v_index, dense=(seq, n + n_tokens))

    def check_fits_batch(self, items: list[tuple[int, int]]) -> np.ndarray:
        """A ValueError for a sequence given twice, :class:`ContextOverflowError` unless the tokens
        of ``items`` (``(seq, n_tokens)``) fit in the free cells; returns the mask of free cells."""
        seqs_given = [seq for seq, _ in items]
        if len(set(seqs_given)) != len(seqs_given):
            raise ValueError(f'each sequence at most once in a call, got {seqs_given}')
        n_tokens = sum(n for _, n in items)
        empty = self.cell_seq == _EMPTY
        n_free = self._n_free()
        if n_tokens > n_free and len(items) == 1:
            self._check_room(n_tokens, n_free, items[0][0])
        if n_tokens > n_free:
            raise ContextOverflowError(
                f'{n_tokens} new tokens of {len(items)} sequence(s) exceed the {n_free} free cells '
                f'of the cache (context_length {self.n_ctx}, shared by all sequences): forget a '
                'sequence, reset(), or load the model with a larger context_length')
        return empty

    def _place(self, items: list[tuple[int, int]], empty: np.ndarray) -> tuple[np.ndarray, ...]:
        """The cells (int64), positions and sequence ids (int32) of the new tokens of ``items``.

        Each sequence's new tokens go to the first free cells after its own last cell, so its
        cells stay in position order: attention then adds up the same terms in the same order as
        for the sequence alone (GGML's sums run over cells in order), and a sequence's logits do not
        change with where the others are. Only when no free cell is left after it, any free cell.
        """
        taken = ~empty
        rows, positions, seqs = [], [], []
        for seq, n in items:
            mine = np.flatnonzero(self.cell_seq == seq)        # its cells; their count is its length
            after = int(mine[-1]) + 1 if mine.size else 0
            free = np.flatnonzero(~taken[after:]) + after
            if free.size < n:
                free = np.concatenate([free, np.flatnonzero(~taken[:after])])
            chosen = free[:n]
            taken[chosen] = True
            rows.append(chosen)
            positions.append(np.arange(mine.size, mine.size + n, dtype=np.int32))
            seqs.append(np.full(n, seq, dtype=np.int32))
        if not items:
            return np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32)
        return (np.concatenate(rows).astype(np.int64), np.concatenate(positions),
                np.concatenate(seqs))

    def forget(self, seq: int) -> None:
        """Free every cell of sequence ``seq`` (its slot can take a new prompt)."""
        drop = self.cell_seq == seq
        self.cell_pos[drop] = _EMPTY
        self.cell_seq[drop] = _EMPTY
        if self._dense is not None and seq == self._dense_seq:
            self._dense = 0

    def sequences(self) -> list[int]:
        """The ids of the sequences with cells in the cache."""
        return [int(s) for s in np.unique(self.cell_seq) if s != _EMPTY]

    def commit(self, plan: CachePlan) -> None:
        """Record a planned call whose graph has run: its cells now hold its tokens."""
        if plan.dense is not None:       # cells [n - n_tokens, n): slices, not scattered writes
            (self._dense_seq, n), start = plan.dense, int(plan.rows[0])
            self.cell_pos[start:n] = plan.positions
            self.cell_seq[start:n] = plan.seqs
            self._dense = n
            return
        self.cell_pos[plan.rows] = plan.positions
        self.cell_seq[plan.rows] = plan.seqs
        if plan.rows.size:
            self._dense = None
