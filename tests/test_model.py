"""GgmlCompute and GgmlModel: the README example, numpy/torch, types, GGUF loading, states, memory."""

from __future__ import annotations

import gc
import os
import resource
import textwrap

import numpy as np
import pytest

from gadget import GgmlCompute, GgmlModel, GgufFile, Input, Parameter, State, Tensor
from gadget import ggml as G
from gadget.types import dequantize_blocks, quantize
from gadget.errors import BackendError
from gadget.ggml import ggml_mul_mat
from gadget.types import numpy_dtype

rng = np.random.default_rng(1234)


class LinearModel(GgmlModel):
    weight: Tensor('F32', ('input_dim', 'output_dim'))
    inputs: Input('F32', ('input_dim', 'batch_size'))

    def forward(self):
        ctx = self.ctx_graph
        w, x = self.tensors['weight', 'inputs']
        return ggml_mul_mat(ctx, w, x)


def test_readme_example_runs_verbatim():
    readme = open(os.path.join(os.path.dirname(__file__), '..', 'README.md')).read()
    start = readme.index('class LinearModel(GgmlModel):')
    block = readme[start:readme.index('```', start)]
    weight_np = rng.standard_normal((32, 256)).astype(np.float32)
    inputs_np = rng.standard_normal((16, 256)).astype(np.float32)
    scope = {'weight_np': weight_np, 'inputs_np': inputs_np}
    exec('from gadget import GgmlModel, Input, Tensor\nfrom gadget.ggml import ggml_mul_mat\n'
         + textwrap.dedent(block), scope)
    np.testing.assert_allclose(scope['output_np'], inputs_np @ weight_np.T, atol=1e-4, rtol=0)
    scope['model'].close()


def test_linear_numpy_and_shapes():
    w = rng.standard_normal((32, 256)).astype(np.float32)
    x = rng.standard_normal((16, 256)).astype(np.float32)
    with LinearModel.from_values(dict(weight=w), input_dim=256, output_dim=32, batch_size=16) as model:
        out = model(inputs=x)
        assert out.shape == (16, 32) and out.dtype == np.float32
        np.testing.assert_allclose(out, x @ w.T, atol=1e-4, rtol=0)
        np.testing.assert_array_equal(model.get_input('weight'), w)


def test_linear_torch_in_and_out():
    torch = pytest.importorskip('torch')
    w = torch.randn(32, 256)
    x = torch.randn(16, 256)
    with LinearModel.from_values(dict(weight=w), framework='torch', input_dim=256, output_dim=32,
                                 batch_size=16) as model:
        out = model(inputs=x)
        assert isinstance(out, torch.Tensor) and out.shape == (16, 32)
        torch.testing.assert_close(out, x @ w.T, atol=1e-4, rtol=0)


# Tolerances: after using the stored weights as the reference, the error left is GGML's rounding of
# the activations to the weight's dot type, summed over K=256 terms of size ~1: F16 (2^-11 relative)
# ~0.01, BF16 (2^-8) ~0.06, Q8_0 blocks (max/127 steps) ~0.2; the bounds allow ~2.5x that.
@pytest.mark.parametrize('wtype, tol', [('F16', 0.05), ('BF16', 0.3), ('Q8_0', 0.6), ('Q4_0', 0.6)])
def test_low_precision_weights_convert_on_the_way_in(wtype, tol):
    class Model(GgmlModel):
        weight: Tensor(wtype, ('input_dim', 'output_dim'))
        inputs: Input('F32', ('input_dim', 'batch_size'))

        def forward(self):
            w, x = self.tensors['weight', 'inputs']
            return ggml_mul_mat(self.ctx_graph, w, x)

    w = rng.standard_normal((32, 256)).astype(np.float32)
    x = rng.standard_normal((8, 256)).astype(np.float32)
    with Model.from_values(dict(weight=w), input_dim=256, output_dim=32, batch_size=8) as model:
        stored = model.get_input('weight')   # F16/BF16 as stored; quantized types dequantized
        assert stored.dtype == (np.float32 if wtype.startswith('Q') else numpy_dtype(wtype))
        assert stored.shape == w.shape
        stored = stored.astype(np.float32)
        # The reference uses the stored (rounded) weights; what is left is activation rounding
        # (GGML converts x to the weight's dot type: F16/BF16/Q8_0/Q8_K) over K=256 terms.
        np.testing.assert_allclose(model(inputs=x), x @ stored.T, atol=tol, rtol=0)
        assert np.abs(stored - w).max() < {'F16': 2e-3, 'BF16': 3e-2, 'Q8_0': 3e-2, 'Q4_0': 0.5}[wtype]


