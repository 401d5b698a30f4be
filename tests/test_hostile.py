"""Hostile use above the op layer: bad parameters, full contexts, failed chat turns, threads, use
after close, GGUF strings and links, command-line mistakes. Each must raise a clear exception (or
behave correctly) and lose nothing; the cases that could crash run in their own process."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gadget import ClosedError, ContextOverflowError, GgufError
from gadget.gguf import GgufFile
from gadget.sampling import SamplingParams
from gadget.textgen import TextChat, TextGen, default_model_path


@pytest.fixture(scope='module')
def gen():
    with TextGen(default_model_path(), context_length=64, batch_size=32) as g:
        yield g


def run_isolated(code: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (a crash there cannot take the test run with it)."""
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


# --- sampling parameters ---------------------------------------------------------------------------

@pytest.mark.parametrize('kwargs, name', [
    (dict(temperature=math.nan), 'temperature'), (dict(temperature=-0.1), 'temperature'),
    (dict(temperature=math.inf), 'temperature'), (dict(repetition_penalty=math.nan), 'repetition_penalty'),
    (dict(top_p=math.nan), 'top_p'), (dict(min_p=-1), 'min_p'), (dict(top_k=2.5), 'top_k'),
    (dict(top_k=True), 'top_k'), (dict(temperature='hot'), 'temperature'),
])
def test_bad_sampling_settings_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=f'^{name} must be'):
        SamplingParams(**kwargs)


def test_bad_generation_arguments_raise_before_anything_is_generated(gen):
    with pytest.raises(ValueError, match='repetition_penalty must be'):
        gen.stream('Hello', repetition_penalty=math.nan)
    with pytest.raises(ValueError, match='seed must be'):
        gen.generate('Hello', seed=-3)
    with pytest.raises(ValueError, match='max_gen must be'):
        gen.generate('Hello', max_gen=2.5)
    with pytest.raises(TypeError, match="unknown sampling arguments: \\['temprature'\\]"):
        gen.generate('Hello', temprature=0.5)
    with pytest.raises(TypeError, match='stop must be a list of strings'):
        gen.generate('Hello', stop='.', max_gen=2)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(temperature=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3)),
       top_k=st.one_of(st.integers(-5, 100), st.floats(allow_nan=True)),
       top_p=st.floats(allow_nan=True, allow_infinity=True),
       min_p=st.floats(allow_nan=True, allow_infinity=True),
       penalty=st.floats(allow_nan=True, allow_infinity=True),
       max_gen=st.integers(-2, 3),
       prompt=st.text(max_size=40))
def test_random_settings_give_a_result_or_a_named_error(gen, temperature, top_k, top_p, min_p, penalty,
                                                        max_gen, prompt):
    kwargs = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                  repetition_penalty=penalty)
    try:
        text = gen.generate(prompt, max_gen=max_gen, seed=1, **kwargs)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        names = ('temperature', 'top_k', 'top_p', 'min_p', 'repetition_penalty', 'max_gen', 'prompt',
                 'Unicode', 'context')
        assert any(name in message for name in names), message
    else:
        assert isinstance(text, str)


# --- prompts and the context -----------------------------------------------------------------------

def test_an_empty_prompt_and_a_lone_surrogate_are_refused_clearly(gen):
    with pytest.raises(ValueError, match='the prompt is empty'):
        gen.generate('', max_gen=3)
    with pytest.raises(ValueError, match='not valid Unicode.*index 6'):
        gen.generate('Hello \udc80 world', max_gen=3)
    assert gen.generate('The capital of France is', max_gen=2, temperature=0)   # still usable


def test_generation_stops_at_the_end_of_the_context_and_keeps_the_text(gen):
    prompt = 'Once upon a time, ' * 6
    n_prompt = len(gen.tokenize(prompt))
    text = gen.generate(prompt, max_gen=500, temperature=0)
    assert gen.finish_reason == 'length'
    assert text and gen.model.n_past == 64                  # the whole context was used
    assert len(gen.tokenize(text)) >= 64 - n_prompt - 2
    with pytest.raises(ContextOverflowError, match='exceed context_length \\(64\\)'):
        gen.generate('word ' * 100, max_gen=2)               # only a prompt that does not fit raises
    assert gen.generate('The capital of France is', max_gen=3, temperature=0).startswith(' Paris')
    assert gen.finish_reason == 'length'
    gen.generate('The capital of France is', max_gen=50, temperature=0, stop=['.'])
    assert gen.finish_reason == 'stop'


