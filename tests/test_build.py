"""The build machinery: the GGML pin and fetch, CMake arguments, where the libraries are found."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'vendor'))
sys.path.insert(0, str(ROOT))

import fetch  # noqa: E402  (vendor/fetch.py)


def test_pin_names_package_version_and_hash():
    pin = json.loads((ROOT / 'vendor' / 'ggml.pin.json').read_text())
    assert pin['package'] == 'libggml-python'
    assert pin['ggml_version'] == '0.20.2'
    assert len(pin['sha256']) == 64 and int(pin['sha256'], 16) >= 0


def test_fetch_is_skipped_when_the_tree_is_there(tmp_path, monkeypatch):
    dest = tmp_path / 'ggml'
    dest.mkdir()
    (dest / fetch.STAMP).write_text(fetch.pin_key(fetch.load_pin()) + '\n')

    def no_network(*args, **kwargs):
        raise AssertionError('fetch must not download when the pinned tree is present')

    monkeypatch.setattr(fetch.subprocess, 'run', no_network)
    assert fetch.fetch(dest) == dest


def test_fetch_rejects_a_download_with_the_wrong_hash(tmp_path, monkeypatch):
    pin = dict(fetch.load_pin(), sha256='0' * 64)
    monkeypatch.setattr(fetch, 'load_pin', lambda: pin)
    monkeypatch.setattr(fetch, 'VENDOR', tmp_path)   # no cached download to reuse

    def fake_pip(cmd, check, env=None):
        into = Path(cmd[cmd.index('-d') + 1])
        (into / pin['sdist']).write_bytes(b'not the pinned sdist')

    monkeypatch.setattr(fetch, '_pip_command', lambda: ['pip'])
    monkeypatch.setattr(fetch.subprocess, 'run', fake_pip)
    with pytest.raises(RuntimeError, match='sha256 mismatch'):
        fetch.fetch(tmp_path / 'ggml', quiet=True)
    assert not (tmp_path / 'ggml').exists()


def test_fetch_without_pip_uses_the_index_api(tmp_path, monkeypatch):
    # In pip's isolated build environment of a virtual environment, no pip may be importable.
    pin = fetch.load_pin()
    monkeypatch.setattr(fetch, '_pip_command', lambda: None)
    monkeypatch.setattr(fetch, 'VENDOR', tmp_path)
    calls = []

    def fake_index(pin_, into):
        calls.append(pin_['sdist'])
        (into / pin_['sdist']).write_bytes(b'bytes from the index')
        return into / pin_['sdist']

    monkeypatch.setattr(fetch, '_download_from_index', fake_index)
    with pytest.raises(RuntimeError, match='sha256 mismatch'):
        fetch.fetch(tmp_path / 'ggml', quiet=True)
    assert calls == [pin['sdist']]


def test_cmake_args_pass_through_and_cuda_detection(monkeypatch):
    import setup as setup_helpers
    monkeypatch.setenv('CMAKE_ARGS', '-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90')
    args = setup_helpers.cmake_args()
    assert '-DGGML_LLAMAFILE=ON' in args and '-DGGML_NATIVE=ON' in args and '-DGGML_RPC=ON' in args
    assert args[-2:] == ['-DGGML_CUDA=ON', '-DCMAKE_CUDA_ARCHITECTURES=90']
    assert setup_helpers.cuda_requested(args)
    monkeypatch.setenv('CMAKE_ARGS', '-DGGML_CUDA=ON -DGGML_CUDA=OFF')
    assert not setup_helpers.cuda_requested(setup_helpers.cmake_args())


def test_libraries_are_found_without_ld_library_path():
    env = {k: v for k, v in os.environ.items() if k != 'LD_LIBRARY_PATH'}
    code = 'import gadget._ggml as m; print(m.__file__)'
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True)
    ext = Path(out.stdout.strip())
    ldd = subprocess.run(['ldd', str(ext)], capture_output=True, text=True, check=True).stdout
    for name in ('libgadget-ggml.so', 'libgadget-ggml-base.so', 'libgadget-ggml-cpu.so',
                 'libgadget-ggml-rpc.so'):
        line = next(ln for ln in ldd.splitlines() if name in ln)
        assert str(ext.parent / 'lib') in line, line
    assert 'not found' not in ldd
    # gadget's GGML never goes by GGML's own library names, which other packages ship too.
    assert not any(ln.strip().startswith('libggml') for ln in ldd.splitlines())


def test_coexists_with_another_ggml_in_the_process(tmp_path):
    # A stand-in for llama-cpp-python & co: a library with GGML's SONAME, loaded first. gadget must
    # still use its own GGML (a different version would have a different ABI).
    fake = tmp_path / 'libggml-base.so.0'
    src = tmp_path / 'fake.c'
    src.write_text('const char *ggml_version(void) { return "not-gadget"; }\n')
    subprocess.run(['cc', '-shared', '-fPIC', '-Wl,-soname,libggml-base.so.0', '-o', str(fake), str(src)],
                   check=True)
    code = ('import ctypes, sys; ctypes.CDLL(sys.argv[1]); '
            'from gadget.ggml import ffi, lib; print(ffi.string(lib.ggml_version()).decode())')
    out = subprocess.run([sys.executable, '-c', code, str(fake)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '0.20.2'