def test_prequantized_blocks_are_set_as_they_are():
    class Model(GgmlModel):
        weight: Tensor('Q4_0', (64, 4))
        inputs: Input('F32', (64, 2))

        def forward(self):
            w, x = self.tensors['weight', 'inputs']
            return ggml_mul_mat(self.ctx_graph, w, x)

    w = rng.standard_normal((4, 64)).astype(np.float32)
    blocks = quantize(w, 'Q4_0')
    with Model.from_values(dict(weight=blocks)) as model:
        np.testing.assert_array_equal(model.get_input('weight'), dequantize_blocks(blocks, 'Q4_0'))


def test_bad_inputs_raise_clear_errors():
    w = rng.standard_normal((32, 256)).astype(np.float32)
    with LinearModel.from_values(dict(weight=w), input_dim=256, output_dim=32, batch_size=16) as model:
        with pytest.raises(ValueError, match=r"'inputs'.*\(15, 256\).*\(16, 256\)"):
            model(inputs=np.zeros((15, 256), np.float32))
        with pytest.raises(TypeError, match=r"'inputs'.*float64.*astype"):
            model(inputs=np.zeros((16, 256)))
        with pytest.raises(KeyError, match=r"'bias'.*weight, inputs"):
            model(bias=np.zeros(3, np.float32))
    with pytest.raises(KeyError, match='declared tensors: weight, inputs'):
        LinearModel.from_values(dict(wieght=w), input_dim=256, output_dim=32, batch_size=16)
    with pytest.raises(TypeError, match="dimension 'batch_size'.*batch_size=..."):
        LinearModel.from_values(dict(weight=w), input_dim=256, output_dim=32)
    with pytest.raises(BackendError, match='CMAKE_ARGS="-DGGML_CUDA=ON"'):
        LinearModel.from_values(dict(weight=w), backend='cuda', input_dim=256, output_dim=32, batch_size=1)
    with pytest.raises(BackendError, match='available here: cpu'):
        LinearModel.from_values(dict(weight=w), backend='metal', input_dim=256, output_dim=32, batch_size=1)


class Scaled(GgmlModel):
    n: Parameter()
    scale: Parameter(2.0)
    width: Parameter(lambda p: p['n'] * 2)
    mode: State('relu')
    inputs: Input('F32', ('width',))

    def forward(self):
        self.builds = getattr(self, 'builds', 0) + 1
        x = G.ggml_scale(self.ctx_graph, self.tensors['inputs'], self.params['scale'], name='scaled')
        if self.state['mode'] == 'relu':
            return G.ggml_relu(self.ctx_graph, x)
        return G.ggml_neg(self.ctx_graph, x)


