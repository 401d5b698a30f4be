"""The op layer itself: names, string arguments, enums, constants, errors and the log hook."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from gadget import ggml as G
from gadget.errors import GgmlOpError
from gadget.ggml import ffi, lib


@pytest.fixture
def ctx():
    params = ffi.new('struct ggml_init_params *', dict(mem_size=1 << 20, mem_buffer=ffi.NULL, no_alloc=True))
    context = G.ggml_init(params[0])
    yield context
    lib.ggml_free(context)


def test_name_keyword_names_the_result_node(ctx):
    a = G.ggml_new_tensor_2d(ctx, G.GGML_TYPE_F32, 4, 3, name='a')
    b = G.ggml_add(ctx, a, a, name='attn0_scores')
    assert ffi.string(b.name) == b'attn0_scores'
    assert ffi.string(a.name) == b'a'
    graph = G.ggml_new_graph(ctx)
    G.ggml_build_forward_expand(graph, b)
    assert G.ggml_graph_get_tensor(graph, 'attn0_scores') == b
    assert G.ggml_graph_get_tensor(graph, 'missing') == ffi.NULL   # a legitimate NULL is no error


def test_raw_lib_and_op_layer_mix(ctx):
    a = lib.ggml_new_tensor_1d(ctx, lib.GGML_TYPE_F32, 8)
    b = G.ggml_scale(ctx, a, 2.0)
    c = lib.ggml_add(ctx, b, a)
    assert ffi.typeof(c) is ffi.typeof(b) is ffi.typeof('struct ggml_tensor *')
    assert c.src[0] == b and b.src[0] == a


def test_string_arguments_accept_str(ctx):
    a = G.ggml_new_tensor_1d(ctx, G.GGML_TYPE_F32, 8)
    G.ggml_set_name(a, 'x' * 100)                       # truncated by GGML, not an error
    assert ffi.string(a.name) == b'x' * (G.GGML_MAX_NAME - 1)
    G.ggml_format_name(a, b'%s-%d', ffi.new('char[]', b'blk'), ffi.cast('int', 3))
    assert ffi.string(a.name) == b'blk-3'


def test_enums_and_constants_match_the_c_values():
    assert G.GgmlType.F32 == lib.GGML_TYPE_F32 == G.GGML_TYPE_F32 == 0
    assert G.GGMLQuantizationType.Q4_K == lib.GGML_TYPE_Q4_K
    assert G.GGUFValueType.STRING == lib.GGUF_TYPE_STRING
    assert G.GgmlOp.MUL_MAT == lib.GGML_OP_MUL_MAT
    assert G.GGML_MAX_DIMS == 4 and G.GGML_MAX_SRC == lib.GGML_MAX_SRC
    assert G.GGML_ROPE_TYPE_NEOX == lib.GGML_ROPE_TYPE_NEOX


def test_error_names_op_assertion_and_shapes_and_context_survives(ctx):
    a = G.ggml_new_tensor_2d(ctx, G.GGML_TYPE_F32, 4, 3)
    b = G.ggml_new_tensor_2d(ctx, G.GGML_TYPE_F32, 5, 2)
    with pytest.raises(GgmlOpError) as info:
        G.ggml_mul_mat(ctx, a, b)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.op == 'ggml_mul_mat' and 'ggml_can_mul_mat' in err.reason and err.where.startswith('ggml.c:')
    assert 'a: f32 [4, 3]' in str(err) and 'b: f32 [5, 2]' in str(err)
    assert G.tensor_shape(G.ggml_mul_mat(ctx, a, a)) == (3, 3)


def test_full_context_is_an_error_not_an_abort():
    params = ffi.new('struct ggml_init_params *', dict(mem_size=4096, mem_buffer=ffi.NULL, no_alloc=True))
    small = G.ggml_init(params[0])
    try:
        with pytest.raises(GgmlOpError, match='memory pool is full'):
            for _ in range(100):
                G.ggml_new_tensor_1d(small, G.GGML_TYPE_F32, 16)
    finally:
        lib.ggml_free(small)


def test_guard_is_per_thread(ctx):
    a = G.ggml_new_tensor_2d(ctx, G.GGML_TYPE_F32, 4, 3)
    b = G.ggml_new_tensor_2d(ctx, G.GGML_TYPE_F32, 5, 2)
    errors: list[BaseException] = []

    def bad():
        params = ffi.new('struct ggml_init_params *',
                         dict(mem_size=1 << 16, mem_buffer=ffi.NULL, no_alloc=True))
        own = G.ggml_init(params[0])
        x = G.ggml_new_tensor_2d(own, G.GGML_TYPE_F32, 4, 3)
        y = G.ggml_new_tensor_2d(own, G.GGML_TYPE_F32, 5, 2)
        try:
            G.ggml_mul_mat(own, x, y)
        except GgmlOpError as exc:
            errors.append(exc)
        finally:
            lib.ggml_free(own)

    threads = [threading.Thread(target=bad) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 4
    assert lib.gadget_error_pending() == 0          # a failure in another thread leaves this one clean
    with pytest.raises(GgmlOpError):
        G.ggml_mul_mat(ctx, a, b)


def test_ggml_log_goes_to_python_logging(caplog):
    params = ffi.new('struct ggml_init_params *', dict(mem_size=2048, mem_buffer=ffi.NULL, no_alloc=True))
    small = G.ggml_init(params[0])
    try:
        with caplog.at_level(logging.DEBUG, logger='gadget.ggml'):
            with pytest.raises(GgmlOpError):
                for _ in range(100):
                    G.ggml_new_tensor_1d(small, G.GGML_TYPE_F32, 16)
    finally:
        lib.ggml_free(small)
    records = [r for r in caplog.records if r.name == 'gadget.ggml']
    assert any('not enough space' in r.getMessage() and r.levelno == logging.WARNING for r in records)


def test_op_docstrings_are_the_c_prototypes():
    assert G.ggml_mul_mat.__doc__.startswith('struct ggml_tensor *ggml_mul_mat(struct ggml_context *ctx')
    assert 'name' in G.ggml_mul_mat.__doc__


def test_tensor_shape_and_describe(ctx):
    t = G.ggml_new_tensor_3d(ctx, G.GGML_TYPE_F16, 8, 1, 2)
    assert G.tensor_shape(t) == (8, 1, 2)
    assert G.describe_tensor(t) == 'f16 [8, 1, 2]'
    assert G.describe_tensor(ffi.NULL) == 'NULL'
    assert np.prod(G.tensor_shape(t)) == lib.ggml_nelements(t)
