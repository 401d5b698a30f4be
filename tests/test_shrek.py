"""The entropy-aware sampler: its metrics and branch selection against hand-computed values on crafted
inputs, each branch's settings, the sampler's steps, and ShrekGen / ShrekChat on SmolLM2 (seeded,
fluent, with attention scores that equal a numpy recomputation from the last layer's Q and K)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gadget import shrek
from hypothesis import given
from hypothesis import settings as settings_hyp
from hypothesis import strategies as st

from gadget.sampling import Sampler, SamplingParams, softmax
from gadget.shrek import (BRANCHES, METRICS, ShrekChat, ShrekGen, ShrekParams, ShrekSampler, branch, metrics,
                          settings)
from gadget.textgen import TextGen, default_model_path

NEG = -np.inf
L2 = math.log2


def logits_of(p):
    """Logits whose softmax is ``p`` (zeros become -inf)."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide='ignore'):
        return np.log(p)


def flat_scores(n_head=2, n_keys=3):
    return np.zeros((n_head, 1, n_keys))


# --- metrics, by hand ------------------------------------------------------------------------------

def test_logit_entropy_and_varentropy_by_hand():
    m = metrics(np.zeros(8), flat_scores())                     # uniform over 8: 3 bits, no spread
    assert m['entropy'] == pytest.approx(3.0, abs=1e-12) and m['varentropy'] == pytest.approx(0.0, abs=1e-12)
    m = metrics(logits_of([0.75, 0.25]), flat_scores())
    h = -(0.75 * L2(0.75) + 0.25 * L2(0.25))
    v = 0.75 * (L2(0.75) + h) ** 2 + 0.25 * (L2(0.25) + h) ** 2
    assert m['entropy'] == pytest.approx(h, rel=1e-12) and m['varentropy'] == pytest.approx(v, rel=1e-12)
    # impossible tokens (-inf) contribute nothing, and a single possible token is certainty
    m = metrics(np.array([NEG, 2.0, NEG, NEG]), flat_scores())
    assert m['entropy'] == 0.0 and m['varentropy'] == 0.0
    m = metrics(np.array([1.0, 1.0, NEG]), flat_scores())
    assert m['entropy'] == pytest.approx(1.0) and m['varentropy'] == pytest.approx(0.0, abs=1e-12)


def test_attention_metrics_by_hand():
    # head 0 attends evenly to two keys; head 1 only to key 0 (key 1 masked)
    scores = np.array([[[1.0, 1.0]], [[2.0, NEG]]])              # (n_head 2, n_queries 1, n_keys 2)
    m = metrics(np.zeros(4), scores)
    entropies = [1.0, 0.0]                                        # bits, per (head, query)
    assert m['attn_entropy'] == pytest.approx(np.mean(entropies))
    assert m['attn_varentropy'] == pytest.approx(np.var(entropies, ddof=1))     # 0.5
    a = np.array([[0.5, 0.5], [1.0, 0.0]])
    assert m['agreement'] == pytest.approx(np.abs(a - a.mean(axis=0)).mean())   # 0.25
    assert m['interaction_strength'] == pytest.approx((1 + 1 + 2) / 3)           # finite entries only