def test_a_failed_chat_turn_leaves_the_conversation_as_it_was():
    with TextChat(default_model_path(), system='Be brief.', context_length=96, batch_size=32) as chat:
        chat.generate_chat('Hi!', max_gen=8, temperature=0)
        before = [dict(m) for m in chat.messages]
        with pytest.raises(ContextOverflowError):
            chat.generate_chat('tell me ' * 80, max_gen=4)
        assert chat.messages == before
        with pytest.raises(ValueError, match='temperature'):
            chat.generate_chat('And again?', temperature=math.nan)
        assert chat.messages == before
        # an exception in the middle of the stream
        stream = chat.stream_chat('Name a colour.', max_gen=20, temperature=0)
        next(stream)
        with pytest.raises(RuntimeError, match='boom'):
            stream.throw(RuntimeError('boom'))
        assert chat.messages == before
        reply = chat.generate_chat('Name a colour.', max_gen=8, temperature=0)
        assert reply and [m['role'] for m in chat.messages][-2:] == ['user', 'assistant']


def test_a_stream_still_running_blocks_other_generation_clearly(gen):
    stream = gen.stream('Once upon a time', max_gen=10, temperature=0)
    next(stream)
    with pytest.raises(RuntimeError, match='is generating'):
        gen.generate('Hello', max_gen=2)
    stream.close()
    assert gen.generate('Hello', max_gen=2, temperature=0) is not None


# --- closed objects and threads ----------------------------------------------------------------------

def test_use_after_close_says_closed():
    g = TextGen(default_model_path(), context_length=32)
    g.close()
    with pytest.raises(ClosedError, match='is closed'):
        g.generate('Hello', max_gen=2)
    with pytest.raises(ClosedError, match='is closed'):
        g.model([1, 2])
    g.close()                                                # idempotent


def test_one_model_from_four_threads_gives_the_sequential_results():
    proc = run_isolated('''
        import threading, numpy as np
        from gadget.models import LlamaModel
        from gadget.textgen import default_model_path
        model = LlamaModel.from_path(default_model_path(), context_length=64, batch_size=16)
        prompts = [[1, 2, 3, 4], [5, 6, 7], [8, 9], [10, 11, 12, 13, 14]]
        def run(p):
            model.reset()
            return model(p)
        expected = [run(p) for p in prompts]
        results, errors = {}, []
        def worker(i):
            try:
                for _ in range(25):
                    with model.lock:              # reset + call as one unit, as TextGen does
                        out = run(prompts[i])
                    assert np.allclose(out, expected[i], atol=1e-4), i
                results[i] = True
            except Exception as exc:
                errors.append(repr(exc))
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        [t.start() for t in threads]; [t.join() for t in threads]
        print('OK' if not errors and len(results) == 4 else errors)
    ''')
    assert proc.returncode == 0 and proc.stdout.strip() == 'OK', (proc.stdout, proc.stderr[-2000:])


def test_close_while_another_thread_computes_neither_crashes_nor_hangs():
    proc = run_isolated('''
        import threading
        from gadget import ClosedError
        from gadget.models import LlamaModel
        from gadget.textgen import default_model_path
        model = LlamaModel.from_path(default_model_path(), context_length=512, batch_size=256)
        outcome = []
        def work():
            try:
                for _ in range(20):
                    model.reset()
                    model(list(range(1, 200)))
                outcome.append('finished')
            except ClosedError as exc:
                outcome.append('closed')
        t = threading.Thread(target=work)
        t.start()
        import time; time.sleep(0.3)
        model.close()
        t.join(60)
        print(outcome[0] if outcome else 'hung')
    ''')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() in ('closed', 'finished'), proc.stdout


# --- GGUF strings and links ---------------------------------------------------------------------------

def test_gguf_strings_that_cannot_be_written_are_refused_at_set_field(tmp_path):
    f = GgufFile()
    with pytest.raises(GgufError, match="field 'general.name': not valid UTF-8"):
        f.set_field('general.name', 'bad \udc80 name')
    with pytest.raises(GgufError, match="item 1: not valid UTF-8"):
        f.set_field('tokenizer.ggml.tokens', ['a', '\ud800', 'c'])
    with pytest.raises(GgufError, match='not valid UTF-8'):
        f.set_field('key\udc80', 1)
    f.set_field('general.name', 'fine')
    f.save(tmp_path / 'ok.gguf')
    with GgufFile.from_path(tmp_path / 'ok.gguf') as back:
        assert back.fields['general.name'] == 'fine'


