"""Graphs run through GGML's scheduler (``ggml_backend_sched``) give what the direct path gives, and
bad scheduler settings are refused before any C call."""

from __future__ import annotations

import numpy as np
import pytest

from gadget import ggml as G
from gadget.backends import backends
from gadget.compute import GgmlCompute
from gadget.errors import BackendError
from gadget.models import load_model
from gadget.textgen import default_model_path

SPECS = {'a': ('F32', (64, 48)), 'b': ('F32', (64, 40))}


def model(ctx, params, tensors):
    a, b = tensors['a', 'b']
    product = G.ggml_mul_mat(ctx, a, b, name='product')                       # (48, 40)
    return G.ggml_soft_max(ctx, G.ggml_scale(ctx, product, 0.1), name='out')


def test_the_scheduler_gives_the_direct_path_s_numbers_and_reuses_its_graph():
    rng = np.random.default_rng(0)
    # blas=False: the scheduler over the CPU backend alone (a BLAS build would offload the product)
    with GgmlCompute({}, SPECS, model, blas=False) as direct, \
            GgmlCompute({}, SPECS, model, scheduler=True, blas=False) as sched:
        assert sched.scheduled and not direct.scheduled
        for _ in range(3):                                    # the same graph, computed again
            a = rng.standard_normal((48, 64)).astype(np.float32)
            b = rng.standard_normal((40, 64)).astype(np.float32)
            np.testing.assert_array_equal(sched(a=a, b=b), direct(a=a, b=b))
        assert {k: v for k, v in sched.node_backends().items() if k in ('product', 'out')} == \
            {'product': 'CPU', 'out': 'CPU'}
        sched.create_graph()                                  # rebuilt: planned and allocated anew
        np.testing.assert_array_equal(sched.compute(), direct.compute())
        assert sched.graph_memory() > 0
        np.testing.assert_array_equal(sched.get_named_node('product'), direct.get_named_node('product'))


def test_bad_scheduler_settings_are_refused():
    with pytest.raises(ValueError, match='each once'):
        GgmlCompute({}, SPECS, model, offload=['cpu'])
    with pytest.raises(ValueError, match='needs the scheduler'):
        GgmlCompute({}, SPECS, model, offload=['cpu'], scheduler=False)
    with pytest.raises(BackendError, match='unknown backend'):
        GgmlCompute({}, SPECS, model, offload=['tpu'])
    if 'blas' not in backends():
        with pytest.raises(BackendError, match='no BLAS backend'):
            GgmlCompute({}, SPECS, model, offload=['blas'])
    with pytest.raises(BackendError, match='one BLAS backend'):
        GgmlCompute({}, SPECS, model, offload=['blas:1'])
    if not any(name.startswith('cuda') for name in backends()):
        with pytest.raises(BackendError, match='no CUDA backend'):
            GgmlCompute({}, SPECS, model, offload=['cuda'])


def test_a_language_model_decodes_the_same_through_the_scheduler():
    path = default_model_path()
    with load_model(path, context_length=256, blas=False) as direct, \
            load_model(path, context_length=256, scheduler=True, blas=False) as sched:
        prompt = list(range(200, 240))
        np.testing.assert_array_equal(sched(prompt, all_logits=True), direct(prompt, all_logits=True))
        for token in (5, 77, 1000, 31):                       # decode: one reused graph
            np.testing.assert_array_equal(sched([token]), direct([token]))
