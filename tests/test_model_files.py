"""Broken model files are refused by name, never loaded with zeros: missing or misshapen weights,
unknown or missing architectures, tensors nothing uses; and the architecture registry."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from gadget import GadgetError, ModelFileError
from gadget.gguf import GgufFile
from gadget.models import ARCHITECTURES, LlamaModel, load_model, model_class_for

N_EMBD, N_FF, N_HEAD, N_HEAD_KV, N_LAYER, N_VOCAB = 32, 64, 4, 2, 2, 48
HEAD_DIM = N_EMBD // N_HEAD


def llama_tensors(rng) -> dict[str, np.ndarray]:
    """A tiny Llama's weights by GGUF name (numpy order)."""
    kv = N_HEAD_KV * HEAD_DIM
    t = {'token_embd.weight': rng.standard_normal((N_VOCAB, N_EMBD)),
         'output_norm.weight': np.ones(N_EMBD)}
    for i in range(N_LAYER):
        t.update({f'blk.{i}.attn_norm.weight': np.ones(N_EMBD), f'blk.{i}.ffn_norm.weight': np.ones(N_EMBD),
                  f'blk.{i}.attn_q.weight': rng.standard_normal((N_EMBD, N_EMBD)),
                  f'blk.{i}.attn_k.weight': rng.standard_normal((kv, N_EMBD)),
                  f'blk.{i}.attn_v.weight': rng.standard_normal((kv, N_EMBD)),
                  f'blk.{i}.attn_output.weight': rng.standard_normal((N_EMBD, N_EMBD)),
                  f'blk.{i}.ffn_gate.weight': rng.standard_normal((N_FF, N_EMBD)),
                  f'blk.{i}.ffn_up.weight': rng.standard_normal((N_FF, N_EMBD)),
                  f'blk.{i}.ffn_down.weight': rng.standard_normal((N_EMBD, N_FF))})
    return {k: (0.1 * v).astype(np.float32) for k, v in t.items()}


def write_llama(path, arch='llama', drop=(), replace=None, extra=None, fields=None):
    rng = np.random.default_rng(0)
    out = GgufFile()
    if arch is not None:
        out.set_field('general.architecture', arch)
    meta = {'block_count': N_LAYER, 'embedding_length': N_EMBD, 'feed_forward_length': N_FF,
            'attention.head_count': N_HEAD, 'attention.head_count_kv': N_HEAD_KV, 'context_length': 64,
            'attention.layer_norm_rms_epsilon': 1e-5}
    for key, value in meta.items():
        out.set_field(f'{arch or "llama"}.{key}', value)
    for key, value in (fields or {}).items():
        out.set_field(key, value)
    tensors = llama_tensors(rng)
    tensors.update(replace or {})
    tensors.update(extra or {})
    for name, array in tensors.items():
        if name not in drop:
            out.set_tensor(name, array)
    out.save(path)
    return path


def test_a_complete_file_loads_and_runs(tmp_path):
    path = write_llama(tmp_path / 'ok.gguf')
    with LlamaModel.from_path(path, strict=True) as model:
        logits = model([1, 2, 3])
        assert logits.shape == (N_VOCAB,) and np.isfinite(logits).all()


@pytest.mark.parametrize('drop', [['blk.1.ffn_up.weight'], ['output_norm.weight', 'blk.0.attn_k.weight'],
                                  ['token_embd.weight']])
def test_a_missing_weight_is_named(tmp_path, drop):
    path = write_llama(tmp_path / 'missing.gguf', drop=drop)
    with pytest.raises(ModelFileError) as info:
        LlamaModel.from_path(path)
    message = str(info.value)
    assert 'needs weights the file lacks' in message and str(path) in message
    for name in drop:
        assert name in message


def test_a_missing_weight_in_values_is_named():
    tensors = llama_tensors(np.random.default_rng(0))
    del tensors['blk.0.ffn_down.weight']
    with pytest.raises(ValueError, match=r'weights missing from values: blk\.0\.ffn_down\.weight'):
        LlamaModel.from_values(tensors, n_layer=N_LAYER, n_embd=N_EMBD, n_ff=N_FF, n_head=N_HEAD,
                               n_head_kv=N_HEAD_KV, n_ctx_train=64)


def test_a_weight_of_the_wrong_shape_is_named(tmp_path):
    rng = np.random.default_rng(1)
    path = write_llama(tmp_path / 'shape.gguf',
                       replace={'blk.1.attn_q.weight': rng.standard_normal((N_EMBD, 24)).astype(np.float32)})
    expected = r'wrong shape.*blk\.1\.attn_q\.weight is \[24, 32\], expected \[32, 32\]'
    with pytest.raises(ModelFileError, match=expected):
        LlamaModel.from_path(path)


def test_a_block_count_that_does_not_match_the_tensors(tmp_path):
    path = write_llama(tmp_path / 'blocks.gguf', fields={'llama.block_count': N_LAYER + 1})
    with pytest.raises(ModelFileError, match=r'blk\.2\.attn_norm\.weight'):
        LlamaModel.from_path(path)


def test_unknown_and_missing_architectures_list_the_supported_ones(tmp_path):
    qwen = write_llama(tmp_path / 'qwen.gguf', arch='qwen3')
    supported = "architecture 'qwen3' is not supported; supported: bert, llama"
    with pytest.raises(ModelFileError, match=supported):
        load_model(qwen)
    with GgufFile.from_path(qwen) as gguf, \
            pytest.raises(ModelFileError, match=r"is a 'qwen3' model.*runs: llama"):
        LlamaModel.from_gguf(gguf)
    bare = write_llama(tmp_path / 'bare.gguf', arch=None)
    with GgufFile.from_path(bare) as gguf, pytest.raises(ModelFileError, match='no general.architecture'):
        model_class_for(gguf)
    from gadget.textgen import TextGen
    with pytest.raises(ModelFileError, match="'qwen3' is not supported"):
        TextGen(qwen)


