"""GGML's RPC backend on loopback: `gadget rpc-server` processes, models split over them, failures.

Each server is a `python -m gadget rpc-server` process on a free loopback port. A server that a test
kills or stops gets servers of its own (a failed endpoint stays unusable in the process that used
it), and the scenarios that kill or stop one run in a child process with a deadline, so that a hang
would fail the test instead of the run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from gadget import ggml as G
from gadget import rpc
from gadget.backends import Backend
from gadget.compute import GgmlCompute
from gadget.errors import BackendError, RemoteError
from gadget.model import _layer_placement
from gadget.models import LlamaModel
from gadget.textgen import TextGen, default_model_path


PROMPTS = ['The capital of France is', 'def fibonacci(n):', 'Once upon a time in a small village,',
           'Photosynthesis is the process']


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def servers(n: int, threads: int = 1):
    """``n`` rpc-server processes on loopback: yields their ``rpc://`` names and processes."""
    procs, names = [], []
    try:
        for _ in range(n):
            port = free_port()
            procs.append(subprocess.Popen([sys.executable, '-m', 'gadget', 'rpc-server', '--port', str(port),
                                           '--threads', str(threads)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            names.append(f'rpc://127.0.0.1:{port}')
        for name, proc in zip(names, procs):
            try:
                rpc.wait_for_server(name, alive=lambda: proc.poll() is None)
            except RemoteError:
                proc.kill()
                raise RuntimeError(f'{name} did not start: {proc.communicate()[1].decode()}') from None
        yield names, procs
    finally:
        for proc in procs:
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()


@pytest.fixture(scope='module')
def pair_of_servers():
    with servers(2) as (names, _):
        yield names


@pytest.fixture(scope='module')
def tok():
    pytest.importorskip('transformers', reason='tiny Llamas are made with transformers')
    from test_convert import byte_level_tokenizer
    return byte_level_tokenizer()


def _tiny_llama(tmp_path_factory, tok, name, **config):
    from test_llama import _convert     # tiny random Llamas, converted by gadget
    return _convert(tmp_path_factory, tok, name, **config)[1]


def matmul(ctx, params, tensors):
    return G.ggml_mul_mat(ctx, tensors['a'], tensors['b'])


SPECS = {'a': ('F32', (16, 8)), 'b': ('F32', (16, 4))}


def test_one_remote_backend_and_tensors_placed_on_each(pair_of_servers):
    rng = np.random.default_rng(0)
    a, b = rng.random((8, 16), dtype=np.float32), rng.random((4, 16), dtype=np.float32)
    with GgmlCompute({}, SPECS, matmul, backend=pair_of_servers[0]) as c:
        assert c.remote and c.placed[0].remote and c.graph_scheduled   # through the scheduler
        np.testing.assert_allclose(c(a=a, b=b), b @ a.T, rtol=1e-6)
    # the product runs where its weight lives; its other operand, on the CPU, is copied there
    for placement in ({'a': 1}, {'a': 0, 'b': 1}, {}):
        with GgmlCompute({}, SPECS, matmul, backend=pair_of_servers, placement=placement) as c:
            np.testing.assert_allclose(c(a=a, b=b), b @ a.T, rtol=1e-6)
            where = c.node_backends()['node_0']
            assert (pair_of_servers[placement['a']][len('rpc://'):] in where) if 'a' in placement \
                else where == 'CPU'
            np.testing.assert_allclose(c.get_input('a'), a)


def test_split_llama_logits_equal_the_local_cpu(pair_of_servers, tmp_path_factory, tok):
    path = _tiny_llama(tmp_path_factory, tok, 'rpc_gqa', num_hidden_layers=3)
    ids = tok.encode('the quick brown fox jumps')
    with LlamaModel.from_path(path, kv_type='F32', context_length=64, blas=False) as local:
        want = local(ids, all_logits=True)
        want_next = local(ids[:2])
    for split in (None, [1, 2], [0, 1]):
        with LlamaModel.from_path(path, kv_type='F32', context_length=64, backend=pair_of_servers,
                                  layer_split=split) as split_model:
            got = split_model(ids, all_logits=True)
            assert np.abs(got - want).max() <= 1e-4, split
            assert np.abs(split_model(ids[:2]) - want_next).max() <= 1e-4, split
            assert split_model.n_past == len(ids) + 2
            used = set(split_model.node_backends().values())
            assert ('CPU' in used) and len(used) == (2 if split == [0, 1] else 3), used


@pytest.mark.slow
def test_smollm2_split_over_two_servers_generates_the_local_greedy_text(pair_of_servers):
    path = default_model_path()
    with TextGen(path, context_length=256, blas=False) as local:
        want = [local.generate(p, max_gen=16, temperature=0) for p in PROMPTS]
        want_batched = local.generate_batch(PROMPTS, max_gen=16, temperature=0)
    with TextGen(path, context_length=256, backend=pair_of_servers) as split:
        assert [split.generate(p, max_gen=16, temperature=0) for p in PROMPTS] == want
        # several sequences in one batch, over the split model: the local batch's text
        assert split.generate_batch(PROMPTS, max_gen=16, temperature=0) == want_batched
    with TextGen(path, context_length=256, backend=pair_of_servers[0]) as remote:      # one server
        assert [remote.generate(p, max_gen=16, temperature=0) for p in PROMPTS] == want


def test_embeddings_over_two_servers_equal_the_local_cpu(pair_of_servers, tmp_path):
    pytest.importorskip('transformers', reason='the tiny BERT is made with transformers')
    from test_bert import _tiny_bert

    from gadget.convert import convert_bert
    from gadget.embed import EmbedNumpy
    _tiny_bert(tmp_path / 'tiny')
    path = convert_bert(tmp_path / 'tiny', tmp_path / 'tiny.gguf', outtype='F32', progress=False)
    texts = ['the cat sat on the mat.', 'dogs!', 'the cat, the dog, the mat?' * 3]
    for pooling in ('none', 'mean'):
        with EmbedNumpy(path, blas=False, pooling=pooling) as local, \
                EmbedNumpy(path, backend=pair_of_servers, pooling=pooling) as split:
            for got, want in zip(split.embed(texts), local.embed(texts)):
                assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5, pooling


def test_layer_placement_follows_the_fractions():
    class Stub:
        class _decl:
            from gadget.model import Tensor
            tensors = {'w': Tensor('F32', (2,), name='blk.{i}.w', repeat='n_layer'),
                       'emb': Tensor('F32', (2,))}

    specs = {f'blk.{i}.w': None for i in range(10)} | {'emb': None}
    even = _layer_placement(Stub, {'n_layer': 10}, specs, 2, None)
    assert [even[f'blk.{i}.w'] for i in range(10)] == [0] * 5 + [1] * 5 and 'emb' not in even
    third = _layer_placement(Stub, {'n_layer': 10}, specs, 3, [1, 1, 1])
    assert [third[f'blk.{i}.w'] for i in range(10)] == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert set(_layer_placement(Stub, {'n_layer': 10}, specs, 2, [0, 3]).values()) == {1}
    for bad in ([1], [1, -1], [0, 0], [1, float('nan')], 'ab'):
        with pytest.raises(ValueError, match='layer_split'):
            _layer_placement(Stub, {'n_layer': 10}, specs, 2, bad)


def test_split_arguments_are_checked(pair_of_servers, tmp_path_factory, tok):
    path = _tiny_llama(tmp_path_factory, tok, 'rpc_args', num_hidden_layers=2)
    with pytest.raises(ValueError, match='needs a list of backends'):
        LlamaModel.from_path(path, layer_split=[1, 1])
    with pytest.raises(ValueError, match='2 non-negative fractions'):
        LlamaModel.from_path(path, backend=pair_of_servers, layer_split=[1, 1, 1])
    with pytest.raises(ValueError, match='each backend once'):
        GgmlCompute({}, SPECS, matmul, backend=['cpu', 'cpu'])
    with pytest.raises(ValueError, match='not an index'):
        GgmlCompute({}, SPECS, matmul, backend=['cpu', pair_of_servers[0]], placement={'a': 2})
    with pytest.raises(KeyError, match='not declared'):
        GgmlCompute({}, SPECS, matmul, backend=['cpu', pair_of_servers[0]], placement={'x': 0})
    with pytest.raises(ValueError, match='needs a list'):
        GgmlCompute({}, SPECS, matmul, placement={'a': 0})


@pytest.mark.parametrize('name, message', [
    ('rpc://127.0.0.1', 'bad RPC endpoint'), ('rpc://127.0.0.1:0', 'bad RPC endpoint'),
    ('rpc://127.0.0.1:70000', 'bad RPC endpoint'), ('rpc://:50052', 'bad RPC endpoint'),
    ('rpc://host:port', 'bad RPC endpoint')])
def test_bad_endpoints_are_refused(name, message):
    with pytest.raises(BackendError, match=message):
        Backend(name)


def test_a_port_without_a_server_fails_fast_naming_it():
    port = free_port()
    started = time.monotonic()
    with pytest.raises(RemoteError, match=f'no RPC server at rpc://127.0.0.1:{port} .*connection refused'):
        TextGen(default_model_path(), backend=f'rpc://127.0.0.1:{port}')
    assert time.monotonic() - started < 5


@contextlib.contextmanager
def fake_server(answer: bytes | None):
    """A TCP server on loopback that reads GGML's HELLO and sends ``answer`` (None: says nothing)."""
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(4)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(64)
                if answer is None:
                    stop.wait(10)
                else:
                    conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f'rpc://127.0.0.1:{listener.getsockname()[1]}'
    finally:
        stop.set()
        listener.close()


def _hello_answer(major: int, minor: int, patch: int) -> bytes:
    body = bytes([major, minor, patch, 0]) + bytes(24)
    return struct.pack('<Q', len(body)) + body


def test_a_server_of_another_protocol_version_is_reported():
    major, minor, _ = rpc.PROTOCOL
    with fake_server(_hello_answer(major - 1, 0, 0)) as name:
        with pytest.raises(RemoteError, match=rf'speaks RPC protocol {major - 1}\.0\.0, this gadget\'s GGML '
                                              rf'speaks {major}\.{minor}'):
            Backend(name)
    with fake_server(_hello_answer(major, minor + 1, 0)) as name:
        with pytest.raises(RemoteError, match='speaks RPC protocol'):
            Backend(name)
    with fake_server(b'') as name:      # an older server drops a client whose HELLO it cannot read
        with pytest.raises(RemoteError, match='closed the connection instead of answering'):
            Backend(name)


def test_a_server_that_does_not_answer_times_out(monkeypatch):
    monkeypatch.setattr(rpc, 'PROBE_TIMEOUT', 1.0)
    with fake_server(None) as name:
        started = time.monotonic()
        with pytest.raises(RemoteError, match='did not answer within 1 s'):
            Backend(name)
        assert time.monotonic() - started < 5
    with pytest.raises(ValueError, match='timeout'):
        Backend(name, timeout=-1)
    with pytest.raises(ValueError, match='for RPC backends'):
        Backend('cpu', timeout=3)


def _child(script: str, timeout: float = 120) -> str:
    """Run ``script`` in a fresh interpreter; its stdout (it must exit 0 within ``timeout``)."""
    done = subprocess.run([sys.executable, '-c', textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_a_server_killed_mid_generation_raises_and_the_client_goes_on():
    with servers(2) as (names, procs):
        out = _child(f'''
            import os, signal, time
            from gadget.errors import RemoteError
            from gadget.textgen import TextGen, default_model_path
            gen = TextGen(default_model_path(), backend={names!r}, context_length=256)
            pieces, started = [], None
            try:
                for i, piece in enumerate(gen.stream('Once upon a time', max_gen=200, temperature=0)):
                    pieces.append(piece)
                    if i == 3:
                        os.kill({procs[1].pid}, signal.SIGKILL)
                        started = time.monotonic()
                print('no error')
            except RemoteError as exc:
                print('raised after', round(time.monotonic() - started, 3), 'tokens', len(pieces))
                print('message', exc)
            try:
                gen.generate('again', max_gen=4)
            except RemoteError as exc:
                print('then', exc)
            gen.close()
            try:
                TextGen(default_model_path(), backend={names!r})
            except RemoteError as exc:
                print('reconnect', exc)
            with TextGen(default_model_path(), blas=False) as local:   # the process goes on
                print('local', len(local.generate('Hello', max_gen=4, temperature=0)) > 0)
        ''')
    lines = dict(line.split(' ', 1) for line in out.strip().splitlines())
    assert 'no' not in lines, out
    seconds, _, tokens = lines['raised'].split()[1:4]
    assert float(seconds) < 30 and int(tokens) < 200, out
    assert f'RPC server {names[1]}' in lines['message'] and 'connection broke' in lines['message'], out
    assert 'unusable since an RPC server failed' in lines['then'], out
    assert 'unusable from this process' in lines['reconnect'], out
    assert lines['local'] == 'True', out


@pytest.mark.slow
def test_a_stopped_server_times_out():
    with servers(1) as (names, procs):
        out = _child(f'''
            import os, signal, time
            from gadget.backends import Backend
            from gadget.errors import RemoteError
            from gadget.models import LlamaModel
            from gadget.textgen import default_model_path
            model = LlamaModel.from_path(default_model_path(), context_length=256,
                                         backend=[Backend({names[0]!r}, timeout=3), 'cpu'])
            model([1, 2, 3])
            os.kill({procs[0].pid}, signal.SIGSTOP)
            started = time.monotonic()
            try:
                model([4])
                print('no error')
            except RemoteError as exc:
                print('raised after', round(time.monotonic() - started, 3))
                print('message', exc)
            model.close()
        ''')
    lines = dict(line.split(' ', 1) for line in out.strip().splitlines())
    assert 'no' not in lines, out
    assert 2.5 < float(lines['raised'].split()[1]) < 10, out
    assert 'no answer within 3 s' in lines['message'], out


def test_rpc_server_command_refuses_a_busy_port_and_warns_off_loopback():
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, '-m', 'gadget', 'rpc-server', '--port', str(port)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and f'cannot listen on 127.0.0.1:{port}' in done.stderr, done.stderr
    done = subprocess.run([sys.executable, '-m', 'gadget', 'rpc-server', '--device', 'rpc://x:1'],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and 'not a device of this machine' in done.stderr, done.stderr
    port = free_port()
    proc = subprocess.Popen([sys.executable, '-m', 'gadget', 'rpc-server', '--host', '0.0.0.0', '--port',
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rpc.wait_for_server(f'127.0.0.1:{port}', alive=lambda: proc.poll() is None)
        assert rpc.probe(f'127.0.0.1:{port}') == rpc.PROTOCOL
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert 'no authentication and no encryption' in err, err
    assert proc.returncode == 130, err


@pytest.mark.slow
def test_cli_generate_over_two_servers(pair_of_servers):
    def run(*backend):
        done = subprocess.run([sys.executable, '-m', 'gadget', 'generate', 'The capital of France is',
                               '-n', '8', '-t', '0', '--context', '256', *backend],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout
    assert run('--backend', ','.join(pair_of_servers), '--layer-split', '2,1') == run('--no-blas')