def test_saving_over_a_symlink_writes_through_to_its_target(tmp_path):
    target = tmp_path / 'models' / 'real.gguf'
    target.parent.mkdir()
    target.write_bytes(b'old')
    link = tmp_path / 'current.gguf'
    link.symlink_to(target)
    f = GgufFile()
    f.set_field('general.name', 'new')
    f.save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    with GgufFile.from_path(target) as back:
        assert back.fields['general.name'] == 'new'


# --- the command line -----------------------------------------------------------------------------------

@pytest.mark.parametrize('argv, words', [
    (['generate', 'hi', '-m', '/nonexistent/model.gguf'], 'No such file'),
    (['generate', 'hi', '-m', '/'], 'Is a directory'),
    (['generate', 'hi', '--temperature', 'nan', '-n', '2'], 'temperature must be'),
    (['generate', 'hi', '--top-p', '7', '-n', '2'], 'top_p must be'),
    (['generate', 'hi', '--backend', 'tpu', '-n', '2'], "unknown backend 'tpu'"),
    (['generate', 'hi', '--context', '0'], '--context: 0 must be a positive integer'),
    (['generate', 'hi', '--threads', '0'], '--threads: 0 must be a positive integer'),
    (['chat', '--message', 'hi', '--temperature', '-1'], 'temperature must be'),
])
def test_command_line_mistakes_are_one_line_errors(argv, words, tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'gadget', *argv], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode in (1, 2), proc
    assert words in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr


def test_a_file_that_is_not_a_model_is_a_one_line_error(tmp_path):
    bogus = tmp_path / 'notes.gguf'
    bogus.write_text('hello')
    proc = subprocess.run([sys.executable, '-m', 'gadget', 'generate', 'hi', '-m', str(bogus)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and 'not a GGUF file' in proc.stderr and 'Traceback' not in proc.stderr
    out = GgufFile()
    out.set_field('general.architecture', 'qwen3')
    out.set_tensor('w', np.zeros(4, np.float32))
    out.save(tmp_path / 'qwen.gguf')
    qwen = str(tmp_path / 'qwen.gguf')
    proc = subprocess.run([sys.executable, '-m', 'gadget', 'generate', 'hi', '-m', qwen],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "'qwen3' is not supported" in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_cpu_graph_compute_with_null_arguments_raises_instead_of_crashing():
    proc = run_isolated('''
        from gadget import GgmlOpError
        from gadget import ggml as G
        from gadget.ggml import ffi
        for args in [(ffi.NULL, ffi.NULL, 1), (None, None, 1)]:
            try:
                G.ggml_graph_compute_with_ctx(*args)
            except GgmlOpError as exc:
                assert 'is NULL' in str(exc), exc
            else:
                raise SystemExit('accepted a NULL graph')
        print('OK')
    ''')
    assert proc.returncode == 0 and proc.stdout.strip() == 'OK', proc.stderr[-2000:]


def test_a_plain_model_called_from_four_threads_gives_the_right_results():
    proc = run_isolated('''
        import threading, numpy as np
        from gadget import GgmlModel, Input, Tensor
        from gadget.ggml import ggml_mul_mat
        class Linear(GgmlModel):
            weight: Tensor('F32', ('n_in', 'n_out'))
            inputs: Input('F32', ('n_in', 'batch'))
            def forward(self):
                return ggml_mul_mat(self.ctx_graph, *self.tensors['weight', 'inputs'])
        rng = np.random.default_rng(0)
        w = rng.standard_normal((32, 256)).astype(np.float32)
        model = Linear.from_values(dict(weight=w), n_in=256, n_out=32, batch=8)
        xs = [rng.standard_normal((8, 256)).astype(np.float32) for _ in range(4)]
        wrong = []
        def worker(i):
            for _ in range(100):
                if not np.allclose(model(inputs=xs[i]), xs[i] @ w.T, atol=1e-3):
                    wrong.append(i)
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        [t.start() for t in threads]; [t.join() for t in threads]
        print(len(wrong))
    ''')
    assert proc.returncode == 0 and proc.stdout.strip() == '0', (proc.stdout, proc.stderr[-2000:])


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path):
    from gadget import ModelFileError
    from test_model_files import write_llama
    tokens = [f'<t{i}>' for i in range(100)]          # 100 tokens for an embedding of 48 rows
    path = write_llama(tmp_path / 'tok.gguf', fields={
        'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.tokens': tokens, 'tokenizer.ggml.merges': []})
    expected = 'the tokenizer has 100 tokens but the model.s embedding has 48 rows'
    with pytest.raises(ModelFileError, match=expected):
        TextGen(path)
