"""Entropy-aware ("entropix", here "Shrek") sampling: ShrekGen and ShrekChat.

At every step the sampler looks at how uncertain the model is — the entropy and varentropy of the
next-token distribution, and the entropy, varentropy, agreement and strength of the last layer's
attention — and picks one of five ways to choose the next token::

    branch       when (H: logit entropy, V: varentropy, in bits)   how
    'argmax'     H < 0.1 and V < 0.1                              the most likely token
    'clarify'    H > 3.0 and V < 0.1                              the clarifying token once (if one is
                                                                  given), else a hotter sample
    'explore'    H < 5.0 and V > 5.0                              hotter, with a wider top_k
    'lost'       H > 5.0 and V > 5.0                              much hotter, with a narrower top_p
    'adaptive'   otherwise                                        settings from all six metrics; the
                                                                  best of 5 candidates

The maths are plain numpy functions, usable on any arrays: :func:`metrics` (logits and attention
scores → six numbers), :func:`branch` (metrics → one of :data:`BRANCHES`) and :func:`settings`
(branch, metrics, base settings → the temperature, top_k, top_p and min_p that step samples with).

::

    gen = ShrekGen()                                  # the default model (SmolLM2-135M-Instruct Q4_1)
    text = gen.generate('Once upon a time', max_gen=32, seed=1)
    [(step.branch, round(step.metrics['entropy'], 2)) for step in gen.trace]

The attention scores are the last layer's scaled, masked, pre-softmax scores, read from the graph
after each evaluation: only that layer is built unfused, and only in Shrek (``TextGen`` keeps every
layer fused). A step's scores are those of the tokens evaluated at that step (the prompt's last
batch at the first step, then one token) over the cells they attend to.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .gguf import GgufFile
from .sampling import Sampler, SamplingParams, _number
from .textgen import TextChat, TextGen

__all__ = ['BRANCHES', 'METRICS', 'ShrekParams', 'ShrekStep', 'ShrekSampler', 'ShrekGen', 'ShrekChat',
           'metrics', 'branch', 'settings']

#: The five ways of choosing a token, in the order they are tested.
BRANCHES = ('argmax', 'clarify', 'explore', 'lost', 'adaptive')
#: The names of the metrics :func:`metrics` returns.
METRICS = ('entropy', 'varentropy', 'attn_entropy', 'attn_varentropy', 'agreement', 'interaction_strength')

_LN2 = math.log(2.0)
N_CANDIDATES = 5   # tokens drawn in the adaptive branch, of which the best-scoring is kept


# --- the metrics ----------------------------------------------------------------------------------

def _check_finite_or_masked(name: str, array: np.ndarray) -> None:
    if np.isnan(array).any():
        raise ValueError(f'{name} contains NaN at {np.argwhere(np.isnan(array))[0].tolist()}: the model '
                         'produced invalid numbers')
    if np.isposinf(array).any():
        raise ValueError(f'{name} contains +inf at {np.argwhere(np.isposinf(array))[0].tolist()}: only '
                         'finite values and -inf (masked) are allowed')


def metrics(logits: Any, scores: Any) -> dict[str, float]:
    """The six uncertainty measures of one step.

    Arguments:
        logits: the next-token logits, numpy ``(n_vocab,)``; ``-inf`` for impossible tokens.
        scores: the last layer's attention scores, numpy ``(n_head, n_queries, n_keys)`` (numpy
            order; ggml order would be ``(n_keys, n_queries, n_head)``), scaled by
            1/sqrt(head_dim), before softmax, masked entries ``-inf``.

    Returns a dict of floats (logarithms base 2):

    * ``entropy`` H = -Σ p log2 p and ``varentropy`` V = Σ p (log2 p + H)², p = softmax(logits);
    * ``attn_entropy``: the mean over (head, query) of -Σ a log2 clamp(a, 1e-10, 1), a = softmax of
      the scores over keys (a row with every key masked attends nowhere: a = 0, entropy 0);
    * ``attn_varentropy``: the mean over queries of the (unbiased) variance across heads of that
      entropy (0 with a single head);
    * ``agreement``: the mean over heads, queries and keys of |a - mean over heads of a|;
    * ``interaction_strength``: the mean of |scores| over the finite (unmasked) entries (0 if none).
    """
    logits = np.asarray(logits, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if logits.ndim != 1 or logits.size == 0:
        raise ValueError(f'logits must be a non-empty vector (n_vocab,), got shape {logits.shape}')
    if scores.ndim != 3 or 0 in scores.shape:
        raise ValueError('scores must be (n_head, n_queries, n_keys) in numpy order with no empty '
                         f'dimension, got shape {scores.shape}')
    top = logits.max()                      # NaN and +inf show in the maximum: one pass, not three
    if not top < np.inf:
        _check_finite_or_masked('logits', logits)
    if top == -np.inf:
        raise ValueError('every logit is -inf: no token is possible')
    _check_finite_or_masked('scores', scores)

    # logits: log-softmax in float64; tokens of probability 0 (-inf logits) contribute exactly 0
    z = logits - top
    e = np.exp(z)
    total = e.sum()
    p = e / total
    log2_p = (z - np.log(total)) / _LN2
    if logits.min() == -np.inf:
        log2_p[p == 0] = 0.0
    # (elementwise products, not `@`: a BLAS dot may wake a thread pool for 50k numbers)
    entropy = float(-(p * log2_p).sum())
    varentropy = float((p * (log2_p + entropy) ** 2).sum())

    # attention: softmax over keys; a fully masked row becomes all zeros, not NaN
    row_max = scores.max(axis=-1, keepdims=True)
    has_keys = np.isfinite(row_max)
    e = np.exp(scores - np.where(has_keys, row_max, 0.0))          # exp(-inf) = 0 for masked entries
    a = np.divide(e, e.sum(axis=-1, keepdims=True), out=np.zeros_like(e), where=has_keys)
    head_entropy = -(a * np.log2(np.clip(a, 1e-10, 1.0))).sum(axis=-1)      # (n_head, n_queries)
    attn_entropy = float(head_entropy.mean())
    if head_entropy.shape[0] > 1:
        attn_varentropy = float(np.nan_to_num(head_entropy.var(axis=0, ddof=1)).mean())
    else:
        attn_varentropy = 0.0                                       # the variance of one value: NaN → 0
    agreement = float(np.abs(a - a.mean(axis=0, keepdims=True)).mean())
    finite = np.isfinite(scores)
    interaction = float(np.abs(scores[finite]).mean()) if finite.any() else 0.0
    return dict(entropy=entropy, varentropy=varentropy, attn_entropy=attn_entropy,
                attn_varentropy=attn_varentropy, agreement=agreement, interaction_strength=interaction)


def _checked_metrics(m: Mapping[str, float]) -> dict[str, float]:
    missing = [k for k in METRICS if k not in m]
    if missing:
        raise KeyError(f'metrics lack {missing}: pass the dict gadget.shrek.metrics() returns')
    out = {k: float(m[k]) for k in METRICS}
    bad = {k: v for k, v in out.items() if not math.isfinite(v)}
    if bad:
        raise ValueError(f'metrics must be finite numbers, got {bad}')
    return out


def branch(m: Mapping[str, float]) -> str:
    """Which of :data:`BRANCHES` a step with metrics ``m`` (from :func:`metrics`) takes: the first
    case that holds of 'argmax' (H < 0.1, V < 0.1), 'clarify' (H > 3, V < 0.1), 'explore'
    (H < 5, V > 5), 'lost' (H > 5, V > 5), else 'adaptive'."""
    m = _checked_metrics(m)
    h, v = m['entropy'], m['varentropy']
    if h < 0.1 and v < 0.1:
        return 'argmax'
    if h > 3.0 and v < 0.1:
        return 'clarify'
    if h < 5.0 and v > 5.0:
        return 'explore'
    if h > 5.0 and v > 5.0:
        return 'lost'
    return 'adaptive'


# --- the settings of each branch ------------------------------------------------------------------

@dataclass(frozen=True)
class ShrekParams:
    """The base sampling settings the branches adjust (the published defaults), validated."""

    temperature: float = 0.666
    top_p: float = 0.90
    top_k: int = 27
    min_p: float = 0.0

    def __post_init__(self) -> None:
        _number('temperature', self.temperature, 'a finite number > 0', lambda v: v > 0)
        _number('top_p', self.top_p, 'a number in (0, 1]', lambda v: 0 < v <= 1)
        _number('min_p', self.min_p, 'a number in [0, 1]', lambda v: 0 <= v <= 1)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) or self.top_k < 1:
            raise ValueError(f'top_k must be an integer >= 1, got {self.top_k!r}')


def _clamp(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def settings(which: str, m: Mapping[str, float], params: ShrekParams | None = None) -> SamplingParams:
    """The settings the branch ``which`` samples with, given the step's metrics ``m`` and the base
    ``params`` (see the sampler note's formulas; 'argmax' is temperature 0, and 'clarify' is its
    sampling fallback, used when no clarifying token is given or one was just inserted)."""
    p = params or ShrekParams()
    m = _checked_metrics(m)
    t, top_p, top_k, min_p = p.temperature, p.top_p, int(p.top_k), p.min_p
    h, v = m['entropy'], m['varentropy']
    ent, vent = m['attn_entropy'], m['attn_varentropy']
    agree, inter = m['agreement'], m['interaction_strength']
    if which == 'argmax':
        return SamplingParams(temperature=0.0)
    if which == 'clarify':
        t = min(1.5, t * (1.3 + 0.2 * ent))
    elif which == 'explore':
        t = min(1.5, t * (1.2 + 0.3 * inter))
        top_k = max(5, int(top_k * (1 + 0.5 * (1 - agree))))
    elif which == 'lost':
        t = max(2.0, t * (2.0 + 0.5 * vent))
        top_p = max(0.5, top_p - 0.2 * ent)
    elif which == 'adaptive':
        logit_u, attn_u = h + v, ent + vent
        t = t * (1 + 0.3 * logit_u + 0.2 * attn_u - 0.2 * agree)
        top_p = _clamp(top_p * (1 + 0.1 * vent), 0.1, 1.0)
        top_k = int(_clamp(round(top_k * (1 + 0.3 * inter - 0.2 * agree)), 1, 100))
        min_p = _clamp(0.03 * (1 - 0.5 * logit_u), 0.01, 0.5)
    else:
        raise ValueError(f'unknown branch {which!r}: one of {", ".join(BRANCHES)}')
    return SamplingParams(temperature=t, top_k=top_k, top_p=top_p, min_p=min_p)


def confidence(m: Mapping[str, float]) -> float:
    """The adaptive branch's confidence bonus: 0.1(1-H) + 0.2(1-attn_entropy) + 0.3(1-V) +
    0.4(1-attn_varentropy) + 0.5 agreement + 0.6 interaction_strength."""
    m = _checked_metrics(m)
    return (0.1 * (1 - m['entropy']) + 0.2 * (1 - m['attn_entropy']) + 0.3 * (1 - m['varentropy'])
            + 0.4 * (1 - m['attn_varentropy']) + 0.5 * m['agreement'] + 0.6 * m['interaction_strength'])


# --- the sampler ------------------------------------------------------------------------------------

@dataclass
class ShrekStep:
    """One step of a Shrek run: the token chosen, the branch that chose it, the step's metrics and
    the settings it sampled with (temperature 0 for 'argmax'; ``None`` for an inserted clarifying
    token); in the adaptive branch also the candidates drawn and their scores."""

    token: int
    branch: str
    metrics: dict[str, float]
    temperature: float | None
    top_k: int | None
    top_p: float | None
    min_p: float | None
    candidates: list[int] = field(default_factory=list)
    candidate_scores: list[float] = field(default_factory=list)


class ShrekSampler:
    """Chooses tokens from (logits, attention scores) with the entropy-aware method.

    Arguments:
        params: the base settings (:class:`ShrekParams`).
        seed: seeds the generator (``numpy.random.default_rng``): the same seed, model and prompt
            give the same tokens.
        clarify_token: the token inserted once in the 'clarify' branch (the original uses a
            model-specific "clarifying question" token); None (default): sample instead.
    """

    def __init__(self, params: ShrekParams | None = None, seed: int | None = None,
                 clarify_token: int | None = None):
        Sampler(seed=seed)     # the same check of the seed as the ordinary sampler's
        if clarify_token is not None and (isinstance(clarify_token, bool)
                                          or not isinstance(clarify_token, (int, np.integer))
                                          or clarify_token < 0):
            raise ValueError(f'clarify_token must be a token id >= 0 or None, got {clarify_token!r}')
        self.params = params or ShrekParams()
        self.clarify_token = None if clarify_token is None else int(clarify_token)
        self.rng = np.random.default_rng(seed)

    def step(self, logits: Any, scores: Any, context: Sequence[int] = ()) -> ShrekStep:
        """Choose the next token from ``logits`` (numpy ``(n_vocab,)``) and ``scores`` (numpy
        ``(n_head, n_queries, n_keys)``), ``context`` being the tokens so far (its last token tells
        whether the clarifying token was just inserted)."""
        logits = np.asarray(logits, dtype=np.float32)
        m = metrics(logits, scores)
        which = branch(m)
        if which == 'argmax':
            return ShrekStep(int(np.argmax(logits)), which, m, 0.0, None, None, None)
        if which == 'clarify' and self.clarify_token is not None and (
                not context or int(context[-1]) != self.clarify_token):
            return ShrekStep(self.clarify_token, which, m, None, None, None, None)
        s = settings(which, m, self.params)
        ids, probs = Sampler(s).candidates(logits)      # linear in the vocabulary: no full sort
        record = ShrekStep(-1, which, m, s.temperature, s.top_k, s.top_p, s.min_p)
        if which != 'adaptive':
            record.token = int(ids[self.rng.choice(ids.size, p=probs)])
            return record
        # Adaptive: draw candidates; keep the one most likely under the unadjusted distribution
        # (the confidence bonus is the same for every candidate; it is added as the method says).
        log_p = logits.astype(np.float64) - logits.max()
        log_p -= np.log(np.exp(log_p).sum())
        bonus = confidence(m)
        record.candidates = [int(ids[i]) for i in self.rng.choice(ids.size, size=N_CANDIDATES, p=probs)]
        record.candidate_scores = [float(log_p[t] + bonus) for t in record.candidates]
        record.token = record.candidates[int(np.argmax(record.candidate_scores))]
        return record


# --- the front ends --------------------------------------------------------------------------------

StepCallback = Callable[[ShrekStep, np.ndarray, np.ndarray], None]


class _ShrekDraw:
    """Adapts a ShrekSampler to TextGen's sampler interface ``(logits, context) -> token``: it
    reads the scores of the evaluation that produced ``logits`` and records every step."""

    def __init__(self, gen: 'ShrekGen', sampler: ShrekSampler, on_step: StepCallback | None):
        self.gen, self.sampler, self.on_step = gen, sampler, on_step

    def __call__(self, logits: np.ndarray, context: Sequence[int] = ()) -> int:
        scores = self.gen.last_scores()
        step = self.sampler.step(logits, scores, context)
        self.gen.trace.append(step)
        if self.on_step is not None:
            self.on_step(step, logits, scores)
        return step.token


class ShrekGen(TextGen):
    """Generate text with the entropy-aware sampler (see the module docstring).

    Arguments:
        gguf_or_path, model_id, model_class, backend, n_threads, context_length, ...: as
            :class:`~gadget.textgen.TextGen`. The model must expose its attention scores
            (``unfused_attention`` and ``attention_scores()``, as :class:`~gadget.models.LlamaModel`).
        temperature, top_p, top_k, min_p: the base settings each branch adjusts (default 0.666,
            0.90, 27, 0.0); each call may override them.
        clarify_token: the 'clarify' branch's token (default None: sample instead).

    ``generate`` / ``stream`` / ``stream_tokens`` take ``seed`` and ``on_step`` (called as
    ``on_step(step, logits, scores)`` after each step with its :class:`ShrekStep`, the logits and the
    attention scores it used); :attr:`trace` holds the last generation's steps.
    """

    def __init__(self, gguf_or_path: GgufFile | str | os.PathLike | None = None, model_id: str | None = None,
                 clarify_token: int | None = None, **kwargs: Any):
        base = {k: kwargs.pop(k) for k in list(kwargs) if k in ShrekParams.__dataclass_fields__}
        if 'repetition_penalty' in kwargs:
            raise TypeError('Shrek sampling has no repetition_penalty: its settings are temperature, top_k, '
                            'top_p and min_p')
        self.shrek_params = ShrekParams(**base)
        ShrekSampler(clarify_token=clarify_token)          # checked before the model loads
        self.clarify_token = clarify_token
        super().__init__(gguf_or_path, model_id, **kwargs)
        model = self.model
        if not hasattr(model, 'attention_scores') or not hasattr(model, 'unfused_attention'):
            self.close()
            raise TypeError(f'{type(model).__name__} does not expose its attention scores '
                            '(unfused_attention, attention_scores()): Shrek needs them')
        model.unfused_attention = (-1,)     # only the last layer, only here
        #: The steps of the last (or current) generation, in order.
        self.trace: list[ShrekStep] = []

    def last_scores(self) -> np.ndarray:
        """The last evaluation's last-layer attention scores, numpy ``(n_head, n_tokens, n_keys)``,
        over the cells the evaluated tokens attend to (cells masked for every token left out)."""
        scores = self.model.attention_scores(-1)
        used = np.isfinite(scores).any(axis=(0, 1))
        return scores[:, :, used]

    def _make_sampler(self, kwargs: dict[str, Any]) -> Any:
        kwargs = dict(kwargs)
        on_step = kwargs.pop('on_step', None)
        seed = kwargs.pop('seed', None)
        clarify = kwargs.pop('clarify_token', self.clarify_token)
        base = {k: kwargs.pop(k) for k in list(kwargs) if k in ShrekParams.__dataclass_fields__}
        if kwargs:
            raise TypeError(f'unknown Shrek sampling arguments: {sorted(kwargs)} (Shrek takes temperature, '
                            'top_k, top_p, min_p, seed, clarify_token, on_step)')
        if on_step is not None and not callable(on_step):
            raise TypeError(f'on_step must be callable as on_step(step, logits, scores), got {on_step!r}')
        params = ShrekParams(**{**self.shrek_params.__dict__, **base})
        self.trace = []
        return _ShrekDraw(self, ShrekSampler(params, seed=seed, clarify_token=clarify), on_step)

    def sample(self, logits: np.ndarray, **kwargs: Any) -> int:
        """One token from ``logits`` and the last evaluation's attention scores."""
        return self._make_sampler(kwargs)(logits, self.history)

    def stream_batch(self, prompts: Any, *args: Any, **kwargs: Any) -> Any:
        """Not for Shrek: its sampler reads the attention scores of the one sequence just evaluated,
        which a batch of several sequences does not give it. Generate prompt by prompt instead."""
        raise TypeError(f'{type(self).__name__} generates one prompt at a time (its sampler reads that '
                        'prompt\'s attention scores): call generate() per prompt, or batch with TextGen')


class ShrekChat(ShrekGen, TextChat):
    """A conversation (:class:`~gadget.textgen.TextChat`) sampled with the entropy-aware method;
    ``system=`` and the Shrek settings as keywords."""

    def __init__(self, gguf_or_path: GgufFile | str | os.PathLike | None = None, model_id: str | None = None,
                 system: str | None = None, **kwargs: Any):
        super().__init__(gguf_or_path, model_id, system=system, **kwargs)
