"""Token sampling from logits.

The order is fixed and documented: repetition penalty → temperature (0 means greedy: argmax of
the penalised logits) → softmax → min_p → top_k → top_p → renormalise → draw with a seeded
generator (``numpy.random.Generator``), so the same seed reproduces the same tokens.

* ``repetition_penalty`` (> 0, 1 = off): logits of tokens already in the context are divided by it
  when positive and multiplied by it when negative (the CTRL paper's rule, as transformers and
  llama.cpp apply it).
* ``min_p`` (0 = off): drop tokens with probability below ``min_p`` times the largest one.
* ``top_k`` (0 = off): keep the ``top_k`` most likely tokens.
* ``top_p`` (1 = off): keep the smallest set of most likely tokens whose mass reaches ``top_p``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

import numpy as np

__all__ = ['SamplingParams', 'Sampler', 'softmax']


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The softmax of ``logits / temperature`` in float64, shifted by the maximum before dividing,
    so that neither overflows: a temperature so small that the division does (e.g. 1e-280) gives
    the largest logits all the probability, as temperature 0 would, instead of NaN."""
    z = logits.astype(np.float64) - np.max(logits)
    with np.errstate(over='ignore'):
        e = np.exp(z / temperature)
    return e / e.sum()


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings, validated on creation (see the module docstring for their meaning and order)."""

    temperature: float = 0.7
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        _number('temperature', self.temperature, 'a finite number >= 0 (0 = greedy)', lambda v: v >= 0)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise ValueError(f'top_k must be an integer >= 0 (0 = off), got {self.top_k!r}')
        _number('top_p', self.top_p, 'a number in (0, 1] (1 = off)', lambda v: 0 < v <= 1)
        _number('min_p', self.min_p, 'a number in [0, 1] (0 = off)', lambda v: 0 <= v <= 1)
        _number('repetition_penalty', self.repetition_penalty, 'a finite number > 0 (1 = off)',
                lambda v: v > 0)


def _number(name: str, value: object, allowed: str,
            rule: Callable[[float | np.integer | np.floating], object]) -> None:
    ok = (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
          and math.isfinite(value) and rule(value))
    if not ok:
        raise ValueError(f'{name} must be {allowed}, got {value!r}')


class Sampler:
    """Draws tokens from logits with :class:`SamplingParams`; ``seed`` makes it reproducible.

    Arguments:
        params: the settings (default: ``SamplingParams()``).
        seed: the seed of the numpy generator (None: fresh entropy).
        overrides: fields of :class:`SamplingParams` that replace those of ``params``
            (``Sampler(params, temperature=0)``), validated like them.
    """

    def __init__(self, params: SamplingParams | None = None, seed: int | None = None, **overrides: Any):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                 or seed < 0):
            raise ValueError(f'seed must be a non-negative integer or None, got {seed!r}')
        params = params or SamplingParams()
        self.params = replace(params, **overrides) if overrides else params
        self.rng = np.random.default_rng(seed)

    def penalise(self, logits: np.ndarray, context: Iterable[int]) -> np.ndarray:
        """``logits`` with the repetition penalty applied to the tokens of ``context``."""
        penalty = self.params.repetition_penalty
        seen = np.fromiter(set(context), dtype=np.int64)
        if penalty == 1.0 or seen.size == 0:
            return logits
        out = logits.astype(np.float32, copy=True)
        chosen = out[seen].astype(np.float64)
        # An extreme penalty (e.g. 1e-38) saturates at float32's largest logits instead of
        # overflowing to inf, whose softmax would be NaN.
        limit = float(np.finfo(np.float32).max)
        out[seen] = np.clip(np.where(chosen > 0, chosen / penalty, chosen * penalty), -limit, limit)
        return out

    def probabilities(self, logits: np.ndarray, context: Iterable[int] = ()) -> np.ndarray:
        """The distribution tokens are drawn from (after every filter), as float64."""
        p = self.params
        logits = self.penalise(np.asarray(logits, dtype=np.float32), context)
        if p.temperature == 0:
            probs = np.zeros(logits.shape, dtype=np.float64)
            probs[int(np.argmax(logits))] = 1.0
            return probs
        probs = softmax(logits, p.temperature)
        if p.min_p > 0:
            probs[probs < p.min_p * probs.max()] = 0.0
        if p.top_k and p.top_k < probs.size:
            order = np.argsort(-probs, kind='stable')
            keep = np.zeros(probs.size, dtype=bool)
            keep[order[:p.top_k]] = True           # exactly k, ties broken by token id
            probs[~keep] = 0.0
        if p.top_p < 1.0:
            order = np.argsort(-probs, kind='stable')
            mass = np.cumsum(probs[order])
            n_keep = int(np.searchsorted(mass, p.top_p * mass[-1]) + 1)
            probs[order[n_keep:]] = 0.0
        return probs / probs.sum()

    def candidates(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tokens :meth:`probabilities` keeps and their probabilities, most likely first (ties by
        token id), without sorting the vocabulary: for ``top_k`` >= 1, temperature > 0 and no
        repetition penalty, in time linear in the vocabulary. Equal to ``probabilities(logits)`` at
        those ids (to rounding of the final normalisation); every other token has probability 0
        (and tokens of probability 0 are not returned)."""
        p = self.params
        if not (p.top_k >= 1 and p.temperature > 0 and p.repetition_penalty == 1.0):
            raise ValueError('candidates() needs top_k >= 1, temperature > 0 and no repetition penalty, '
                             f'got {p}')
        logits = np.asarray(logits, dtype=np.float32)
        probs = softmax(logits, p.temperature)
        if p.min_p > 0:
            probs[probs < p.min_p * probs.max()] = 0.0
        live = np.flatnonzero(probs)       # ascending ids; zeros (min_p's, underflow) stay out
        k = int(p.top_k)
        if k < live.size:
            values = probs[live]
            kth = np.partition(values, values.size - k)[values.size - k]     # the k-th largest value
            above = live[values > kth]
            ties = live[values == kth][:k - above.size]                      # lowest ids first, as sorted
            chosen = np.concatenate([above, ties])
            chosen.sort()
        else:
            chosen = live
        order = chosen[np.argsort(-probs[chosen], kind='stable')]
        kept = probs[order]
        if p.top_p < 1.0:
            mass = np.cumsum(kept)
            n_keep = int(np.searchsorted(mass, p.top_p * mass[-1]) + 1)
            order, kept = order[:n_keep], kept[:n_keep]
        return order, kept / kept.sum()

    def __call__(self, logits: np.ndarray, context: Iterable[int] = ()) -> int:
        """One token id drawn from ``logits`` (numpy ``(n_vocab,)``) given the ``context`` ids."""
        if self.params.temperature == 0:
            return int(np.argmax(self.penalise(np.asarray(logits, dtype=np.float32), context)))
        probs = self.probabilities(logits, context)
        return int(self.rng.choice(probs.size, p=probs))
