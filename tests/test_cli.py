"""The ``gadget`` command as a user meets it, each command in a subprocess: the command list, help with
examples, one-line errors with a non-zero status, ``--json`` outputs, ``--sampler shrek`` and
``gadget graph``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gadget.gguf import GgufFile
from gadget.textgen import default_model_path

COMMANDS = ['info', 'inspect', 'generate', 'chat', 'embed', 'convert', 'graph', 'bench']


def gadget(*argv: str, env: dict | None = None, cwd: Path | None = None, stdin: str | None = None):
    return subprocess.run([sys.executable, '-m', 'gadget', *argv], capture_output=True, text=True, env=env,
                          cwd=cwd, input=stdin, timeout=600)


@pytest.fixture(scope='module')
def model() -> str:
    return str(default_model_path())


def test_help_lists_every_command_and_each_has_examples():
    out = gadget('--help')
    assert out.returncode == 0
    listed = out.stdout.split('examples:')[0]
    for command in COMMANDS:
        assert f'\n    {command} ' in listed, command
    for command in COMMANDS:
        sub = gadget(command, '--help')
        assert sub.returncode == 0, command
        assert 'examples:' in sub.stdout and 'gadget ' + command in sub.stdout, command


@pytest.mark.parametrize('argv', [
    ['inspect', '{missing}'], ['generate', 'Hi', '--model', '{missing}'],
    ['chat', '--message', 'Hi', '--model', '{missing}'], ['embed', 'Hi', '--model', '{missing}'],
    ['graph', '{missing}', '-o', 'g.dot'], ['convert', '{missing_dir}', 'out.gguf'],
    ['bench', 'gguf', '--model', '{missing}'],
])
def test_a_wrong_path_is_one_line_and_a_failure_status(tmp_path, argv):
    missing = tmp_path / 'no-such-model.gguf'
    argv = [a.format(missing=missing, missing_dir=tmp_path / 'no-such-folder') for a in argv]
    out = gadget(*argv, cwd=tmp_path)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'gadget {argv[0]}'), out.stderr
    assert 'no-such' in lines[0] and 'Traceback' not in out.stderr


def test_a_file_that_is_not_gguf_is_one_line(tmp_path):
    bad = tmp_path / 'bad.gguf'
    bad.write_bytes(b'GGUF\x03\x00\x00\x00' + b'\xff' * 40)
    for argv in (['inspect', str(bad)], ['inspect', str(bad), '--json'], ['graph', str(bad), '-o', 'g.dot']):
        out = gadget(*argv, cwd=tmp_path)
        assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert out.stdout == ''


def test_info_names_the_build():
    out = gadget('info')
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith('gadget ') and 'GGML' in out.stdout and 'devices: ' in out.stdout
    assert 'CPU' in out.stdout


def test_inspect_json_has_every_field_and_tensor(model):
    out = gadget('inspect', model, '--json')
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    with GgufFile.from_path(model) as gguf:
        assert set(doc['fields']) == set(gguf.fields)
        assert doc['fields']['general.architecture'] == {'type': 'STRING', 'value': 'llama'}
        tokens = doc['fields']['tokenizer.ggml.tokens']
        assert tokens['type'] == 'ARRAY[STRING]'
        assert tokens['value'] == list(gguf.get_field('tokenizer.ggml.tokens'))
        assert [t['name'] for t in doc['tensors']] == list(gguf.tensors)
        first = doc['tensors'][0]
        t = gguf.tensors[first['name']]
        assert first['shape'] == list(t.shape) and first['nbytes'] == t.nbytes
        assert first['offset'] == gguf.tensor_file_offset(t.name)
    assert doc['version'] == 3


def test_embed_json_is_one_document():
    out = gadget('embed', 'A cat sits on the mat.', 'Dogs run in the park.', '--json')
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc['texts'] == ['A cat sits on the mat.', 'Dogs run in the park.']
    assert doc['dimensions'] == 384 and doc['pooling'] == 'mean' and doc['normalized'] is True
    vectors = np.array(doc['embeddings'])
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    both = gadget('embed', 'x', '--json', '-o', 'v.npy')
    assert both.returncode == 1 and '--json and --output' in both.stderr


def test_generate_with_the_shrek_sampler_is_seeded(model):
    argv = ['generate', 'Once upon a time', '--model', model, '--sampler', 'shrek', '--seed', '5', '-n', '20',
            '--context', '256']
    a, b = gadget(*argv), gadget(*argv)
    assert a.returncode == 0 and a.stdout == b.stdout, a.stderr
    assert a.stdout.startswith('Once upon a time') and len(a.stdout.split()) > 8
    c = gadget(*[('6' if a == '5' else a) for a in argv])
    assert c.returncode == 0 and c.stdout != a.stdout
    for bad, message in ((['--temperature', '0'], 'temperature'),
                         (['--repetition-penalty', '1.1'], '--repetition-penalty')):
        out = gadget(*argv, *bad)
        assert out.returncode == 1 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_generate_several_prompts_decodes_them_together(model):
    out = gadget('generate', 'The capital of France is', 'Water boils at', '--model', model, '-n', '8',
                 '--temperature', '0', '--context', '256')
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith('The capital of France is Paris') and '\n\nWater boils at' in out.stdout
    shrek = gadget('generate', 'a', 'b', '--model', model, '--sampler', 'shrek')
    assert shrek.returncode == 1 and 'one prompt at a time' in shrek.stderr
    assert len(shrek.stderr.strip().splitlines()) == 1


def test_chat_with_the_shrek_sampler(model):
    out = gadget('chat', '--model', model, '--sampler', 'shrek', '--seed', '2', '--message', 'Name a colour.',
                 '-n', '16', '--context', '512')
    assert out.returncode == 0 and out.stdout.strip(), out.stderr


def test_graph_writes_ggml_dot(model, tmp_path):
    out = gadget('graph', model, '-o', 'g.dot', '--layers', '1', cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / 'g.dot').read_text()
    assert text.startswith('digraph G {') and text.rstrip().endswith('}')
    for node in ('inp_embd', 'attn_norm0', 'attn0_fa', 'ffn0_out', 'result_output'):
        assert f'label="{node} (' in text, node
    assert 'attn_norm1' not in text and '1 layer' in out.stderr
    assert gadget('graph', model, '-o', 'g.txt', cwd=tmp_path).returncode == 1


@pytest.mark.skipif(shutil.which('dot') is None, reason="Graphviz's dot is not installed")
def test_graph_renders_svg_with_graphviz(model, tmp_path):
    out = gadget('graph', model, '-o', 'g.svg', cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    svg = (tmp_path / 'g.svg').read_text()
    assert '<svg' in svg and 'attn_norm1' in svg and 'attn_norm2' not in svg   # the default: 2 layers


def test_graph_without_graphviz_says_how_to_get_it(model, tmp_path):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))   # no dot on this PATH
    if shutil.which('dot', path=env['PATH']):
        pytest.skip('dot is installed next to python')
    out = gadget('graph', model, '-o', 'g.svg', env=env, cwd=tmp_path)
    assert out.returncode == 1 and not (tmp_path / 'g.svg').exists()
    assert 'install Graphviz' in out.stderr and '-o g.dot' in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_graph_dot_of_a_compute_graph(tmp_path):
    from gadget import ggml as G
    from gadget.compute import GgmlCompute

    def model(ctx, params, tensors):
        x, w = tensors['x', 'w']
        return G.ggml_mul_mat(ctx, w, x, name='product')

    with GgmlCompute(dict(), dict(x=('F32', (4, 3)), w=('F32', (4, 5))), model) as c:
        path = c.graph_dot(tmp_path / 'small.dot')
        assert 'label="product (f32)|' in path.read_text()
        with pytest.raises(OSError, match='no-such-dir'):
            c.graph_dot(tmp_path / 'no-such-dir' / 'x.dot')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['small.dot']       # no temporary left behind
