"""LlamaModel against transformers on tiny random Llamas converted by gadget.convert (exact parity)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gadget.convert import convert_llama
from gadget.models import ContextOverflowError, LlamaModel
from test_convert import LLAMA3_ROPE, PROMPT, byte_level_tokenizer, tiny_llama

TOL = 1e-3


@pytest.fixture(scope='module')
def tok():
    return byte_level_tokenizer()


def _convert(tmp_path_factory, tok, name: str, **config):
    model = tiny_llama(tok, **config)
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    path = convert_llama(folder, folder / 'model.gguf', 'F32', progress=False)
    return model, path


@pytest.fixture(scope='module', params=['gqa', 'tied_head_dim', 'llama3_rope', 'linear_rope'])
def pair(request, tmp_path_factory, tok):
    config = {
        'gqa': {},
        'tied_head_dim': dict(tie_word_embeddings=True, head_dim=32, num_hidden_layers=2,
                              n_vocab=len(tok) + 3),
        'llama3_rope': dict(rope_parameters=LLAMA3_ROPE, max_position_embeddings=512),
        'linear_rope': dict(rope_parameters={'rope_type': 'linear', 'factor': 2.0, 'rope_theta': 10000.0}),
    }[request.param]
    return _convert(tmp_path_factory, tok, request.param, **config)


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize('flash_attn', [True, False])
def test_prompt_logits_match_transformers(pair, tok, flash_attn):
    hf, path = pair
    ids = tok(PROMPT)['input_ids']
    expected = hf_logits(hf, ids)
    with LlamaModel.from_path(path, kv_type='F32', context_length=64, flash_attn=flash_attn) as model:
        got = model(ids, all_logits=True)
        np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
        model.reset()
        np.testing.assert_allclose(model(ids), expected[-1], atol=TOL, rtol=0)


@pytest.mark.parametrize('flash_attn', [True, False])
def test_incremental_logits_match_transformers(pair, tok, flash_attn):
    hf, path = pair
    ids = tok(PROMPT)['input_ids']
    expected = hf_logits(hf, ids)
    with LlamaModel.from_path(path, kv_type='F32', context_length=64, batch_size=8,
                              flash_attn=flash_attn) as model:
        first = model(ids[:5], all_logits=True)
        rest = np.stack([model([t]) for t in ids[5:]])
    np.testing.assert_allclose(np.concatenate([first, rest]), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize('flash_attn', [True, False])
def test_f16_cache_is_close(pair, tok, flash_attn):
    hf, path = pair
    ids = tok(PROMPT)['input_ids']
    expected = hf_logits(hf, ids)
    with LlamaModel.from_path(path, context_length=64, flash_attn=flash_attn) as model:   # F16 KV cache
        np.testing.assert_allclose(model(ids, all_logits=True), expected, atol=5e-2, rtol=0)


@pytest.mark.parametrize('flash_attn', [True, False])
def test_unfused_attention_scores_match_transformers_attention(tmp_path_factory, tok, flash_attn):
    hf, path = _convert(tmp_path_factory, tok, 'scores')
    ids = tok(PROMPT)['input_ids']
    hf.set_attn_implementation('eager')
    with torch.no_grad():
        out = hf(torch.tensor([ids]), output_attentions=True)
    with LlamaModel.from_path(path, kv_type='F32', context_length=64, flash_attn=flash_attn) as model:
        fused = model(ids, all_logits=True)
        model.reset()
        model.unfused_attention = (-1,)
        unfused = model(ids, all_logits=True)
        scores = model.attention_scores(-1)          # (n_head, n_tokens, n_window)
    np.testing.assert_allclose(unfused, fused, atol=TOL, rtol=0)
    n = len(ids)
    probs = np.exp(scores[:, :, :n] - scores[:, :, :n].max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, out.attentions[-1][0].numpy(), atol=1e-4, rtol=0)
    upper = np.triu_indices(n, 1)
    assert np.all(np.isneginf(scores[:, upper[0], upper[1]]))      # the causal mask is applied


def test_context_overflow_is_an_error_before_compute(tmp_path_factory, tok):
    _, path = _convert(tmp_path_factory, tok, 'overflow')
    with LlamaModel.from_path(path, context_length=16) as model:
        model(list(range(10)))
        with pytest.raises(ContextOverflowError, match=r'10 cached.*context_length \(16\)'):
            model(list(range(7)))
        assert model.n_past == 10                     # nothing was computed or cached
        model.rewind(4)
        model(list(range(12)))
        assert model.n_past == 16
        with pytest.raises(ValueError, match='non-empty'):
            model([])
        with pytest.raises(TypeError, match='integers'):
            model([1.5])


@pytest.mark.parametrize('weight_type, atol', [('F16', 2e-2), ('BF16', 1e-1), ('Q8_0', 1e-1)])
def test_weight_type_converts_the_layer_matrices_once(pair, tok, weight_type, atol):
    from gadget.types import as_ggml_type
    hf, path = pair
    ids = tok(PROMPT)['input_ids']
    expected = hf_logits(hf, ids)
    with LlamaModel.from_path(path, kv_type='F32', context_length=64, weight_type=weight_type) as model:
        assert model.tensors['blk.0.ffn_up.weight'].type == as_ggml_type(weight_type)
        assert model.tensors['blk.1.attn_q.weight'].type == as_ggml_type(weight_type)
        assert model.tensors['token_embd.weight'].type == as_ggml_type('F32')    # as stored
        got = model(ids, all_logits=True)
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() <= atol * scale
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.9


def test_weight_type_outside_the_list_is_refused(pair):
    _, path = pair
    with pytest.raises(ValueError, match=r"weight_type.*'Q4_1'.*'F32', 'F16', 'BF16', 'Q8_0'"):
        LlamaModel.from_path(path, weight_type='Q4_1')


def test_weight_type_from_a_quantized_file(tmp_path_factory, tok):
    # A Q8_0 file loaded with weight_type='BF16': the blocks are dequantized, then converted.
    from gadget.types import as_ggml_type
    hf = tiny_llama(tok)
    folder = tmp_path_factory.mktemp('q8')
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    path = convert_llama(folder, folder / 'model.gguf', 'Q8_0', progress=False)
    ids = tok(PROMPT)['input_ids']
    with LlamaModel.from_path(path, kv_type='F32', context_length=64) as stored, \
            LlamaModel.from_path(path, kv_type='F32', context_length=64, weight_type='BF16') as bf16:
        assert stored.tensors['blk.0.ffn_up.weight'].type == as_ggml_type('Q8_0')
        assert bf16.tensors['blk.0.ffn_up.weight'].type == as_ggml_type('BF16')
        a, b = stored(ids, all_logits=True), bf16(ids, all_logits=True)
    expected = hf_logits(hf, ids)
    scale = np.abs(expected).max()
    assert np.abs(a - expected).max() <= 0.1 * scale and np.abs(b - expected).max() <= 0.1 * scale
    assert np.abs(a - b).max() <= 0.1 * scale