def test_parameters_state_rebuild_and_named_nodes():
    with Scaled.from_values(n=3) as model:
        assert model.params == {'n': 3, 'scale': 2.0, 'width': 6}
        x = np.array([-1, 2, -3, 4, -5, 6], np.float32)
        np.testing.assert_array_equal(model(inputs=x), np.maximum(2 * x, 0))
        builds = model.builds
        model(inputs=x)
        model.mode = 'relu'                       # unchanged: no rebuild
        model(inputs=x)
        assert model.builds == builds
        model.mode = 'neg'
        assert model.builds == builds            # rebuilt lazily, before the next call
        np.testing.assert_array_equal(model(inputs=x), -2 * x)
        assert model.builds == builds + 1
        model.state['mode'] = 'relu'
        np.testing.assert_array_equal(model(inputs=x), np.maximum(2 * x, 0))
        np.testing.assert_array_equal(model.get_named_node('scaled'), 2 * x)
        with pytest.raises(KeyError, match='named nodes: scaled'):
            model.get_named_node('missing')
        with pytest.raises(KeyError, match='states: mode'):
            model.state['other'] = 1


def test_get_rows_model_from_gguf_built_in_memory(tmp_path):
    class Embed(GgmlModel):
        n_vocab: Parameter('embed.vocab_size')
        token_embd: Tensor('F32', ('embed.dim', 'n_vocab'))
        tokens: Input('I32', ('n_tokens',))

        def forward(self):
            embd, tokens = self.tensors['token_embd', 'tokens']
            return G.ggml_get_rows(self.ctx_graph, embd, tokens, name='rows')

    table = rng.standard_normal((50, 8)).astype(np.float32)
    gguf = GgufFile()
    gguf.set_field('embed.vocab_size', 50, type='UINT32')
    gguf.set_field('embed.dim', 8, type='UINT32')
    gguf.set_tensor('token_embd', table)
    path = tmp_path / 'embed.gguf'
    gguf.save(path)
    tokens = np.array([3, 0, 49, 3], np.int32)
    with Embed.from_path(path, n_tokens=4) as model:
        assert model.params['n_vocab'] == 50
        np.testing.assert_array_equal(model(tokens=tokens), table[tokens])
        # On the CPU the weights point into the file mapping: no copy was made.
        mapped = model.gguf.mapping
        address = int(G.ffi.cast('uintptr_t', model.tensors['token_embd'].data))
        base = int(G.ffi.cast('uintptr_t', G.ffi.from_buffer(mapped)))
        assert base <= address < base + len(mapped)


def test_create_close_cycles_do_not_leak():
    w = rng.standard_normal((64, 256)).astype(np.float32)
    x = rng.standard_normal((8, 256)).astype(np.float32)

    def cycle():
        model = LinearModel.from_values(dict(weight=w), input_dim=256, output_dim=64, batch_size=8)
        model(inputs=x)
        model.close()

    for _ in range(20):
        cycle()
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(200):
        cycle()
    gc.collect()
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 20 * 1024, f'RSS grew by {grown_kb} kB over 200 create/close cycles'


def test_rebuilding_the_same_graph_does_not_grow_graph_memory():
    with Scaled.from_values(n=256) as model:
        model(inputs=np.ones(512, np.float32))
        size = model.graph_memory()
        for _ in range(50):
            model.rebuild_graph()
            model.compute()
        assert model.graph_memory() == size


def test_compute_with_a_plain_model_function_and_repr():
    def model(ctx, params, tensors):
        a, b = tensors['a', 'b']
        return G.ggml_add(ctx, a, b, name='sum'), G.ggml_mul(ctx, a, b, name='prod')

    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((3, 4)).astype(np.float32)
    with GgmlCompute({}, {'a': ('F32', (4, 3)), 'b': ('F32', (4, 3))}, model, n_threads=1) as comp:
        total, prod = comp(a=a, b=b)
        np.testing.assert_allclose(total, a + b)
        np.testing.assert_allclose(prod, a * b)
        np.testing.assert_allclose(comp.get_node(-1), a * b)
        text = repr(comp)
        assert 'a: f32 [4, 3]' in text and 'sum = ADD f32 [4, 3]' in text
        comp.set_input('a', a[:1] * 0, offset=2)
        np.testing.assert_allclose(comp.get_input('a')[2], 0)
        with pytest.raises(ValueError, match='out of range'):
            comp.set_input('a', a, offset=1)
