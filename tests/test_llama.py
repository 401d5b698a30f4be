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


def _greedy_alone(model, prompts, steps):
    alone = []
    for ids in prompts:
        model.reset()
        logits = [model(ids)]
        for _ in range(steps):
            logits.append(model([int(np.argmax(logits[-1]))]))
        alone.append(np.stack(logits))
    model.reset()
    return alone


@pytest.mark.parametrize('flash_attn', [True, False])
@pytest.mark.parametrize('batch_size', [512, 8])          # 8: the prompts are split across graphs
def test_several_sequences_decode_as_each_alone(pair, tok, batch_size, flash_attn):
    _, path = pair
    prompts = [tok(t)['input_ids'] for t in (PROMPT, PROMPT[:7], 'a b c d e f g h i j k', 'xyz')]
    with LlamaModel.from_path(path, context_length=128, batch_size=batch_size, flash_attn=flash_attn,
                              kv_type='F32') as model:
        alone = _greedy_alone(model, prompts, steps=5)
        got = {i: [logits] for i, logits in model.batch(dict(enumerate(prompts))).items()}
        for step in range(5):
            # teacher-forced with each sequence's own greedy tokens: the same inputs as alone
            tokens = {i: [int(np.argmax(alone[i][step]))] for i in got}
            for i, logits in model.batch(tokens).items():
                got[i].append(logits)
        for i in range(len(prompts)):
            # F32 weights: GGML tiles a product of several rows differently from one row
            np.testing.assert_allclose(np.stack(got[i]), alone[i], atol=TOL, rtol=0)
            assert model.sequence_length(i) == len(prompts[i]) + 5


def test_a_finished_sequence_s_slot_takes_a_new_prompt(pair, tok):
    _, path = pair
    a, b, c = (tok(t)['input_ids'] for t in (PROMPT, 'hello there', 'a new prompt'))
    with LlamaModel.from_path(path, context_length=128, flash_attn=True, kv_type='F32') as model:
        alone_a, alone_c = _greedy_alone(model, [a, c], steps=4)
        rows_a = [model.batch({0: a, 1: b})[0]]
        rows_a.append(model.batch({0: [int(np.argmax(alone_a[0]))], 1: [7]})[0])
        model.forget(1)                                        # sequence 1 is done: its cells free
        assert model.sequence_length(1) == 0 and model.sequence_length(0) == len(a) + 1
        both = model.batch({0: [int(np.argmax(alone_a[1]))], 1: c})     # a goes on, c starts
        rows_a.append(both[0])
        rows_c = [both[1]]
        for step in range(2):
            out = model.batch({0: [int(np.argmax(alone_a[step + 2]))],
                               1: [int(np.argmax(alone_c[step]))]})
            rows_a.append(out[0])
            rows_c.append(out[1])
    np.testing.assert_allclose(np.stack(rows_a), alone_a, atol=TOL, rtol=0)
    np.testing.assert_allclose(np.stack(rows_c), alone_c[:3], atol=TOL, rtol=0)


def test_batch_refuses_bad_ids_and_overflow_before_computing(pair, tok):
    _, path = pair
    ids = tok(PROMPT)['input_ids']
    with LlamaModel.from_path(path, context_length=32) as model:
        with pytest.raises(ValueError, match='sequence ids are ints >= 0'):
            model.batch({-1: ids})
        with pytest.raises(TypeError):
            model.batch([ids])
        with pytest.raises(ContextOverflowError):
            model.batch({0: ids * 3, 1: ids * 3})
        assert model.sequence_length(0) == 0 and model.sequence_length(1) == 0


def test_smollm2_eight_prompts_batched_greedy_equal_one_by_one():
    # Q4_1 weights and flash attention: GGML computes every row on its own, so batched is bit for
    # bit one by one, whatever the batch holds (8 prompts of different lengths, 12 steps).
    from gadget.textgen import default_model_path
    from gadget.tokenizer import load_tokenizer
    path = default_model_path()
    tokenizer = load_tokenizer(path)
    texts = ['The capital of France is', 'Once upon a time, in a land far away,', 'def fibonacci(n):',
             'The three primary colors are', 'In 1492, Columbus', 'Water boils at', 'My favourite food is',
             'The quick brown fox jumps over the lazy dog. The quick brown fox']
    prompts = [tokenizer.encode(t) for t in texts]
    with LlamaModel.from_path(path, context_length=512, flash_attn=True, blas=False) as model:
        alone = _greedy_alone(model, prompts, steps=12)
        got = {i: [logits] for i, logits in model.batch(dict(enumerate(prompts))).items()}
        for _ in range(12):
            step = {i: [int(np.argmax(rows[-1]))] for i, rows in got.items()}
            for i, logits in model.batch(step).items():
                got[i].append(logits)
    for i in range(len(prompts)):
        np.testing.assert_array_equal(np.stack(got[i]), alone[i])