def test_the_registry_maps_architectures_to_classes(tmp_path):
    assert ARCHITECTURES['llama'] is LlamaModel and LlamaModel.architectures == ('llama',)
    path = write_llama(tmp_path / 'ok.gguf')
    with load_model(path) as model:
        assert type(model) is LlamaModel
        gguf = model.gguf
    assert gguf.mapping is None            # the model owned the file it opened, and closed it


def test_unused_tensors_are_logged_or_refused_when_strict(tmp_path, caplog):
    extra = {'blk.0.attn_q.bias': np.zeros(N_EMBD, np.float32), 'mystery.weight': np.ones(4, np.float32)}
    path = write_llama(tmp_path / 'extra.gguf', extra=extra)
    with caplog.at_level(logging.DEBUG, logger='gadget.model'):
        with LlamaModel.from_path(path):
            pass
    assert any('blk.0.attn_q.bias' in r.getMessage() and 'mystery.weight' in r.getMessage()
               for r in caplog.records)
    with pytest.raises(ModelFileError, match=r'strict=True.*blk\.0\.attn_q\.bias, mystery\.weight'):
        LlamaModel.from_path(path, strict=True)


def test_inputs_and_buffers_are_not_read_from_the_file(tmp_path):
    # A tensor in the file named like the KV cache must not be taken for it.
    poison = {'cache_k.0': np.full((64, N_HEAD_KV * HEAD_DIM), np.nan, np.float32)}
    path = write_llama(tmp_path / 'poison.gguf', extra=poison)
    with LlamaModel.from_path(path, kv_type='F32', context_length=64) as model:
        assert np.isfinite(model([1, 2])).all()


def test_model_file_errors_are_gadget_and_value_errors():
    assert issubclass(ModelFileError, GadgetError) and issubclass(ModelFileError, ValueError)


def test_unfused_attention_toggles_on_off_on(tmp_path):
    path = write_llama(tmp_path / 'ok.gguf')
    with LlamaModel.from_path(path, kv_type='F32') as model:
        reference = model([1, 2, 3])
        for layers in [(-1,), (), (-1,), (0, 1), ()]:
            model.reset()
            model.unfused_attention = layers
            np.testing.assert_allclose(model([1, 2, 3]), reference, atol=1e-5, rtol=1e-5)
            if layers:
                assert model.attention_scores(layers[0]).shape[0] == N_HEAD
            else:
                with pytest.raises(ValueError, match='fused'):
                    model.attention_scores(-1)


@pytest.mark.parametrize('key, value, words', [
    ('llama.attention.layer_norm_rms_epsilon', -1.0, 'a finite number > 0'),
    ('llama.attention.layer_norm_rms_epsilon', float('nan'), 'a finite number > 0'),
    ('llama.attention.head_count', 0, 'a positive integer'),
    ('llama.attention.head_count_kv', 3, 'dividing n_head (4)'),
    ('llama.rope.dimension_count', 7, 'even positive integer at most head_dim (8)'),
    ('llama.context_length', 0, 'a positive integer'),
    ('llama.rope.freq_base', 0.0, 'a finite number > 0'),
    ('llama.rope.scaling.type', 'yarn', "one of 'none', 'linear'"),
    ('llama.block_count', -2, 'a positive integer'),
])
def test_impossible_metadata_is_refused_at_load_naming_the_key(tmp_path, key, value, words):
    path = write_llama(tmp_path / 'bad.gguf', fields={key: value})
    with pytest.raises(ModelFileError) as info:
        LlamaModel.from_path(path)
    assert key in str(info.value) and words in str(info.value), str(info.value)


def test_embedding_width_not_a_multiple_of_the_heads(tmp_path):
    path = write_llama(tmp_path / 'heads.gguf', fields={'llama.attention.head_count': 5,
                                                        'llama.attention.head_count_kv': 5})
    expected = r'embedding_length \(32\) is not a multiple of head_count \(5\)'
    with pytest.raises(ModelFileError, match=expected):
        LlamaModel.from_path(path)


def test_vocabulary_size_must_match_the_embedding(tmp_path):
    path = write_llama(tmp_path / 'vocab.gguf', fields={'llama.vocab_size': N_VOCAB + 1})
    with pytest.raises(ModelFileError, match=r'llama\.vocab_size = 49 but token_embd\.weight has 48 rows'):
        LlamaModel.from_path(path)


@pytest.mark.parametrize('kwargs, words', [
    (dict(context_length=0), 'context_length = 0 (given) must be a positive integer'),
    (dict(batch_size=0), 'batch_size = 0 (given) must be a positive integer'),
    (dict(batch_size=2.5), 'batch_size = 2.5 (given) must be a positive integer'),
    (dict(kv_type='Q7'), "kv_type = 'Q7' (given) must be one of the types 'F16', 'F32', 'BF16'"),
    (dict(norm_eps=float('inf')), 'norm_eps = inf (given) must be a finite number > 0'),
])
def test_impossible_arguments_are_refused_naming_the_parameter(tmp_path, kwargs, words):
    path = write_llama(tmp_path / 'ok.gguf')
    with pytest.raises(ValueError) as info:
        LlamaModel.from_path(path, **kwargs)
    assert words in str(info.value), str(info.value)
