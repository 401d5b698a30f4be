"""GGML's BLAS backend (in the default build; GADGET_BLAS=0 builds without it): matrix products of
>= 32 rows go to OpenBLAS through the scheduler, everything else stays on the CPU, and the numbers
agree with the CPU path and numpy. In a build without it, asking for it is a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from gadget import Backend, ggml as G
from gadget.backends import backends
from gadget.compute import GgmlCompute
from gadget.errors import BackendError
from gadget.models import load_model
from gadget.textgen import TextGen, default_model_path

HAS_BLAS = 'blas' in backends()
needs_blas = pytest.mark.skipif(not HAS_BLAS,
                                reason='this build has no BLAS backend (built with GADGET_BLAS=0)')


def product(ctx, params, tensors):
    w, x = tensors['w', 'x']
    return G.ggml_mul_mat(ctx, w, x, name='product')


def specs(wtype, n_in, n_out, n_rows):
    return {'w': (wtype, (n_in, n_out)), 'x': ('F32', (n_in, n_rows))}


@pytest.mark.skipif(HAS_BLAS, reason='this build has a BLAS backend')
def test_without_a_blas_build_asking_for_it_is_an_error():
    with pytest.raises(BackendError, match='no BLAS backend'):
        GgmlCompute({}, specs('F32', 64, 64, 64), product, blas=True)


def test_blas_takes_only_true_false_or_none():
    with pytest.raises(ValueError, match='blas must be True, False or None'):
        GgmlCompute({}, specs('F32', 64, 64, 64), product, blas='yes')


@needs_blas
@pytest.mark.parametrize('wtype, rtol', [('F32', 1e-5), ('F16', 2e-3), ('Q8_0', 2e-2), ('Q4_1', 1e-1)])
def test_large_products_go_to_blas_and_agree_with_the_cpu(wtype, rtol):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((96, 128)).astype(np.float32)
    x = rng.standard_normal((64, 128)).astype(np.float32)
    with GgmlCompute({}, specs(wtype, 128, 96, 64), product, blas=False) as cpu, \
            GgmlCompute({}, specs(wtype, 128, 96, 64), product, blas=True) as blas:
        for c in (cpu, blas):
            c.set_input('w', w)
        got, ref = blas(x=x), cpu(x=x)
        assert blas.node_backends()['product'] == 'BLAS' and cpu.node_backends()['product'] == 'CPU'
    scale = np.abs(x @ w.T).max()
    np.testing.assert_allclose(got, ref, rtol=0, atol=rtol * scale)
    if wtype == 'F32':
        np.testing.assert_allclose(got, x @ w.T, rtol=1e-5, atol=1e-4)


@needs_blas
def test_small_batches_stay_on_the_cpu():
    with GgmlCompute({}, specs('F32', 128, 96, 8), product, blas=True) as c:   # 8 rows < 32
        c.compute()
        assert c.node_backends()['product'] == 'CPU'


@needs_blas
def test_the_blas_backend_takes_a_thread_count():
    with Backend('blas', n_threads=1) as b:
        assert b.n_threads == 1 and 'n_threads=1' in repr(b)
        b.set_n_threads(2)
        with pytest.raises(ValueError):
            b.set_n_threads(0)


@needs_blas
def test_a_language_model_with_blas_agrees_and_decodes_on_the_cpu():
    path = default_model_path()
    with load_model(path, context_length=512, blas=False) as cpu, \
            load_model(path, context_length=512, blas=True) as blas:
        prompt = list(range(300, 400))
        a, b = cpu(prompt, all_logits=True), blas(prompt, all_logits=True)
        assert np.mean(np.argmax(a, -1) == np.argmax(b, -1)) > 0.8     # (random ids: many near-ties)
        np.testing.assert_allclose(b, a, rtol=0, atol=0.05 * np.abs(a).max())
        placed = blas.node_backends()
        assert {placed[n] for n in ('attn_out0', 'ffn0_up', 'ffn29_out', 'result_output')} == {'BLAS'}
        blas([5])
        placed = blas.node_backends()                           # one token: no product of >= 32 rows
        assert {placed[n] for n in ('attn_out0', 'ffn0_up', 'ffn29_out', 'result_output')} == {'CPU'}
    with TextGen(path, blas=True, context_length=256) as gen:
        assert 'Paris' in gen.generate('The capital of France is', max_gen=8, temperature=0)


def test_the_default_is_blas_where_the_build_has_it():
    with GgmlCompute({}, specs('F32', 128, 96, 64), product) as c:
        c.compute()
        assert c.scheduled == HAS_BLAS and c.graph_scheduled == HAS_BLAS
        assert c.node_backends()['product'] == ('BLAS' if HAS_BLAS else 'CPU')
    with GgmlCompute({}, specs('F32', 128, 96, 64), product, blas=False) as c:
        assert not c.scheduled and not c.graph_scheduled


@needs_blas
def test_a_graph_blas_takes_nothing_of_runs_directly():
    # a decode step (one row): no node for BLAS, so no scheduler, unless scheduler=True
    with load_model(default_model_path(), context_length=256) as model:
        model(list(range(300, 364)))
        assert model.graph_scheduled
        logits = model([5])
        assert not model.graph_scheduled and set(model.node_backends().values()) == {'CPU'}
        model.rewind(64)
        with load_model(default_model_path(), context_length=256, scheduler=True) as always:
            always(list(range(300, 364)))
            np.testing.assert_allclose(always([5]), logits, rtol=0, atol=1e-4)
            assert always.graph_scheduled