def test_attention_metrics_several_queries():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 4, 5)) * 2
    scores[:, 0, 2:] = NEG                                        # a causal-like mask on the first query
    m = metrics(rng.normal(size=50), scores)
    a = np.exp(scores - scores.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    ent = -(a * np.log2(np.clip(a, 1e-10, 1))).sum(-1)           # (3, 4)
    assert m['attn_entropy'] == pytest.approx(ent.mean(), rel=1e-12)
    assert m['attn_varentropy'] == pytest.approx(ent.var(axis=0, ddof=1).mean(), rel=1e-12)
    assert m['agreement'] == pytest.approx(np.abs(a - a.mean(0)).mean(), rel=1e-12)
    assert m['interaction_strength'] == pytest.approx(np.abs(scores[np.isfinite(scores)]).mean(), rel=1e-12)


def test_degenerate_attention_gives_no_nan():
    one_head = metrics(np.zeros(3), np.array([[[0.3, -1.0, 2.0]]]))
    assert one_head['attn_varentropy'] == 0.0 and one_head['agreement'] == 0.0
    one_key = metrics(np.zeros(3), np.full((4, 2, 1), 5.0))
    assert one_key['attn_entropy'] == 0.0 and one_key['attn_varentropy'] == 0.0
    assert one_key['interaction_strength'] == 5.0
    # a query row with every key masked attends nowhere: entropy 0, and no NaN anywhere
    scores = np.array([[[NEG, NEG], [0.0, 0.0]], [[NEG, NEG], [0.0, NEG]]])
    m = metrics(np.zeros(3), scores)
    assert all(math.isfinite(v) for v in m.values())
    assert m['attn_entropy'] == pytest.approx((0 + 1 + 0 + 0) / 4)
    assert m['attn_varentropy'] == pytest.approx((0 + np.var([1.0, 0.0], ddof=1)) / 2)
    everything_masked = metrics(np.zeros(3), np.full((2, 2, 2), NEG))
    assert everything_masked == dict(everything_masked, attn_entropy=0.0, attn_varentropy=0.0, agreement=0.0,
                                     interaction_strength=0.0)
    assert set(m) == set(METRICS)


@pytest.mark.parametrize('logits, scores, message', [
    (np.array([0.0, np.nan]), flat_scores(), 'logits contains NaN'),
    (np.array([0.0, np.inf]), flat_scores(), r'logits contains \+inf'),
    (np.full(3, NEG), flat_scores(), 'every logit is -inf'),
    (np.zeros((2, 3)), flat_scores(), r'logits must be a non-empty vector'),
    (np.zeros(0), flat_scores(), r'logits must be a non-empty vector'),
    (np.zeros(3), np.zeros((2, 3)), r'scores must be \(n_head, n_queries, n_keys\)'),
    (np.zeros(3), np.zeros((2, 0, 3)), 'no empty dimension'),
    (np.zeros(3), np.array([[[0.0, np.nan]]]), 'scores contains NaN'),
])
def test_bad_inputs_are_refused(logits, scores, message):
    with pytest.raises(ValueError, match=message):
        metrics(logits, scores)


# --- branches ----------------------------------------------------------------------------------------

def m_of(h, v, **attn):
    return dict(dict(entropy=h, varentropy=v, attn_entropy=1.0, attn_varentropy=0.5, agreement=0.2,
                     interaction_strength=3.0), **attn)


@pytest.mark.parametrize('h, v, expected', [
    (0.05, 0.05, 'argmax'), (0.1, 0.05, 'adaptive'), (0.05, 0.1, 'adaptive'),
    (3.5, 0.05, 'clarify'), (3.0, 0.05, 'adaptive'), (3.5, 0.1, 'adaptive'),
    (4.9, 5.1, 'explore'), (1.0, 20.0, 'explore'), (5.0, 5.1, 'adaptive'), (4.9, 5.0, 'adaptive'),
    (5.1, 5.1, 'lost'), (9.0, 40.0, 'lost'),
    (1.0, 1.0, 'adaptive'), (6.0, 1.0, 'adaptive'), (0.05, 3.0, 'adaptive'),
])
def test_branch_thresholds(h, v, expected):
    assert branch(m_of(h, v)) == expected


@pytest.mark.parametrize('p, expected', [
    ([0.999999, 1e-6], 'argmax'),                                  # confident
    ([1 / 16] * 16, 'clarify'),                                    # flat: 4 bits, no varentropy
    ([0.7] + [0.3 / 2 ** 12] * 2 ** 12, 'explore'),                # one strong token and a long tail
    ([0.4] + [0.6 / 2 ** 16] * 2 ** 16, 'lost'),                   # weak favourite, huge tail
    ([0.5, 0.5], 'adaptive'),
])
def test_each_branch_reached_by_crafted_logits(p, expected):
    assert branch(metrics(logits_of(p), flat_scores())) == expected


def test_branch_refuses_incomplete_or_nan_metrics():
    with pytest.raises(KeyError, match='agreement'):
        branch({k: 0.0 for k in METRICS if k != 'agreement'})
    with pytest.raises(ValueError, match='finite'):
        branch(m_of(float('nan'), 0.0))


def test_settings_of_each_branch():
    base = ShrekParams(temperature=0.666, top_p=0.9, top_k=27, min_p=0.0)
    m = m_of(4.0, 6.0, attn_entropy=1.5, attn_varentropy=0.4, agreement=0.3, interaction_strength=2.5)
    assert settings('argmax', m, base).temperature == 0
    s = settings('clarify', m, base)
    assert s.temperature == pytest.approx(min(1.5, 0.666 * (1.3 + 0.2 * 1.5)))
    assert (s.top_k, s.top_p, s.min_p) == (27, 0.9, 0.0)
    s = settings('explore', m, base)
    assert s.temperature == pytest.approx(min(1.5, 0.666 * (1.2 + 0.3 * 2.5)))        # capped at 1.5
    assert s.top_k == max(5, int(27 * (1 + 0.5 * (1 - 0.3)))) == 36
    assert (s.top_p, s.min_p) == (0.9, 0.0)
    s = settings('lost', m, base)
    assert s.temperature == pytest.approx(max(2.0, 0.666 * (2.0 + 0.5 * 0.4)))        # at least 2
    assert s.top_p == pytest.approx(max(0.5, 0.9 - 0.2 * 1.5))
    assert (s.top_k, s.min_p) == (27, 0.0)
    s = settings('adaptive', m, base)
    logit_u, attn_u = 4.0 + 6.0, 1.5 + 0.4
    assert s.temperature == pytest.approx(0.666 * (1 + 0.3 * logit_u + 0.2 * attn_u - 0.2 * 0.3))
    assert s.top_p == pytest.approx(min(1.0, max(0.1, 0.9 * (1 + 0.1 * 0.4))))
    assert s.top_k == min(100, max(1, round(27 * (1 + 0.3 * 2.5 - 0.2 * 0.3)))) == 46
    assert s.min_p == pytest.approx(0.01)                      # 0.03 (1 - 0.5 * 10) < 0.01: clamped
    calm = m_of(0.5, 0.2, attn_varentropy=0.0, agreement=0.1, interaction_strength=0.0)
    assert settings('adaptive', calm, base).min_p == pytest.approx(0.03 * (1 - 0.5 * 0.7))
    with pytest.raises(ValueError, match='unknown branch'):
        settings('wander', m, base)


@pytest.mark.parametrize('kwargs, message', [
    (dict(temperature=0), 'temperature'), (dict(temperature=float('nan')), 'temperature'),
    (dict(top_k=0), 'top_k'), (dict(top_p=0.0), 'top_p'), (dict(min_p=1.5), 'min_p'),
])
def test_shrek_params_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShrekParams(**kwargs)


@settings_hyp(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2 ** 32 - 1), n=st.integers(1, 400), scale=st.sampled_from([0.01, 0.5, 3.0, 40.0]),
       ties=st.booleans(), temperature=st.floats(0.05, 3.0), top_k=st.integers(1, 120),
       top_p=st.floats(0.05, 1.0), min_p=st.sampled_from([0.0, 0.01, 0.2, 0.9]))
