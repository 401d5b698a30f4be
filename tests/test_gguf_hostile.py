"""Hostile GGUF files, built byte by byte: every malformation must raise GgufError naming what is wrong
(and where), never another exception, a crash, a huge allocation or a read outside the file. Then a
mutation fuzzer over a valid file. (GGML's own C reader is never given these files.)"""

from __future__ import annotations

import itertools
import os
import re
import resource
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gadget.errors import GgufError
from gadget.ggml import GgmlType
from gadget.gguf import GgufFile

import gguf_util as U
from gguf_util import (ARRAY, BOOL, F16, F32, FLOAT32, FLOAT64, INT32, INT64, Q4_0, Q4_K, STRING, UINT8,
                       UINT32, UINT64, array, build, gstr, kv, scalar, tensor_info, u32, u64)

# --------------------------------------------------------------------------------------------
# A small valid file, and what hostile variants of it must produce
# --------------------------------------------------------------------------------------------

ARCH = kv('general.architecture', STRING, gstr('llama'))
ARR = kv('a.arr', ARRAY, array(UINT32, [u32(1), u32(2), u32(3)]))
NESTED = kv('a.nested', ARRAY, array(ARRAY, [array(STRING, [gstr('x'), gstr('yz')]), array(UINT8, b'\1\2')]))
W = tensor_info('w', (4,), F32, 0)
DATA = np.arange(4, dtype=np.float32).tobytes()
SMALL = build([ARCH, ARR, NESTED], [W], DATA)


def _write(tmp_path, blob: bytes, name: str = 'h.gguf'):
    path = tmp_path / name
    path.write_bytes(blob)
    return path


def _offset(message: str) -> int | None:
    m = re.search(r'at byte offset (\d+)', message)
    return int(m.group(1)) if m else None


def _reject(tmp_path, blob: bytes, keyword: str, offset: int | None = None) -> str:
    path = _write(tmp_path, blob)
    with pytest.raises(GgufError) as info:
        GgufFile.from_path(path).close()
    message = str(info.value)
    assert re.search(keyword, message, re.I), message
    assert str(path) in message
    if offset is not None:
        assert _offset(message) == offset, message
    return message


def test_small_file_is_valid(tmp_path):
    path = _write(tmp_path, SMALL)
    with GgufFile.from_path(path) as gf:
        assert gf.get_field('general.architecture') == 'llama'
        assert gf.get_field('a.arr').tolist() == [1, 2, 3]
        nested = gf.get_field('a.nested')
        assert nested[0] == ['x', 'yz'] and nested[1].tolist() == [1, 2]
        np.testing.assert_array_equal(gf.get_tensor('w'), np.arange(4, dtype=np.float32))
    # GGML reads it too, without the nested array (which its reader does not support)
    c = U.c_read(_write(tmp_path, build([ARCH, ARR], [W], DATA), 'flat.gguf'))
    assert c['tensors'] == [('w', F32, (4, 1, 1, 1), 0, 16)]


def test_every_prefix_is_rejected(tmp_path):
    keywords = r'truncated|remain|cannot fit|past the end|empty file'
    for n in range(len(SMALL)):
        message = _reject(tmp_path, SMALL[:n], keywords)
        if n:
            assert _offset(message) is not None and _offset(message) <= n, message


# Offsets of the pieces of a file made of header + one entry.
KEY_AT = 24


def _one_kv(key: str, vtype: int, payload: bytes, infos=(), data=b'') -> bytes:
    return build([kv(key, vtype, payload)], list(infos), data)


def _value_at(key: str) -> int:
    return KEY_AT + 8 + len(key.encode()) + 4


