"""The KV cache's bookkeeping (gadget.models.cache) against masks written out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from gadget import ContextOverflowError
from gadget.models.cache import KVCache


def causal(n_past: int, n: int, window: int) -> np.ndarray:
    return np.where(np.arange(window)[None, :] <= np.arange(n_past, n_past + n)[:, None], 0.0, -np.inf)


def test_one_sequence_fills_cells_in_order_with_a_causal_mask():
    cache = KVCache(n_ctx=600, row=4, transposed_v=False, step=256)
    plan = cache.plan(5)
    assert plan.rows.tolist() == [0, 1, 2, 3, 4] and plan.positions.tolist() == [0, 1, 2, 3, 4]
    assert plan.window == 256 and plan.v_index is None
    np.testing.assert_array_equal(plan.mask, causal(0, 5, 256))
    assert cache.n_past() == 0            # planning changes nothing
    cache.commit(plan)
    assert cache.n_past() == 5
    plan = cache.plan(300)
    assert plan.rows[0] == 5 and plan.positions[-1] == 304 and plan.window == 512
    np.testing.assert_array_equal(plan.mask, causal(5, 300, 512))
    cache.commit(plan)
    assert cache.plan(1).window == 512
    assert cache.plan(295).window == 600   # capped at the context length


def test_rewind_frees_the_tail_and_later_tokens_reuse_it():
    cache = KVCache(n_ctx=64, row=2, transposed_v=True, step=16)
    cache.commit(cache.plan(10))
    cache.keep(4)
    assert cache.n_past() == 4
    plan = cache.plan(2)
    assert plan.rows.tolist() == [4, 5] and plan.positions.tolist() == [4, 5]
    np.testing.assert_array_equal(plan.mask, causal(4, 2, 16))
    # transposed V: element (d, t) goes to d * n_ctx + row_t
    assert plan.v_index.tolist() == [4, 5, 64 + 4, 64 + 5]
    with pytest.raises(ValueError, match=r'rewind\(5\): the cache holds 4 tokens'):
        cache.keep(5)
    cache.clear()
    assert cache.n_past() == 0 and cache.plan(1).rows.tolist() == [0]


def test_overflow_is_refused_before_anything_changes():
    cache = KVCache(n_ctx=8, row=2, transposed_v=False, step=4)
    cache.commit(cache.plan(6))
    expected = r'3 new tokens after 6 cached ones exceed context_length \(8\)'
    with pytest.raises(ContextOverflowError, match=expected):
        cache.plan(3)
    assert cache.n_past() == 6
    with pytest.raises(ValueError, match='at least one cell'):
        KVCache(n_ctx=0, row=2, transposed_v=False)


def test_cells_of_another_sequence_are_masked():
    # The cells carry sequence ids: a token never sees another sequence's cells.
    cache = KVCache(n_ctx=16, row=1, transposed_v=False, step=8)
    cache.commit(cache.plan(3, seq=1))
    plan = cache.plan(2, seq=0)
    assert plan.rows.tolist() == [3, 4] and plan.positions.tolist() == [0, 1]
    expected = np.full((2, 8), -np.inf)
    expected[0, 3] = expected[1, 3] = expected[1, 4] = 0.0
    np.testing.assert_array_equal(plan.mask, expected)
    assert cache.n_past(0) == 0 and cache.n_past(1) == 3


def test_a_call_with_several_sequences_follows_each_and_masks_the_others():
    cache = KVCache(n_ctx=16, row=2, transposed_v=True, step=8)
    cache.commit(cache.plan_batch([(0, 2), (5, 3)]))            # two prompts in one call
    assert cache.sequences() == [0, 5] and cache.n_past(0) == 2 and cache.n_past(5) == 3
    plan = cache.plan_batch([(5, 1), (0, 1)])                    # one decode step of both
    assert plan.rows.tolist() == [5, 6] and plan.positions.tolist() == [3, 2]
    assert plan.seqs.tolist() == [5, 0]
    expected = np.full((2, 8), -np.inf)
    expected[0, [2, 3, 4, 5]] = 0.0                              # sequence 5: its cells 2-4 and the new one
    expected[1, [0, 1, 6]] = 0.0                                 # sequence 0: cells 0-1 and the new one
    np.testing.assert_array_equal(plan.mask, expected)
    assert plan.v_index.tolist() == [5, 6, 16 + 5, 16 + 6]      # (d, token) -> d * n_ctx + row
    cache.commit(plan)
    cache.forget(5)                                              # finished: its cells are free again
    assert cache.sequences() == [0] and cache.plan_batch([(9, 4)]).rows.tolist() == [2, 3, 4, 5]


def test_several_sequences_are_refused_clearly():
    cache = KVCache(n_ctx=8, row=1, transposed_v=False, step=8)
    with pytest.raises(ValueError, match='each sequence at most once'):
        cache.plan_batch([(1, 2), (1, 1)])
    cache.commit(cache.plan_batch([(0, 3), (1, 3)]))
    with pytest.raises(ContextOverflowError, match='3 new tokens of 2 sequence.* 2 free cells'):
        cache.plan_batch([(0, 2), (1, 1)])
    assert cache.n_past(0) == 3 and cache.n_past(1) == 3       # nothing changed


class _CellsOnly(KVCache):
    """The cache planning every call from its cell arrays (never the one-sequence shortcut)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._dense = None

    def _forget_shortcut(self):
        self._dense = None

    def clear(self):
        super().clear()
        self._forget_shortcut()

    def keep(self, n_keep, seq=0):
        super().keep(n_keep, seq)
        self._forget_shortcut()

    def forget(self, seq):
        super().forget(seq)
        self._forget_shortcut()

    def commit(self, plan):
        super().commit(plan)
        self._forget_shortcut()