def test_candidates_equal_the_full_filtered_distribution(seed, n, scale, ties, temperature, top_k, top_p,
                                                         min_p):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=n) * scale).astype(np.float32)
    if ties:                                                   # many equal logits: ties broken by id
        logits = np.round(logits)
    sampler = Sampler(SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p))
    full = sampler.probabilities(logits)
    ids, probs = sampler.candidates(logits)
    np.testing.assert_array_equal(np.sort(ids), np.flatnonzero(full))
    np.testing.assert_allclose(probs, full[ids], rtol=1e-12, atol=0)
    assert np.all(np.diff(probs) <= 1e-15)                     # most likely first


# --- the sampler's steps -------------------------------------------------------------------------------

def test_argmax_step_takes_the_most_likely_token():
    step = ShrekSampler(seed=0).step(logits_of([1e-7, 0.9999998, 1e-7]), flat_scores())
    assert (step.branch, step.token, step.temperature) == ('argmax', 1, 0.0)


def test_clarify_inserts_its_token_once_then_samples():
    logits, scores = np.zeros(16), flat_scores()
    sampler = ShrekSampler(seed=0, clarify_token=7)
    first = sampler.step(logits, scores, context=[3, 4])
    assert (first.branch, first.token, first.temperature) == ('clarify', 7, None)
    second = sampler.step(logits, scores, context=[3, 4, 7])    # right after it: sample instead
    assert second.metrics['attn_entropy'] == pytest.approx(math.log2(3))     # 3 keys, evenly
    assert second.branch == 'clarify'
    assert second.temperature == pytest.approx(min(1.5, 0.666 * (1.3 + 0.2 * math.log2(3))))
    assert 0 <= second.token < 16
    no_token = ShrekSampler(seed=0).step(logits, scores, context=[3])
    assert no_token.temperature is not None