CASES = {
    # header
    'bad magic': (b'GGML' + SMALL[4:], 'magic', 0),
    'lowercase magic': (b'gguf' + SMALL[4:], 'magic', 0),
    'version 0': (build([ARCH], [], version=0), 'version 0', 4),
    'version 1': (build([ARCH], [], version=1), 'version 1', 4),
    'version 4': (build([ARCH], [], version=4), 'version 4', 4),
    'version 2**32-1': (build([ARCH], [], version=2**32 - 1), 'version', 4),
    'big-endian 3': (b'GGUF' + struct.pack('>I', 3) + SMALL[8:], 'big-endian', 4),
    'big-endian 2': (b'GGUF' + struct.pack('>I', 2) + SMALL[8:], 'big-endian', 4),
    'n_tensors 2**63': (build([ARCH], [W], DATA, n_tensors=2**63), 'tensor count', 8),
    'n_tensors 2**64-1': (build([ARCH], [W], DATA, n_tensors=2**64 - 1), 'tensor count', 8),
    'n_kv 2**63': (build([ARCH], [W], DATA, n_kv=2**63), 'metadata count', 16),
    'n_kv 2**64-1': (build([ARCH], [W], DATA, n_kv=2**64 - 1), 'metadata count', 16),
    'n_kv one too many': (build([ARCH], [], n_kv=2), 'truncated|remain|cannot fit', None),
    # strings
    'key length 2**63': (build([u64(2**63) + b'k' + u32(UINT8) + b'\0'], []), 'claims', KEY_AT),
    'key length 2**64-1': (build([u64(2**64 - 1) + b'k' + u32(UINT8) + b'\0'], []), 'claims', KEY_AT),
    'string value length 2**63': (_one_kv('k', STRING, u64(2**63) + b'abc'), 'string of', _value_at('k')),
    'string value length 2**64-1': (_one_kv('k', STRING, u64(2**64 - 1)), 'string of', _value_at('k')),
    'tensor name length 2**63': (build([ARCH], [u64(2**63) + W[9:]], DATA), 'claims', 24 + len(ARCH)),
    'tensor name length 2**64-1': (build([ARCH], [u64(2**64 - 1) + W[9:]], DATA), 'claims', 24 + len(ARCH)),
    'key not UTF-8': (build([kv(b'k\xff\xfe', UINT8, b'\0')], []), 'UTF-8', KEY_AT),
    'tensor name not UTF-8': (build([ARCH], [tensor_info(b'\xc3(', (4,), F32, 0)], DATA), 'UTF-8',
                              24 + len(ARCH)),
    # arrays
    'array of 2**62 uint8': (_one_kv('k', ARRAY, u32(UINT8) + u64(2**62)), 'elements', _value_at('k')),
    'array of 2**64-1 int64': (_one_kv('k', ARRAY, u32(INT64) + u64(2**64 - 1)), 'elements', _value_at('k')),
    'array of 2**40 float64': (_one_kv('k', ARRAY, u32(FLOAT64) + u64(2**40) + bytes(64)), 'elements',
                               _value_at('k')),
    'array of 2**60 strings': (_one_kv('k', ARRAY, u32(STRING) + u64(2**60)), 'strings cannot fit',
                               _value_at('k')),
    'array of 2**64-1 arrays': (_one_kv('k', ARRAY, u32(ARRAY) + u64(2**64 - 1)), 'nested arrays cannot fit',
                                _value_at('k')),
    'string in array too long': (_one_kv('k', ARRAY, u32(STRING) + u64(2) + gstr('ok') + u64(2**63)),
                                 'string of .* bytes runs past the end', _value_at('k') + 12 + 10),
    'strings array truncated': (_one_kv('k', ARRAY, u32(STRING) + u64(3) + gstr('okay1') + gstr('okay2')),
                                'truncated', None),
    'unknown value type 13': (_one_kv('k', 13, b'\0' * 8), 'unknown value type 13', _value_at('k') - 4),
    'unknown value type 2**32-1': (_one_kv('k', 2**32 - 1, b'\0' * 8), 'unknown value type',
                                   _value_at('k') - 4),
    'unknown array element type': (_one_kv('k', ARRAY, u32(13) + u64(1) + b'\0' * 8),
                                   'unknown array element type 13', _value_at('k')),
    'unknown element type in nested array': (
        _one_kv('k', ARRAY, u32(ARRAY) + u64(1) + u32(99) + u64(0)), 'unknown array element type 99',
        _value_at('k') + 12),
    'duplicate key': (build([ARCH, ARR, kv('a.arr', UINT8, b'\1')], []), 'duplicate metadata key',
                      24 + len(ARCH) + len(ARR)),
    # tensors
    'misaligned tensor offset': (build([ARCH], [tensor_info('w', (4,), F32, 4)], DATA + bytes(32)),
                                 'not a multiple of the alignment', 24 + len(ARCH)),
    'overlapping tensors': (build([ARCH], [tensor_info('a', (16,), F32, 0), tensor_info('b', (8,), F32, 32)],
                                  bytes(96)), 'overlap', None),
    'tensors at the same offset': (build([ARCH], [tensor_info('a', (4,), F32, 0),
                                                  tensor_info('b', (4,), F32, 0)],
                                         bytes(32)), 'overlap', None),
    'tensor offset past the end': (build([ARCH], [tensor_info('w', (4,), F32, 2**40)], DATA), 'past the end',
                                   24 + len(ARCH)),
    'tensor offset 2**64-32': (build([ARCH], [tensor_info('w', (4,), F32, 2**64 - 32)], DATA), 'past the end',
                               24 + len(ARCH)),
    'tensor data too short': (build([ARCH], [tensor_info('w', (1000,), F32, 0)], DATA), 'past the end',
                              24 + len(ARCH)),
    'tensor data missing': (build([ARCH], [W]), 'truncated|past the end', None),
    'duplicate tensor name': (build([ARCH], [tensor_info('w', (4,), F32, 0), tensor_info('w', (4,), F32, 32)],
                                    bytes(64)), 'duplicate tensor name', 24 + len(ARCH) + len(W)),
    'ggml type 4 (removed Q4_2)': (build([ARCH], [tensor_info('w', (32,), 4, 0)], bytes(64)),
                                   'unknown or removed GGML type 4', 24 + len(ARCH)),
    'ggml type 5 (removed Q4_3)': (build([ARCH], [tensor_info('w', (32,), 5, 0)], bytes(64)),
                                   'unknown or removed GGML type 5', 24 + len(ARCH)),
    'ggml type 31 (removed Q4_0_4_4)': (build([ARCH], [tensor_info('w', (32,), 31, 0)], bytes(64)),
                                        'unknown or removed GGML type 31', 24 + len(ARCH)),
    'ggml type 1000': (build([ARCH], [tensor_info('w', (4,), 1000, 0)], DATA),
                       'unknown or removed GGML type 1000', 24 + len(ARCH)),
    'ggml type COUNT': (build([ARCH], [tensor_info('w', (4,), int(GgmlType.COUNT), 0)], DATA),
                       'unknown or removed GGML type', 24 + len(ARCH)),
    'n_dims 0': (build([ARCH], [tensor_info('w', (), F32, 0)], DATA), '0 dimensions', 24 + len(ARCH) + 9),
    'n_dims 5': (build([ARCH], [tensor_info('w', (1, 1, 1, 1, 4), F32, 0)], DATA), '5 dimensions',
                 24 + len(ARCH) + 9),
    'n_dims 2**32-1': (build([ARCH], [tensor_info('w', (4,), F32, 0, n_dims=2**32 - 1)], DATA), 'dimensions',
                       24 + len(ARCH) + 9),
    'row not a multiple of the Q4_0 block': (build([ARCH], [tensor_info('w', (33, 2), Q4_0, 0)], bytes(64)),
                                             'block size 32', 24 + len(ARCH)),
    'row not a multiple of the Q4_K block': (build([ARCH], [tensor_info('w', (32,), Q4_K, 0)], bytes(160)),
                                             'block size 256', 24 + len(ARCH)),
    'dims overflow when multiplied': (build([ARCH], [tensor_info('w', (2**32, 2**32), F32, 0)], DATA),
                                      'overflow', 24 + len(ARCH)),
    'dims overflow (4 dims)': (build([ARCH], [tensor_info('w', (2**16, 2**16, 2**16, 2**16), F32, 0)], DATA),
                               'overflow', 24 + len(ARCH)),
    'dim 2**63': (build([ARCH], [tensor_info('w', (2**63,), F32, 0)], DATA), 'out of range', 24 + len(ARCH)),
    'dim 2**64-1': (build([ARCH], [tensor_info('w', (4, 2**64 - 1), F32, 0)], DATA), 'out of range',
                    24 + len(ARCH)),
    'byte size overflows': (build([ARCH], [tensor_info('w', (2**62,), F32, 0)], DATA), 'overflow',
                            24 + len(ARCH)),
    'byte size overflows (Q8_0 row)': (build([ARCH], [tensor_info('w', (2**63 - 32,), 8, 0)], DATA),
                                       'overflow', 24 + len(ARCH)),
    'empty tensor, other dims overflow': (build([ARCH], [tensor_info('w', (0, 2**40, 2**40), F32, 0)], DATA),
                                          'overflow', 24 + len(ARCH)),
    'empty tensor, dims overflow past a zero': (
        build([ARCH], [tensor_info('w', (2**62, 2, 0), F32, 0)], DATA), 'overflow', 24 + len(ARCH)),
    'empty F16 tensor, too large once dequantized': (
        build([ARCH], [tensor_info('w', (0, 2**61), F16, 0)], DATA), 'overflow', 24 + len(ARCH)),
    'empty Q8_0 tensor, row bytes overflow': (build([ARCH], [tensor_info('w', (2**63 - 32, 0), 8, 0)], DATA),
                                              'overflow', 24 + len(ARCH)),
    # alignment
    'alignment 0': (_one_kv('general.alignment', UINT32, u32(0)), 'power of two',
                    _value_at('general.alignment')),
    'alignment 3': (_one_kv('general.alignment', UINT32, u32(3)), 'power of two',
                    _value_at('general.alignment')),
    'alignment 2**31': (_one_kv('general.alignment', UINT32, u32(2**31)), 'power of two',
                        _value_at('general.alignment')),
    'alignment -32': (_one_kv('general.alignment', INT32, struct.pack('<i', -32)), 'power of two',
                      _value_at('general.alignment')),
    'alignment string': (_one_kv('general.alignment', STRING, gstr('32')), 'must be an integer.*STRING',
                         _value_at('general.alignment')),
    'alignment float': (_one_kv('general.alignment', FLOAT32, scalar(FLOAT32, 32.0)),
                        'must be an integer.*FLOAT32', _value_at('general.alignment')),
    'alignment bool': (_one_kv('general.alignment', BOOL, b'\1'), 'must be an integer',
                       _value_at('general.alignment')),
    'alignment array': (_one_kv('general.alignment', ARRAY, array(UINT32, [u32(32)])), 'must be an integer',
                        _value_at('general.alignment')),
    'empty file': (b'', 'empty', None),
}


