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

    monkeypatch.setattr(fetch, '_download', no_network)
    assert fetch.fetch(dest) == dest


def _fake_sdist(folder: Path, name: str) -> Path:
    """A small sdist shaped like the pinned one: ``<top>/ggml/CMakeLists.txt``."""
    import io
    import tarfile

    path = folder / name
    with tarfile.open(path, 'w:gz') as tar:
        for member, data in (('pkg-1/ggml/CMakeLists.txt', b'project(ggml)\n'),
                             ('pkg-1/ggml/include/ggml.h', b'/* header */\n'),
                             ('pkg-1/setup.py', b'raise SystemExit("no build hook may run")\n')):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def fake_pin(tmp_path, monkeypatch):
    """A pin of a fake sdist, no cached download, and pip configured with nothing but what a test sets."""
    files = tmp_path / 'files'
    files.mkdir()
    sdist = _fake_sdist(files, 'fake_ggml-1.0.tar.gz')
    pin = dict(fetch.load_pin(), package='Fake_GGML', version='1.0', sdist=sdist.name,
               sha256=fetch.sha256_of(sdist))
    monkeypatch.setattr(fetch, 'load_pin', lambda: pin)
    monkeypatch.setattr(fetch, 'VENDOR', tmp_path / 'vendor')
    (tmp_path / 'vendor').mkdir()
    # No configuration file of the machine's.
    for name in ('HOME', 'XDG_CONFIG_HOME', 'XDG_CONFIG_DIRS', 'VIRTUAL_ENV'):
        monkeypatch.setenv(name, str(tmp_path / 'no-config'))
    monkeypatch.delenv('PIP_CONFIG_FILE', raising=False)
    for name in ('PIP_INDEX_URL', 'PIP_EXTRA_INDEX_URL', 'PIP_FIND_LINKS', 'GADGET_GGML_SDIST'):
        monkeypatch.delenv(name, raising=False)
    return pin, sdist


def _html_index(root: Path, pin: dict, sdist: Path) -> Path:
    """A PEP 503 index as a folder (``file://`` URLs, as pip accepts them)."""
    page = root / 'simple' / 'fake-ggml'            # the normalised project name
    page.mkdir(parents=True)
    (page / 'index.html').write_text(
        f'<!DOCTYPE html><html><body><a href="../../files/{sdist.name}#sha256={pin["sha256"]}">'
        f'{sdist.name}</a></body></html>')
    return root / 'simple'


def test_fetch_from_a_pep503_index_folder_never_runs_pip(fake_pin, tmp_path, monkeypatch):
    pin, sdist = fake_pin
    index = _html_index(tmp_path, pin, sdist)
    monkeypatch.setenv('PIP_INDEX_URL', 'https://127.0.0.1:9/unreachable')   # tried first, fails
    monkeypatch.setenv('PIP_EXTRA_INDEX_URL', index.as_uri())
    monkeypatch.setattr(subprocess, 'run', lambda *a, **k: pytest.fail('fetch must not run a subprocess'))
    dest = fetch.fetch(tmp_path / 'ggml', quiet=True)
    assert (dest / 'CMakeLists.txt').read_text() == 'project(ggml)\n'
    assert (tmp_path / 'vendor' / 'downloads' / sdist.name).exists()


