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