@pytest.mark.parametrize('case', list(CASES))
def test_hostile(tmp_path, case):
    blob, keyword, offset = CASES[case]
    _reject(tmp_path, blob, keyword, offset)


def test_deep_nesting(tmp_path):
    def nested(levels: int) -> bytes:   # `levels` arrays, innermost an empty UINT8 array
        return (u32(ARRAY) + u64(1)) * (levels - 1) + u32(UINT8) + u64(0)

    path = _write(tmp_path, _one_kv('k', ARRAY, nested(16)))
    with GgufFile.from_path(path) as gf:
        value = gf.get_field('k')
        for _ in range(15):
            value = value[0]
        assert value.dtype == np.uint8 and value.size == 0
    _reject(tmp_path, _one_kv('k', ARRAY, nested(17)), 'nested deeper than 16')
    _reject(tmp_path, _one_kv('k', ARRAY, nested(100_000)), 'nested deeper than 16')   # no RecursionError
    # what gadget writes at its limit it reads back
    gf = GgufFile()
    deep = [1]
    for _ in range(15):
        deep = [deep]
    gf.set_field('deep', deep)
    gf.save(tmp_path / 'deep.gguf')
    with GgufFile.from_path(tmp_path / 'deep.gguf') as back:
        assert U.canon(back.get_field('deep')) == U.canon(gf.get_field('deep'))