@pytest.mark.parametrize('transposed_v', [False, True])
def test_the_one_sequence_shortcut_plans_exactly_what_the_cells_give(transposed_v):
    # Random calls, rewinds, resets and second sequences: every plan (cells, positions, window,
    # mask, V index), every length and every overflow error equal the cell-by-cell planning's.
    rng = np.random.default_rng(0)
    fast, cells = (cls(n_ctx=40, row=3, transposed_v=transposed_v, step=8) for cls in (KVCache, _CellsOnly))
    for _ in range(400):
        action = rng.choice(['call', 'call', 'call', 'keep', 'clear', 'forget', 'batch'])
        seq = int(rng.choice([0, 0, 0, 1]))
        if action == 'call':
            n = int(rng.choice([1, 1, 2, 5, 13]))
            outcomes = []
            for cache in (fast, cells):
                try:
                    outcomes.append(cache.plan(n, seq=seq))
                except ContextOverflowError as exc:
                    outcomes.append(str(exc))
            a, b = outcomes
            if isinstance(a, str):
                assert a == b
                continue
            for field in ('rows', 'positions', 'seqs', 'mask'):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
                assert getattr(a, field).dtype == getattr(b, field).dtype
            assert a.window == b.window
            if transposed_v:
                np.testing.assert_array_equal(a.v_index, b.v_index)
            fast.commit(a)
            cells.commit(b)
        elif action == 'keep':
            n_keep = int(rng.integers(0, fast.n_past(seq) + 1))
            fast.keep(n_keep, seq)
            cells.keep(n_keep, seq)
        elif action == 'clear':
            fast.clear()
            cells.clear()
        elif action == 'forget':
            fast.forget(seq)
            cells.forget(seq)
        elif fast.n_past(0) + fast.n_past(1) + 2 <= 40:
            for cache in (fast, cells):
                cache.commit(cache.plan_batch([(0, 1), (1, 1)]))
        for s in (0, 1):
            assert fast.n_past(s) == cells.n_past(s)
        np.testing.assert_array_equal(fast.cell_seq, cells.cell_seq)
        np.testing.assert_array_equal(fast.cell_pos, cells.cell_pos)


def test_token_ids_checks_a_single_id_as_it_checks_many():
    from gadget.models.tokens import token_ids
    assert token_ids([7], 10).tolist() == [7] and token_ids([7], 10).dtype == np.int32
    assert token_ids(np.array([3, 9]), 10).tolist() == [3, 9] and token_ids(4, 10).tolist() == [4]
    for bad in ([10], [-1], [2**40]):
        with pytest.raises(ValueError, match=f'token id {bad[0]} is out of range for a vocabulary of 10'):
            token_ids(bad, 10)
    for bad in ([True], [1.0], ['1']):
        with pytest.raises(TypeError, match='token ids must be integers'):
            token_ids(bad, 10)
    with pytest.raises(ValueError, match='non-empty'):
        token_ids([], 10)
