"""gadget's tokenizer from GGUF metadata against transformers' GGUF tokenizer, the independent reference.

The same file goes to both: tokens, decoded text and rendered chat prompts must be identical. The
real SmolLM2 file covers a byte-level BPE vocabulary with control tokens and a chat template; small
files built here cover what SmolLM2 does not (a pre-tokenizer split by name, BOS/EOS added, a
user-defined token, a mislabelled control token, a SentencePiece vocabulary without merges).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from gadget.gguf import GgufFile
from gadget.textgen import default_model_path
from gadget.tokenizer import Tokenizer, load_tokenizer

transformers = pytest.importorskip('transformers')
pytest.importorskip('gguf')   # transformers reads GGUF metadata through gguf-py

TEXTS = [
    '', ' ', '   ', '\n', '\n\n\t x', 'Hello world', ' Hello  world ', 'The capital of France is',
    "I'm sure they'll've DONE it, isn't it?", 'naïve café – “quoted” — ü ß', '中文分词测试，句号。',
    '日本語のテキスト',
    'emoji 🤖🎉 and 👩‍👩‍👧 family', 'code: def f(x):\n    return x**2  # square\n', '1234567 3.14159 0x1F',
    '<|im_start|>user\nhi<|im_end|>\n', 'text<|endoftext|>more', '<|im_end|><|im_end|>', 'tab\there',
    'Ünïcödé ǅ ﬁ ㈱', '\u200b zero width', 'a' * 300, ' '.join(['word'] * 50),
]

CONVERSATIONS = [
    [{'role': 'user', 'content': 'What is the capital of France?'}],
    [{'role': 'system', 'content': 'Answer briefly.'}, {'role': 'user', 'content': 'Hi!'}],
    [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello, how can I help?'},
     {'role': 'user', 'content': 'Name a river — in 中文 too.'}],
]


def _hf_from_gguf(path):
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def _assert_same(ours: Tokenizer, ref, texts=TEXTS) -> None:
    for text in texts:
        for special in (True, False):
            expected = ref(text, add_special_tokens=special)['input_ids']
            assert ours.encode(text, add_special_tokens=special) == expected, (text, special)
        ids = ref(text)['input_ids']
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(
                ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False), (text, skip)


@pytest.fixture(scope='module')
def smollm2():
    path = default_model_path()
    return path, _hf_from_gguf(path)


def test_smollm2_tokenizer_is_transformers_tokenizer(smollm2, tmp_path):
    path, ref = smollm2
    with GgufFile.from_path(path) as gguf:
        ours = Tokenizer.from_gguf(gguf)
    # The same pipeline, piece for piece (normaliser, pre-tokenizer, model, decoder, added tokens).
    assert json.loads(ours.backend.to_str()) == json.loads(ref.backend_tokenizer.to_str())
    _assert_same(ours, ref)
    assert ours.eos_token_id == ref.eos_token_id and ours.bos_token_id == ref.bos_token_id
    for name in ('bos_token', 'eos_token', 'unk_token', 'pad_token'):
        assert ours.special_tokens.get(name) == getattr(ref, name)


def test_smollm2_chat_template_renders_as_transformers(smollm2):
    path, ref = smollm2
    with GgufFile.from_path(path) as gguf:
        ours = Tokenizer.from_gguf(gguf)
    assert ours.chat_template == ref.chat_template
    for messages in CONVERSATIONS:
        for generation_prompt in (True, False):
            expected = ref.apply_chat_template(messages, add_generation_prompt=generation_prompt,
                                               tokenize=False)
            assert ours.apply_chat_template(messages, add_generation_prompt=generation_prompt) == expected
            assert ours.encode(expected, add_special_tokens=False) == ref.apply_chat_template(
                messages, add_generation_prompt=generation_prompt, tokenize=True, return_dict=False)


def test_cache_round_trip_and_transformers_reads_the_cache(smollm2, tmp_path, monkeypatch):
    path, ref = smollm2
    monkeypatch.setenv('GADGET_CACHE', str(tmp_path))
    built = load_tokenizer(path)
    [entry] = list((tmp_path / 'tokenizers').iterdir())
    assert sorted(p.name for p in entry.iterdir()) == ['chat_template.jinja', 'tokenizer.json',
                                                       'tokenizer_config.json']
    cached = load_tokenizer(path)
    assert json.loads(cached.backend.to_str()) == json.loads(built.backend.to_str())
    assert cached.special_tokens == built.special_tokens and cached.chat_template == built.chat_template
    _assert_same(cached, ref, TEXTS[:8])
    saved = transformers.AutoTokenizer.from_pretrained(str(entry))
    for text in TEXTS:
        assert saved(text)['input_ids'] == cached.encode(text)
    # A damaged entry is rebuilt, not trusted.
    (entry / 'tokenizer.json').write_text('{not json')
    assert load_tokenizer(path).encode('Hello world') == ref('Hello world')['input_ids']


def _small_bpe(smollm2_path, n=3000):
    """The first ``n`` tokens of SmolLM2's vocabulary and the merges among them: a real byte-level
    BPE vocabulary small enough for transformers to load in a moment."""
    with GgufFile.from_path(smollm2_path) as gguf:
        tokens = gguf.fields['tokenizer.ggml.tokens'][:n]
        types = np.asarray(gguf.fields['tokenizer.ggml.token_type'][:n], dtype=np.int32)
        merges = gguf.fields['tokenizer.ggml.merges']
    known = set(tokens)
    merges = [m for m in merges if all(p in known for p in m.split(' ')) and m.replace(' ', '') in known]
    return list(tokens), types, merges


def _write_tokenizer_gguf(path, fields):
    out = GgufFile()
    out.set_field('general.architecture', 'llama')
    for key, value in fields.items():
        out.set_field(key, value)
    out.set_tensor('token_embd.weight', np.zeros((4, 32), np.float32))
    out.save(path)
    return path


@pytest.mark.parametrize('variant', ['llama-bpe split', 'qwen2 split', 'bos and eos added',
                                     'user-defined and mislabelled control', 'bos is a normal token'])
def test_byte_level_variants_match_transformers(smollm2, tmp_path, variant):
    tokens, types, merges = _small_bpe(smollm2[0])
    fields = {'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.tokens': tokens,
              'tokenizer.ggml.token_type': types, 'tokenizer.ggml.merges': merges,
              'tokenizer.ggml.bos_token_id': 1, 'tokenizer.ggml.eos_token_id': 2,
              'tokenizer.ggml.pre': 'smollm'}
    if variant == 'llama-bpe split':
        fields['tokenizer.ggml.pre'] = 'llama-bpe'
    elif variant == 'qwen2 split':
        fields['tokenizer.ggml.pre'] = 'qwen2'
    elif variant == 'bos and eos added':
        fields.update({'tokenizer.ggml.add_bos_token': True, 'tokenizer.ggml.add_eos_token': True})
    elif variant == 'user-defined and mislabelled control':
        tokens += ['<think>', '</think>', '<|ctrl ✓|>']
        fields['tokenizer.ggml.token_type'] = np.concatenate([types, np.array([4, 4, 3], np.int32)])
    elif variant == 'bos is a normal token':
        fields.update({'tokenizer.ggml.bos_token_id': 500, 'tokenizer.ggml.add_bos_token': True})
    path = _write_tokenizer_gguf(tmp_path / 'tok.gguf', fields)
    ref = _hf_from_gguf(path)
    with GgufFile.from_path(path) as gguf:
        ours = Tokenizer.from_gguf(gguf)
    texts = TEXTS + ['<think>reasoning</think> answer', 'x<|ctrl ✓|>y']
    _assert_same(ours, ref, texts)


def _sentencepiece_vocab():
    """A SentencePiece-style vocabulary (llama.cpp's 'llama' model): control tokens, byte tokens,
    scored pieces, and no merges (they are implied by the scores)."""
    tokens, scores, types = ['<unk>', '<s>', '</s>'], [0.0, 0.0, 0.0], [2, 3, 3]
    tokens += [f'<0x{b:02X}>' for b in range(256)]
    scores += [0.0] * 256
    types += [6] * 256
    pieces = ['\u2581', 'e', 't', 'a', 'o', 'h', 'l', 'r', 'd', 'w', 'n', 's', 'i', 'c', 'p', 'u', 'x', 'y',
              '\u2581t', 'he', '\u2581the', 'll', 'ello', '\u2581h', '\u2581hello', 'or', '\u2581w',
              '\u2581wor',
              'ld', '\u2581world', 'in', 'ing', '\u2581s', 'er', 'ex', '\u2581ex', 'ent', 'is', '\u2581is']
    for rank, piece in enumerate(pieces):
        tokens.append(piece)
        scores.append(-float(rank))
        types.append(1)
    return tokens, np.asarray(scores, np.float32), np.asarray(types, np.int32)


def test_sentencepiece_vocabulary_without_merges_matches_transformers(tmp_path):
    tokens, scores, types = _sentencepiece_vocab()
    path = _write_tokenizer_gguf(tmp_path / 'spm.gguf', {
        'tokenizer.ggml.model': 'llama', 'tokenizer.ggml.tokens': tokens, 'tokenizer.ggml.scores': scores,
        'tokenizer.ggml.token_type': types, 'tokenizer.ggml.bos_token_id': 1,
        'tokenizer.ggml.eos_token_id': 2,
        'tokenizer.ggml.unknown_token_id': 0})
    ref = _hf_from_gguf(path)
    with GgufFile.from_path(path) as gguf:
        ours = Tokenizer.from_gguf(gguf)
    _assert_same(ours, ref, TEXTS + ['hello the world', ' hello  world', 'Hello World', 'the text is ex'])
    assert ours.encode('hello')[0] == 1                      # BOS by default for SentencePiece vocabularies


@pytest.mark.parametrize('fields, message', [
    ({}, 'no tokenizer'),
    ({'tokenizer.ggml.model': 'rwkv', 'tokenizer.ggml.tokens': ['a']}, "'rwkv' is not supported"),
    ({'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.tokens': ['a', 'b'], 'tokenizer.ggml.merges': ['a b'],
      'tokenizer.ggml.eos_token_id': 7},
     r'eos_token_id = 7 is not a token id \(the vocabulary has 2 tokens\)'),
    ({'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.tokens': ['a', 'b'], 'tokenizer.ggml.merges': ['ab'],
      }, 'merges must be strings'),
    ({'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.tokens': ['a', 'b'], 'tokenizer.ggml.token_type': [1]},
     'token_type has 1 entries for 2 tokens'),
    ({'tokenizer.ggml.model': 'llama', 'tokenizer.ggml.tokens': ['a', 'b']}, 'needs tokenizer.ggml.scores'),
])
def test_broken_tokenizer_metadata_is_refused_by_name(tmp_path, fields, message):
    path = _write_tokenizer_gguf(tmp_path / 'bad.gguf', fields)
    with GgufFile.from_path(path) as gguf, pytest.raises(ValueError, match=message):
        Tokenizer.from_gguf(gguf)


def test_decode_refuses_ids_outside_the_vocabulary(smollm2):
    with GgufFile.from_path(smollm2[0]) as gguf:
        ours = Tokenizer.from_gguf(gguf)
    with pytest.raises(ValueError, match=r'token id 49152 is out of range: the vocabulary has 49152 tokens'):
        ours.decode([1, 49152])
    with pytest.raises(ValueError, match='token id -1'):
        ours.decode([-1])
    with pytest.raises(TypeError, match='text must be a str'):
        ours.encode(b'bytes')
    with pytest.raises(ValueError, match='messages is empty'):
        ours.apply_chat_template([])


def test_template_features_transformers_provides(tmp_path):
    template = ("{% for m in messages %}{% if m.role == 'bad' %}{{ raise_exception('no bad roles') }}"
                "{% endif %}{% generation %}{{ m.content | tojson }}{% endgeneration %}"
                "{% if loop.index > 1 %}{% break %}"
                "{% endif %}{% endfor %}{{ bos_token }}{{ strftime_now('%Y') | length }}")
    with GgufFile.from_path(default_model_path()) as gguf:
        base = Tokenizer.from_gguf(gguf)
    ours = Tokenizer(base.backend, base.special_tokens, template)
    messages = [{'role': 'user', 'content': c} for c in ('ü', 'b', 'c')]
    assert ours.apply_chat_template(messages) == '"ü""b"<|im_start|>4'
    from jinja2.exceptions import TemplateError
    with pytest.raises(TemplateError, match='no bad roles'):
        ours.apply_chat_template([{'role': 'bad', 'content': ''}])
