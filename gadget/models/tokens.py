"""Token ids as the models take them: checked once, before anything is computed."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ['token_ids']


def token_ids(tokens: Any, n_vocab: int) -> np.ndarray:
    """``tokens`` (an int, a sequence or an array of ids) as a non-empty 1-D int32 array; a
    TypeError for non-integers, a ValueError for an empty or n-D input or an id outside the
    vocabulary, naming the id."""
    if type(tokens) is list and len(tokens) == 1 and type(tokens[0]) is int and 0 <= tokens[0] < n_vocab:
        return np.array(tokens, dtype=np.int32)     # a decode step's one id: the checks in one line
    ids = np.asarray(tokens)
    if ids.ndim == 0:
        ids = ids.reshape(1)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(f'tokens must be a non-empty 1-D sequence of ids, got shape {ids.shape}')
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f'token ids must be integers, got {ids.dtype}')
    bad = (ids < 0) | (ids >= n_vocab)
    if bad.any():
        raise ValueError(f'token id {int(ids[bad][0])} is out of range for a vocabulary of {n_vocab}')
    return ids.astype(np.int32)