def test_valid_oddities_are_accepted(tmp_path):
    """Things GGUF allows: v2, no tensors, zero-size tensors, gaps between tensors, out-of-order offsets,
    alignment 1, empty arrays, a file ending right after the last value."""
    cases = [
        build([ARCH], [], version=2),
        build([], []),
        build([kv('e', ARRAY, array(UINT8, b''))], []),
        build([kv('general.alignment', UINT32, u32(1))],
              [tensor_info('a', (3,), 24, 0), tensor_info('b', (2,), 24, 3)], b'\1\2\3\4\5', alignment=1),
        build([ARCH], [tensor_info('a', (4,), F32, 64), tensor_info('b', (4,), F32, 0)], bytes(80)),
        build([ARCH], [tensor_info('z', (0, 5), F32, 0)]),
        build([ARCH], [tensor_info('z', (0,), F32, 0), tensor_info('w', (4,), F32, 0)], DATA),
        build([ARCH], [tensor_info('z', (0, 2**20, 2**20), F32, 0), tensor_info('q', (2**40, 0), 8, 0)]),
    ]
    for i, blob in enumerate(cases):
        with GgufFile.from_path(_write(tmp_path, blob, f'ok{i}.gguf')) as gf:
            for name in gf.fields:
                gf.get_field(name)
            for t in gf.tensors.values():
                assert t.array.nbytes == t.nbytes
    with GgufFile.from_path(tmp_path / 'ok3.gguf') as gf:
        assert gf.get_tensor('b').tolist() == [4, 5]
    with GgufFile.from_path(tmp_path / 'ok5.gguf') as gf:
        assert gf.get_tensor('z').shape == (5, 0)
    with GgufFile.from_path(tmp_path / 'ok7.gguf') as gf:
        assert gf.get_tensor('z').shape == (2**20, 2**20, 0)
        assert gf.get_tensor('q').shape == (0, 2**40 // 32 * 34)


@pytest.mark.parametrize('payload', [
    u32(UINT8) + u64(2**40),
    u32(INT64) + u64(2**40),
    u32(STRING) + u64(2**40),
    u32(ARRAY) + u64(2**40),
    u32(ARRAY) + u64(1) + u32(UINT64) + u64(2**40),
], ids=['uint8', 'int64', 'string', 'array', 'nested'])
def test_absurd_counts_do_not_allocate(tmp_path, payload):
    blob = build([ARCH, kv('huge', ARRAY, payload + bytes(64))], [W], DATA)
    path = _write(tmp_path, blob)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        with pytest.raises(GgufError, match='cannot fit|remain'):
            GgufFile.from_path(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100_000   # KiB


def test_many_small_values_stay_linear(tmp_path):
    """A file packed with empty nested arrays (12 bytes each) is parsed and decoded quickly."""
    n = 200_000
    blob = _one_kv('k', ARRAY, u32(ARRAY) + u64(n) + (u32(UINT8) + u64(0)) * n)
    with GgufFile.from_path(_write(tmp_path, blob)) as gf:
        assert len(gf.get_field('k')) == n


# --------------------------------------------------------------------------------------------
# Mutation fuzzer
# --------------------------------------------------------------------------------------------

def _base_file(tmp_path_factory) -> tuple[bytes, int]:
    gf = GgufFile()
    gf.set_field('general.architecture', 'fuzz')
    gf.set_field('fuzz.count', 7, type='UINT32')
    gf.set_field('fuzz.eps', 1e-5)
    gf.set_field('fuzz.flag', True)
    gf.set_field('fuzz.big', 2**40, type='UINT64')
    gf.set_field('fuzz.pi', 3.14159, type='FLOAT64')
    gf.set_field('fuzz.ids', list(range(16)))
    gf.set_field('fuzz.tokens', ['<s>', '</s>', 'héllo', '🦙', '', 'world'])
    gf.set_field('fuzz.nested', [[1, 2], ['a', 'b'], [[3]]])
    gf.set_field('general.alignment', 32)
    rng = np.random.default_rng(0)
    gf.set_tensor('f32', rng.standard_normal((4, 8)).astype(np.float32))
    gf.set_tensor('f16', rng.standard_normal(16).astype(np.float16))
    gf.set_tensor('q8_0', rng.standard_normal((2, 32)).astype(np.float32), type='Q8_0')
    gf.set_tensor('q4_k', rng.standard_normal((1, 256)).astype(np.float32), type='Q4_K')
    gf.set_tensor('i32', np.arange(3, dtype=np.int32))
    gf.set_tensor('bf16', rng.standard_normal((2, 2)).astype(np.float32), type='BF16')
    path = tmp_path_factory.mktemp('fuzzbase') / 'base.gguf'
    gf.save(path)
    blob = path.read_bytes()
    with GgufFile.from_path(path) as back:
        header_len = back._data_offset
    return blob, header_len


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    return _base_file(tmp_path_factory)


def test_base_file_is_valid(base, tmp_path):
    blob, header_len = base
    assert 1000 < len(blob) < 4000 and 300 < header_len < len(blob)
    import gguf
    reader = gguf.GGUFReader(_write(tmp_path, blob))   # gguf-py agrees it is valid
    assert len(reader.tensors) == 6
    assert _check(blob, tmp_path / 'check.gguf') == 'accepted'


_SAFE_TO_DECODE = {GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_K, GgmlType.Q4_0}


def _within(array: np.ndarray, lo: int, hi: int) -> None:
    if array.nbytes:
        start = array.__array_interface__['data'][0]
        assert lo <= start and start + array.nbytes <= hi


def _walk(value, lo, hi) -> None:
    if isinstance(value, np.ndarray):
        _within(value, lo, hi)
        value.tolist()
    elif isinstance(value, list):
        for v in value:
            _walk(v, lo, hi)
    else:
        assert isinstance(value, (int, float, bool, str)), type(value)


def _check(blob: bytes, path) -> str:
    """Parse a (possibly broken) file: a GgufError, or a file whose every value and tensor reads
    within the mapping. Any other exception propagates and fails the test."""
    path.write_bytes(blob)
    try:
        try:
            gf = GgufFile.from_path(path)
        except GgufError as exc:
            assert str(path) in str(exc)
            return 'rejected'
        with gf:
            size = len(blob)
            lo = np.frombuffer(gf._buf, dtype=np.uint8).__array_interface__['data'][0]
            hi = lo + size
            for name in gf.fields:
                gf.get_field_type(name)
                gf.get_field_element_type(name)
                _walk(gf.get_field(name), lo, hi)
            for name, t in gf.tensors.items():
                assert gf._data_offset + t.offset + t.nbytes <= size
                arr = gf.get_tensor(name)
                assert arr.nbytes == t.nbytes
                _within(arr, lo, hi)
                if t.type in _SAFE_TO_DECODE and t.nbytes <= 1 << 16:
                    assert gf.dequantize(name).size == t.n_elements
            assert gf.describe()
        return 'accepted'
    finally:
        path.unlink()


_INTERESTING = [0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 16, 31, 32, 33, 63, 64, 255, 256, 2**15, 2**16, 2**31 - 1,
                2**31, 2**32 - 1, 2**32, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 32, 2**64 - 1]


@st.composite
def _mutation(draw, kind: str, size: int, header_len: int):
    pos = st.one_of(st.integers(0, header_len - 1), st.integers(0, size - 1))
    if kind == 'bitflip':
        return ('bitflip', draw(pos), draw(st.integers(0, 7)))
    if kind == 'overwrite':
        if draw(st.booleans()):
            return ('bytes', draw(pos), draw(st.binary(min_size=1, max_size=8)))
        value = draw(st.sampled_from(_INTERESTING + [size, header_len]))
        width = draw(st.sampled_from([4, 8]))
        return ('bytes', draw(pos),
                struct.pack('<Q', value)[:width] if value < 2**(8 * width) else b'\xff' * width)
    if kind == 'truncate':
        return ('truncate', draw(st.one_of(st.integers(0, header_len), st.integers(0, size - 1))))
    if kind == 'insert':
        return ('insert', draw(pos), draw(st.binary(min_size=1, max_size=16)))
    if kind == 'delete':
        return ('delete', draw(pos), draw(st.integers(1, 16)))
    raise AssertionError(kind)


def _apply(blob: bytes, ops) -> bytes:
    b = bytearray(blob)
    for op in ops:
        if op[0] == 'bitflip':
            if op[1] < len(b):
                b[op[1]] ^= 1 << op[2]
        elif op[0] == 'bytes':
            b[op[1]:op[1] + len(op[2])] = op[2]
        elif op[0] == 'truncate':
            del b[op[1]:]
        elif op[0] == 'insert':
            b[op[1]:op[1]] = op[2]
        elif op[0] == 'delete':
            del b[op[1]:op[1] + op[2]]
    return bytes(b)


# kind -> mutated files per run (>= 2,000 in all); GADGET_FUZZ_SCALE=10 fuzzes ten times longer.
_SCALE = float(os.environ.get('GADGET_FUZZ_SCALE', '1'))
FUZZ_KINDS = {kind: max(1, int(n * _SCALE)) for kind, n in {
    'bitflip': 600, 'overwrite': 900, 'truncate': 200, 'insert': 450, 'delete': 350, 'mixed': 600}.items()}
_fuzz_files = itertools.count()


@pytest.mark.parametrize('kind', list(FUZZ_KINDS))
def test_fuzz(base, tmp_path, kind):
    blob, header_len = base
    outcomes = {'accepted': 0, 'rejected': 0}

    if kind == 'mixed':
        op = st.sampled_from(['bitflip', 'overwrite', 'insert', 'delete', 'truncate']).flatmap(
            lambda k: _mutation(k, len(blob), header_len))
        ops = st.lists(op, min_size=2, max_size=5)
    else:
        ops = st.lists(_mutation(kind, len(blob), header_len), min_size=1,
                       max_size=1 if kind == 'truncate' else 3)

    @settings(max_examples=FUZZ_KINDS[kind], deadline=None, database=None)
    @given(ops=ops)
    def run(ops):
        mutated = _apply(blob, ops)
        outcomes[_check(mutated, tmp_path / f'fuzz{next(_fuzz_files)}.gguf')] += 1

    run()
    assert sum(outcomes.values()) >= min(FUZZ_KINDS[kind], 1000)   # truncations: a finite space
    assert outcomes['rejected'] > 0
    if kind in ('bitflip', 'overwrite', 'mixed'):
        assert outcomes['accepted'] > 0


def test_fuzz_file_count():
    assert sum(FUZZ_KINDS.values()) >= 2000 or _SCALE < 1