def test_fetch_from_a_json_simple_api_over_http(fake_pin, tmp_path, monkeypatch):
    """PEP 691: the index answers JSON, with a relative file URL; served on loopback."""
    import http.server
    import threading

    pin, sdist = fake_pin
    requests = []

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append((self.path, self.headers.get('Accept', ''), self.headers.get('Authorization')))
            if self.path == '/simple/fake-ggml/':
                body = json.dumps({'meta': {'api-version': '1.0'}, 'files': [
                    {'filename': 'fake_ggml-0.9.tar.gz', 'url': '../../f/old.tar.gz', 'hashes': {}},
                    {'filename': sdist.name, 'url': f'../../f/{sdist.name}', 'hashes': {}}]}).encode()
                kind = 'application/vnd.pypi.simple.v1+json'
            elif self.path == f'/f/{sdist.name}':
                body, kind = sdist.read_bytes(), 'application/octet-stream'
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header('Content-Type', kind)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv('PIP_INDEX_URL', f'http://user:s%40cret@127.0.0.1:{server.server_port}/simple/')
        dest = fetch.fetch(tmp_path / 'ggml', quiet=True)
    finally:
        server.shutdown()
    assert (dest / 'include' / 'ggml.h').exists()
    assert not (dest / 'setup.py').exists()                     # only the ggml/ folder is unpacked
    assert requests[0][0] == '/simple/fake-ggml/' and 'json' in requests[0][1]
    assert requests[0][2] == 'Basic ' + __import__('base64').b64encode(b'user:s@cret').decode()


def test_fetch_reads_pip_config_files(fake_pin, tmp_path, monkeypatch):
    pin, sdist = fake_pin
    index = _html_index(tmp_path, pin, sdist)
    config = tmp_path / 'pip.conf'
    config.write_text(f'[global]\nindex-url = {index.as_uri()}\n')
    monkeypatch.setenv('PIP_CONFIG_FILE', str(config))
    settings = fetch.pip_settings()
    assert settings['index-url'] == index.as_uri()
    monkeypatch.setenv('PIP_FIND_LINKS', str(tmp_path / 'files'))   # environment after files, as pip
    assert fetch.package_locations() == [index.as_uri(), str(tmp_path / 'files')]
    assert (fetch.fetch(tmp_path / 'ggml', quiet=True) / 'CMakeLists.txt').exists()


def test_fetch_rejects_a_download_with_the_wrong_hash(fake_pin, tmp_path, monkeypatch):
    pin, sdist = fake_pin
    pin['sha256'] = '0' * 64
    monkeypatch.setenv('PIP_INDEX_URL', str(tmp_path / 'files'))   # a find-links style folder
    with pytest.raises(RuntimeError, match='sha256 mismatch'):
        fetch.fetch(tmp_path / 'ggml', quiet=True)
    assert not (tmp_path / 'ggml').exists()
    assert not (tmp_path / 'vendor' / 'downloads' / sdist.name).exists()


def test_fetch_names_every_location_it_tried(fake_pin, tmp_path, monkeypatch):
    empty = tmp_path / 'empty'
    empty.mkdir()
    monkeypatch.setenv('PIP_INDEX_URL', str(empty))
    monkeypatch.setenv('PIP_EXTRA_INDEX_URL', 'http://127.0.0.1:9/simple')
    expected = r'found on none .*empty \(not listed\).*127\.0\.0\.1:9.*GADGET_GGML_SDIST'
    with pytest.raises(RuntimeError, match=expected):
        fetch.fetch(tmp_path / 'ggml', quiet=True)


def test_fetch_takes_a_local_sdist(fake_pin, tmp_path, monkeypatch):
    pin, sdist = fake_pin
    monkeypatch.setenv('PIP_INDEX_URL', 'http://127.0.0.1:9/simple')
    monkeypatch.setenv('GADGET_GGML_SDIST', str(sdist))
    assert (fetch.fetch(tmp_path / 'ggml', quiet=True) / 'CMakeLists.txt').exists()


def test_cmake_args_pass_through_and_cuda_detection(monkeypatch):
    import setup as setup_helpers
    monkeypatch.setenv('CMAKE_ARGS', '-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90')
    args = setup_helpers.cmake_args()
    assert '-DGGML_LLAMAFILE=ON' in args and '-DGGML_NATIVE=ON' in args and '-DGGML_RPC=ON' in args
    assert args[-2:] == ['-DGGML_CUDA=ON', '-DCMAKE_CUDA_ARCHITECTURES=90']
    assert setup_helpers.cuda_requested(args)
    monkeypatch.setenv('CMAKE_ARGS', '-DGGML_CUDA=ON -DGGML_CUDA=OFF')
    assert not setup_helpers.cuda_requested(setup_helpers.cmake_args())