def test_explore_and_lost_sample_within_their_filters():
    rng = np.random.default_rng(6)
    p = np.array([0.7] + [0.3 / 2 ** 12] * 2 ** 12) * rng.uniform(0.9, 1.1, size=2 ** 12 + 1)
    p /= p.sum()
    for seed in range(20):
        step = ShrekSampler(seed=seed).step(logits_of(p), flat_scores())
        assert step.branch == 'explore'
        assert step.top_k == max(5, int(27 * (1 + 0.5 * (1 - step.metrics['agreement']))))
        # the token is among the step's top_k most likely (the favourite, or the tail's largest)
        assert step.token in set(np.argsort(-p, kind='stable')[:step.top_k].tolist())
    lost = ShrekSampler(seed=2).step(logits_of([0.4] + [0.6 / 2 ** 16] * 2 ** 16), flat_scores())
    assert lost.branch == 'lost' and lost.temperature >= 2.0
    assert lost.top_p == pytest.approx(max(0.5, 0.9 - 0.2 * lost.metrics['attn_entropy']))


def test_adaptive_keeps_the_best_scoring_of_five_candidates():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=200) * 0.5                         # H ~ 7.5 bits, V < 1: adaptive
    step = ShrekSampler(seed=5).step(logits, rng.normal(size=(4, 2, 6)))
    assert step.branch == 'adaptive' and len(step.candidates) == shrek.N_CANDIDATES == 5
    log_p = np.log(softmax(logits))
    bonus = shrek.confidence(step.metrics)
    np.testing.assert_allclose(step.candidate_scores, log_p[step.candidates] + bonus, rtol=1e-6)
    assert step.token == step.candidates[int(np.argmax(step.candidate_scores))]
    # every candidate passes the step's filters
    allowed = np.argsort(-softmax(logits / step.temperature), kind='stable')[:step.top_k]
    assert set(step.candidates) <= set(allowed.tolist())


def test_same_seed_same_steps():
    rng = np.random.default_rng(4)
    inputs = [(rng.normal(size=300) * s, rng.normal(size=(3, 1, 8))) for s in (0.5, 2, 8, 30)]
    runs = [[ShrekSampler(seed=11).step(lg, sc).token for lg, sc in inputs] for _ in range(2)]
    assert runs[0] == runs[1]
    with pytest.raises(ValueError, match='seed'):
        ShrekSampler(seed=-1)
    with pytest.raises(ValueError, match='clarify_token'):
        ShrekSampler(clarify_token=-3)


# --- on SmolLM2 ----------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def gen():
    with ShrekGen(default_model_path(), context_length=512, batch_size=64) as g:
        yield g


def _perplexity(model_gen, prompt: list[int], generated: list[int]) -> float:
    model_gen.reset()
    logits = model_gen.logits(prompt + generated, all_logits=True)
    model_gen.reset()
    log_p = [np.log(softmax(logits[len(prompt) - 1 + i])[t]) for i, t in enumerate(generated)]
    return float(np.exp(-np.mean(log_p)))


def test_same_seed_same_text_and_a_full_trace(gen):
    a = gen.generate('Once upon a time', max_gen=32, seed=3)
    trace_a = [(s.token, s.branch) for s in gen.trace]
    b = gen.generate('Once upon a time', max_gen=32, seed=3)
    assert a == b and [(s.token, s.branch) for s in gen.trace] == trace_a
    assert ''.join(gen.stream('Once upon a time', max_gen=32, seed=3)) == a
    assert gen.generate('Once upon a time', max_gen=32, seed=4) != a
    assert len(trace_a) == 32 and all(branch in BRANCHES for _, branch in trace_a)
    assert gen.detokenize([t for t, _ in trace_a]) == a


def test_the_text_is_fluent(gen):
    prompt = gen.tokenize('The old lighthouse keeper looked out at the sea and')
    for seed in range(3):
        tokens = list(gen.stream_tokens(prompt, max_gen=40, seed=seed))
        text = gen.detokenize(tokens)
        # the model itself finds its text likely (random tokens score in the thousands) ...
        assert _perplexity(gen, prompt, tokens) < 30, text
        # ... and it is words: mostly letters and spaces
        assert sum(c.isalpha() or c.isspace() for c in text) >= 0.85 * len(text), text
        # ... and not cut short: 40 tokens of words, or a sentence ended by the model itself
        if gen.finish_reason == 'stop':
            assert len(text.split()) >= 8 and text.rstrip()[-1:] in '.!?"\'”’)', text
        else:
            assert len(tokens) == 40 and len(text.split()) >= 15, text


