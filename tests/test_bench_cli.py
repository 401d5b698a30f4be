"""``gadget bench`` as a user runs it: each suite in quick mode in a subprocess, its JSON document
read back and its numbers checked for sanity, its tables, a peer reported absent, and the errors
a user can cause (one line on stderr, no traceback).

One thread everywhere: on a busy 2-core machine two spinning OpenMP threads per library slow each
run down many times over, and these are smoke tests, not measurements.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gadget.textgen import default_model_path

ROOT = Path(__file__).resolve().parents[1]

# Until `gadget/__main__.py` wires the subcommand in, the same parser built around add_parser;
# argv[1] lists modules to hide (a peer "not installed"), comma-separated.
LAUNCHER = '''\
import argparse, sys
for name in filter(None, sys.argv[1].split(',')):
    sys.modules[name] = None
from gadget.bench.cli import add_parser
parser = argparse.ArgumentParser(prog='gadget')
add_parser(parser.add_subparsers(dest='command', required=True))
args = parser.parse_args(sys.argv[2:])
sys.exit(args.run(args))
'''


def bench(*argv: str, hide: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    wired = 'bench' in (ROOT / 'gadget' / '__main__.py').read_text(encoding='utf-8')
    command = ([sys.executable, '-m', 'gadget', 'bench'] if wired and not hide
               else [sys.executable, '-c', LAUNCHER, ','.join(hide), 'bench'])
    return subprocess.run([*command, *argv], capture_output=True, text=True, timeout=300)


def document(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)               # stdout holds the JSON document and nothing else
    assert doc['quick'] is True and 'not representative' in doc['note']
    assert doc['machine']['cores'] >= 1 and doc['machine']['ggml']
    return doc


@pytest.mark.slow
def test_ops_and_gguf_json():
    doc = document(bench('ops', 'gguf', '--quick', '--json', '--threads', '1',
                         '--model', str(default_model_path())))
    assert doc['settings']['suites'] == ['ops', 'gguf'] and doc['settings']['threads'] == 1
    ops = doc['suites']['ops']
    assert [c['call'] for c in ops['calls']] == ['bare', 'guarded', 'named']
    assert all(0 < c['us_per_call'] < 1000 for c in ops['calls'])
    assert [(m['library'], m['weights']) for m in ops['matmul']] == [
        *(('gadget', t) for t in ('F32', 'F16', 'BF16', 'Q8_0', 'Q4_0')), ('numpy', 'F32')]
    assert all(m['gflops'] > 0 and m['vs_numpy'] > 0 for m in ops['matmul'])
    assert ops['peers'][0]['name'] == 'numpy' and ops['peers'][0]['present']

    gguf = doc['suites']['gguf']
    assert gguf['file']['tensors'] == 272 and gguf['file']['fields'] > 0
    gadget_rows = [r for r in gguf['rows'] if r['library'] == 'gadget']
    assert len(gadget_rows) == 2 and all(r['ms'] > 0 for r in gadget_rows)
    peer = gguf['peers'][0]
    assert set(gguf['ratios']) == {'list', 'decode_all'}
    if peer['present']:
        assert peer['version'] and gguf['ratios']['list'] > 1 and gguf['ratios']['decode_all'] > 0
    else:
        assert gguf['ratios']['list'] is None and 'pip install gguf' in peer['reason']


def table_row(text: str, name: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f'| {name} |'))
    return [cell.strip() for cell in line.strip('|').split('|')][1:]


@pytest.mark.slow
def test_textgen_tables():
    proc = bench('textgen', '--quick', '--threads', '1')
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert 'not representative' in out and '## Text generation' in out
    assert '| | load s | prefill tok/s | decode tok/s | python ms/tok |' in out
    for name in ('gadget (default)', 'gadget `flash_attn=False`', "gadget `weight_type='BF16'`"):
        load, prefill, decode, python_ms = (float(v.replace(',', '')) for v in table_row(out, name))
        assert load > 0 and prefill > 0 and decode > 0 and python_ms > 0
    # transformers (a test dependency) runs in a process of its own, on the GGUF dequantized
    assert float(table_row(out, 'transformers (F32)')[1].replace(',', '')) > 0
    assert re.search(r'\| BF16 weights \| transformers \| [\d.]+× \| [\d.]+× \|', out)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        assert 'llama-cpp-python: not installed: ' in out
    else:
        assert float(table_row(out, 'llama-cpp-python (default)')[1].replace(',', '')) > 0
        for mode in ('default', 'flash_attn', 'unfused'):
            assert re.search(rf'\| {mode} \| llama-cpp-python \| [\d.]+× \| [\d.]+× \|', out), mode
        assert re.search(r'Decode, the three taking turns every \d+ tokens in one process .* median over '
                         r'the rounds of gadget / the faster llama-cpp-python mode \*\*[\d.]+×\*\*', out)


@pytest.mark.slow
def test_embed_json_with_a_peer_absent():
    # llama-cpp-python hidden: reported as not installed, and the suite runs without it (its
    # process would add several seconds; sentence-transformers still runs, when installed).
    doc = document(bench('embed', '--quick', '--json', '--threads', '1', hide=('llama_cpp',)))
    embed = doc['suites']['embed']
    peers = {p['name']: p for p in embed['peers']}
    assert not peers['llama-cpp-python']['present']
    assert peers['llama-cpp-python']['reason'].startswith('not installed: ')
    has_st = peers['sentence-transformers']['present']
    assert [w['key'] for w in embed['workloads']] == ['short', 'long']
    for workload in embed['workloads']:
        assert workload['texts'] > 0 and workload['tokens'] > workload['texts']
        rows = {r['library']: r for r in workload['rows']}
        assert set(rows) == {'gadget F32', 'gadget BF16'} | ({'sentence-transformers'} if has_st else set())
        for row in rows.values():
            assert row['texts_per_s'] > 0 and row['tokens_per_s'] > row['texts_per_s']
        if has_st:
            assert rows['gadget F32']['min_cosine_vs_st'] > 0.9999
            assert rows['gadget BF16']['min_cosine_vs_st'] > 0.999
            assert rows['gadget F32']['vs_sentence_transformers'] > 0
        else:
            assert rows['gadget F32']['vs_sentence_transformers'] is None


@pytest.mark.parametrize('argv, message', [
    (('textgen', '--model', 'no/such/model.gguf'), '--model: no such file: no/such/model.gguf'),
    (('textgen', 'speed'), "unknown suite 'speed'"),
])
def test_user_errors_are_one_line(argv, message):
    proc = bench(*argv, '--quick')
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('gadget bench: error: ') and message in lines[0]
    assert proc.stdout == ''


def test_a_file_that_is_not_gguf_is_one_line(tmp_path):
    bad = tmp_path / 'notes.gguf'
    bad.write_text('not a model')
    proc = bench('gguf', '--quick', '--model', str(bad))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and str(bad) in lines[0], proc.stderr


FATAL_LLAMA_CPP = '''\
import os, signal

class Llama:
    def __init__(self, **kwargs):
        pass

    def eval(self, tokens):
        if len(tokens) > 1:      # as a build whose batched kernels crash: the process dies
            os.kill(os.getpid(), signal.SIGSEGV)
'''


def test_a_peer_that_kills_its_process_is_reported_not_run(tmp_path, monkeypatch):
    from gadget.bench.textgen import llama_cpp_peer

    (tmp_path / 'llama_cpp').mkdir()
    (tmp_path / 'llama_cpp' / '__init__.py').write_text(FATAL_LLAMA_CPP)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv('PYTHONPATH', str(tmp_path))
    # the fake is imported here (find_peer imports a peer that runs in-process): set then delete,
    # so that undoing restores sys.modules as it was and no later test sees the fake
    monkeypatch.setitem(sys.modules, 'llama_cpp', None)
    monkeypatch.delitem(sys.modules, 'llama_cpp')
    peer = llama_cpp_peer(str(default_model_path(download=False)))
    assert not peer.present
    assert 'failed on a two-token prompt' in peer.reason and 'exit status -11' in peer.reason
    assert '-mno-amx-int8' in peer.reason


def test_the_installed_peer_is_judged_by_what_it_does():
    """The check agrees with a two-token prompt run here in a plain child process: a build that
    works is present, one that dies (an AMX build on Sapphire Rapids) is reported."""
    pytest.importorskip('llama_cpp')
    from gadget.bench.textgen import llama_cpp_peer

    path = str(default_model_path(download=False))
    script = ('import sys; from llama_cpp import Llama; '
              'Llama(model_path=sys.argv[1], n_ctx=64, n_threads=1, verbose=False).eval([1, 2])')
    works = subprocess.run([sys.executable, '-c', script, path], capture_output=True).returncode == 0
    assert llama_cpp_peer(path).present == works