def test_portable_switch_builds_backend_modules_for_every_cpu_level(monkeypatch):
    import setup as setup_helpers
    monkeypatch.delenv('CMAKE_ARGS', raising=False)
    monkeypatch.delenv('GADGET_PORTABLE', raising=False)
    native = setup_helpers.cmake_args()
    assert '-DGGML_NATIVE=ON' in native and not any('BACKEND_DL' in a for a in native)
    monkeypatch.setenv('GADGET_PORTABLE', '1')
    portable = setup_helpers.cmake_args()
    # the last setting of an option wins in CMake: portable overrides native, CMAKE_ARGS overrides both
    assert setup_helpers._last_value(portable, 'GGML_NATIVE') == 'OFF'
    assert setup_helpers._last_value(portable, 'GGML_BACKEND_DL') == 'ON'
    assert setup_helpers._last_value(portable, 'GGML_CPU_ALL_VARIANTS') == 'ON'
    monkeypatch.setenv('CMAKE_ARGS', '-DGGML_CPU_ALL_VARIANTS=OFF')
    assert setup_helpers._last_value(setup_helpers.cmake_args(), 'GGML_CPU_ALL_VARIANTS') == 'OFF'


def test_the_loaded_backends_are_reported():
    from gadget import _ffi
    from gadget.ggml import API, lib
    module_functions = {n for n, f in API['functions'].items() if f['module']}
    if not _ffi.MODULES:   # a native build links its backends: no trampolines
        assert module_functions == set()
        assert lib.ggml_backend_reg_by_name(b'CPU')
        return
    assert 'cpu' in _ffi.MODULES and _ffi.MODULES['cpu'].startswith('libgadget-ggml-cpu')
    assert {'ggml_backend_cpu_init', 'ggml_graph_compute_with_ctx', 'ggml_cpu_has_avx2'} <= module_functions
    assert lib.ggml_backend_reg_by_name(b'CPU')


def test_libraries_are_found_without_ld_library_path():
    env = {k: v for k, v in os.environ.items() if k != 'LD_LIBRARY_PATH'}
    code = 'import gadget._ggml as m, gadget._ffi as f; print(m.__file__); print(*f.MODULES.values())'
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True)
    ext_line, modules_line = (out.stdout.splitlines() + [''])[:2]
    ext, modules = Path(ext_line.strip()), modules_line.split()
    ldd = subprocess.run(['ldd', str(ext)], capture_output=True, text=True, check=True).stdout
    # A native build links its backends; a portable one loads them as modules from the same folder.
    linked = ['libgadget-ggml.so', 'libgadget-ggml-base.so']
    if not modules:
        linked += ['libgadget-ggml-cpu.so', 'libgadget-ggml-rpc.so']
    for name in linked:
        line = next((ln for ln in ldd.splitlines() if name in ln), None)
        assert line is not None and str(ext.parent / 'lib') in line, (name, ldd)
    # A BLAS build's OpenBLAS (the scipy-openblas32 wheel's) is loaded by gadget/_ffi.py at import,
    # from where that package is installed: the dynamic loader alone does not know it.
    def missing(listing: str) -> list[str]:
        return [ln for ln in listing.splitlines() if 'not found' in ln and 'libscipy_openblas' not in ln]

    assert not missing(ldd), ldd
    for module in modules:
        path = ext.parent / 'lib' / module
        assert path.is_file(), path
        module_ldd = subprocess.run(['ldd', str(path)], capture_output=True, text=True, check=True).stdout
        assert not missing(module_ldd) and str(ext.parent / 'lib') in module_ldd, module_ldd
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