@pytest.mark.parametrize('kv_type, rtol', [('F32', 1e-5), ('F16', 2e-3)])
def test_the_scores_it_used_equal_a_numpy_recomputation(kv_type, rtol):
    with ShrekGen(default_model_path(), context_length=512, batch_size=64, kv_type=kv_type) as g:
        model, p = g.model, g.model.params
        last = p['n_layer'] - 1
        group = p['n_head'] // p['n_head_kv']
        checked = []

        def on_step(step, logits, scores):
            q = model.get_named_node(f'q_rope{last}')             # (n_tokens, n_head, head_dim)
            q = q.reshape(-1, p['n_head'], p['head_dim'])          # (a single token's comes as 2-D)
            keys = model.get_input(f'cache_k.{last}').astype(np.float64)   # (cells, n_kv)
            n_past = model.n_past
            n_tokens = q.shape[0]
            keys = keys[:n_past].reshape(n_past, p['n_head_kv'], p['head_dim'])
            ref = np.einsum('thd,chd->htc', q.astype(np.float64), np.repeat(keys, group, axis=1))
            ref /= math.sqrt(p['head_dim'])
            query_pos = np.arange(n_past - n_tokens, n_past)
            ref[:, np.arange(n_past)[None, :] > query_pos[:, None]] = NEG        # causal mask
            assert scores.shape == ref.shape == (p['n_head'], n_tokens, n_past)
            assert np.array_equal(np.isinf(scores), np.isinf(ref))
            finite = np.isfinite(ref)
            np.testing.assert_allclose(scores[finite], ref[finite], rtol=rtol,
                                       atol=rtol * np.abs(ref[finite]).max())
            assert step.metrics == metrics(logits, scores)
            checked.append(n_tokens)

        g.generate('The capital of France is', max_gen=6, seed=0, on_step=on_step)
        assert len(checked) == len(g.trace) >= 2       # (it may stop early at an end-of-text token)
        assert checked == [len(g.tokenize('The capital of France is'))] + [1] * (len(checked) - 1)


def test_textgen_keeps_every_layer_fused():
    with TextGen(default_model_path(), context_length=256, batch_size=32) as plain:
        assert tuple(plain.model.unfused_attention) == ()
        with pytest.raises(ValueError, match='fused'):
            plain.logits(plain.tokenize('Hello')) is not None and plain.model.attention_scores(-1)


def test_bad_settings_are_refused_before_anything_runs(gen):
    with pytest.raises(ValueError, match='temperature'):
        gen.generate('Hi', max_gen=4, temperature=0)
    with pytest.raises(TypeError, match='unknown Shrek sampling arguments'):
        gen.generate('Hi', max_gen=4, repetition_penalty=1.1)
    with pytest.raises(TypeError, match='on_step must be callable'):
        gen.generate('Hi', max_gen=4, on_step=3)
    with pytest.raises(TypeError, match='repetition_penalty'):
        ShrekGen(default_model_path(), repetition_penalty=1.2)


def test_shrek_chat_turns_are_seeded_and_a_failed_turn_leaves_the_conversation():
    with ShrekChat(default_model_path(), system='You are a helpful assistant.', context_length=512,
                   batch_size=64) as chat:
        reply = chat.generate_chat('Name a fruit.', max_gen=24, seed=1)
        assert reply.strip() and chat.trace and len(chat.messages) == 3
        chat.reset()
        assert chat.generate_chat('Name a fruit.', max_gen=24, seed=1) == reply
        before = list(chat.messages)
        with pytest.raises(ValueError, match='top_p'):
            chat.generate_chat('And a vegetable?', max_gen=8, top_p=2.0)
        assert chat.messages == before


def test_shrek_refuses_a_batch_of_prompts():
    # its sampler reads the one evaluated sequence's attention scores: a batch would feed it others'
    from gadget.shrek import ShrekGen
    with ShrekGen(context_length=128) as gen:
        with pytest.raises(TypeError, match='one prompt at a time'):
            gen.generate(['a', 'b'], max_gen=2)
