"""Tokenizers for gadget's front ends: Hugging Face ``tokenizers`` models and Jinja chat templates.

:class:`Tokenizer` wraps a ``tokenizers.Tokenizer`` (the Rust library transformers itself runs)
with the model's special tokens and chat template. It comes from

* a GGUF file's own metadata (:meth:`Tokenizer.from_gguf`): the vocabulary, merges, token types and
  special token ids that llama.cpp's converters write, assembled into the same ``tokenizers``
  pipeline that transformers builds from a GGUF (byte-level BPE for ``gpt2`` vocabularies,
  SentencePiece-style BPE for ``llama`` ones), so the tokens are transformers' tokens;
* a folder with a ``tokenizer.json`` (:meth:`Tokenizer.from_folder`), as transformers saves one;
* a Hugging Face id, through transformers when it is installed (the only path that needs it).

Building from a GGUF reads the whole vocabulary; the result is saved once in a cache folder
(``$GADGET_CACHE`` or ``~/.cache/gadget/tokenizers``, keyed by the file's identity) in
transformers' folder layout, and loaded from there (about 0.1 s) afterwards. Chat templates render
with Jinja in the environment transformers uses (sandboxed, ``trim_blocks``, ``lstrip_blocks``,
``loopcontrols``, ``raise_exception``, ``strftime_now``, a ``tojson`` that keeps non-ASCII text).
gadget never splits text into tokens itself.

A :class:`Tokenizer` is safe to use from several threads (``tokenizers`` is; the template is
compiled once and rendering keeps no state).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from .gguf import keys as K
__all__ = ['Tokenizer', 'load_tokenizer', 'cache_dir', 'eog_token_ids']

# Token texts that end a generation in the chat formats in common use (llama.cpp marks the same
# kinds of tokens as end-of-generation).
_EOG_TEXTS = {'<|endoftext|>', '<|im_end|>', '<|eot_id|>', '<|eom_id|>', '<|end|>', '<end_of_turn>',
              '</s>', '<|end_of_text|>', '<|return|>', '<|call|>', '<EOT>', '<|END_OF_TURN_TOKEN|>'}

#: The named special tokens a template sees, with the GGUF keys of their ids.
SPECIAL_TOKEN_KEYS = {'bos_token': K.BOS_ID, 'eos_token': K.EOS_ID,
                      'unk_token': K.UNK_ID,
                      'pad_token': K.PAD_ID}

# llama.cpp's token types (tokenizer.ggml.token_type).
_CONTROL, _USER_DEFINED = 3, 4

# Pre-tokenizer splits by ``tokenizer.ggml.pre``: the regular expressions these vocabularies' merges
# were learned with (llama.cpp selects them by the same names; transformers applies the same ones).
# A name not listed gets GPT-2's byte-level split.
_SPLIT_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLIT_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLIT_QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
                 r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_UPPER, _LOWER = r'[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]', r'[\p{Ll}\p{Lm}\p{Lo}\p{M}]'
_SPLIT_TEKKEN = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*"
                 r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
_SPLIT_GPT4O = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTIONS}"
                rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTIONS}"
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(['llama3', 'llama-v3', 'llama-bpe', 'falcon3', 'falcon-h1', 'pixtral', 'midm-2.0', 'lfm2',
                     'jina-v5-nano', 'dbrx', 'smaug-bpe'], _SPLIT_LLAMA3),
    **dict.fromkeys(['qwen2', 'deepseek-r1-qwen', 'kormo', 'f2llmv2', 'megrez'], _SPLIT_QWEN2),
    'qwen35': _SPLIT_QWEN35,
    'tekken': _SPLIT_TEKKEN,
    **dict.fromkeys(['gpt-4o', 'llama4', 'kanana2', 'talkie', 'minimax-m2'], _SPLIT_GPT4O),
}


def cache_dir() -> Path:
    """Where gadget caches derived files (tokenizers, the default model)."""
    root = os.environ.get('GADGET_CACHE')
    return Path(root) if root else Path.home() / '.cache' / 'gadget'


@lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte-level alphabet: every byte as one printable character (printable Latin-1 bytes
    stand for themselves, the others for the code points from 256 up, in byte order)."""
    keep = [*range(ord('!'), ord('~') + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b) if b in keep else chr(next(extra)) for b in range(256)}


class Tokenizer:
    """A ``tokenizers.Tokenizer`` with the model's named special tokens and chat template.

    Arguments:
        backend: the ``tokenizers.Tokenizer`` (its post-processor adds BOS/EOS where the model wants them).
        special_tokens: ``{'bos_token': '<s>', 'eos_token': ..., 'unk_token': ..., 'pad_token': ...}``
            (texts; missing or None where the model has none).
        chat_template: the Jinja chat template, or None.
    """

    def __init__(self, backend: Any, special_tokens: Mapping[str, str | None] | None = None,
                 chat_template: str | None = None):
        self.backend = backend
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        self.chat_template = chat_template

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, gguf: Any) -> 'Tokenizer':
        """Build the tokenizer a GGUF file describes (``gguf``: a :class:`~gadget.gguf.GgufFile`)."""
        return _from_gguf_fields(gguf.fields, str(getattr(gguf, 'path', None) or 'the GGUF file'))

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> 'Tokenizer':
        """Load ``tokenizer.json`` (+ ``tokenizer_config.json``, ``chat_template.jinja``) from a folder
        as transformers saves it."""
        from tokenizers import Tokenizer as Backend

        folder = Path(folder)
        if not (folder / 'tokenizer.json').is_file():
            raise FileNotFoundError(f'{folder} has no tokenizer.json: pass a folder saved by transformers '
                                    '(save_pretrained) or by Tokenizer.save')
        backend = Backend.from_file(str(folder / 'tokenizer.json'))
        config_path = folder / 'tokenizer_config.json'
        config = json.loads(config_path.read_text(encoding='utf-8')) if config_path.is_file() else {}
        special = {}
        for name in SPECIAL_TOKEN_KEYS:
            value = config.get(name)
            special[name] = value.get('content') if isinstance(value, dict) else value
        template = None
        if (folder / 'chat_template.jinja').is_file():
            template = (folder / 'chat_template.jinja').read_text(encoding='utf-8')
        elif (folder / 'chat_template.json').is_file():
            saved = json.loads((folder / 'chat_template.json').read_text(encoding='utf-8'))
            template = saved.get('chat_template')
        else:
            template = config.get('chat_template')
        if isinstance(template, list):   # named templates: the default one
            template = next((t['template'] for t in template if t.get('name') == 'default'), None)
        return cls(backend, special, template)

    def save(self, folder: str | os.PathLike) -> None:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``chat_template.jinja`` (the layout
        transformers reads, so ``AutoTokenizer.from_pretrained(folder)`` loads it too)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(folder / 'tokenizer.json'))
        config = {'tokenizer_class': 'TokenizersBackend', 'backend': 'tokenizers', **self.special_tokens}
        (folder / 'tokenizer_config.json').write_text(json.dumps(config, indent=2, ensure_ascii=False) + '\n',
                                                      encoding='utf-8')
        if self.chat_template is not None:
            (folder / 'chat_template.jinja').write_text(self.chat_template, encoding='utf-8')

    # --- tokens ---------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` adds BOS/EOS where the model expects them."""
        if not isinstance(text, str):
            raise TypeError(f'text must be a str, got {type(text).__name__}')
        try:
            text.encode('utf-8')
        except UnicodeEncodeError as exc:
            raise ValueError(f'text is not valid Unicode: {exc.reason} at index {exc.start} '
                             f'({text[exc.start:exc.end]!r}); decode your input with errors="replace"'
                             ) from None
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of token ids (special tokens left out unless ``skip_special_tokens=False``)."""
        ids = [int(i) for i in ids]
        n = self.vocab_size
        bad = next((i for i in ids if not 0 <= i < n), None)
        if bad is not None:
            raise ValueError(f'token id {bad} is out of range: the vocabulary has {n} tokens (0..{n - 1})')
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        """Tokens in the vocabulary, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        """``token -> id`` of every token, added tokens included."""
        return self.backend.get_vocab(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        """The id of a token's text, or None."""
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """The text of a token id, or None."""
        return self.backend.id_to_token(int(token_id))

    def _special_id(self, name: str) -> int | None:
        text = self.special_tokens.get(name)
        return None if text is None else self.backend.token_to_id(text)

    @property
    def bos_token_id(self) -> int | None:
        """The id of the beginning-of-sequence token, or None."""
        return self._special_id('bos_token')

    @property
    def eos_token_id(self) -> int | None:
        """The id of the end-of-sequence token, or None."""
        return self._special_id('eos_token')

    # --- chat -----------------------------------------------------------------------------------

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                            **kwargs: Any) -> str:
        """Render ``messages`` (``[{'role': ..., 'content': ...}, ...]``) with the chat template, as
        transformers' ``apply_chat_template(..., tokenize=False)`` does; ``kwargs`` (``tools=``,
        ``documents=``, template variables) go to the template."""
        if self.chat_template is None:
            raise ValueError('this tokenizer has no chat template: pass model_id= of a tokenizer with one')
        if not messages:
            raise ValueError('messages is empty: a chat needs at least one message')
        for message in messages:
            if not isinstance(message, Mapping):
                raise TypeError(f'each message must be a dict with role and content, got {message!r}')
        variables = {'tools': None, 'documents': None, **self.special_tokens, **kwargs}
        return _compile_template(self.chat_template).render(
            messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt, **variables)


@lru_cache(maxsize=16)
def _compile_template(source: str) -> Any:
    import datetime

    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """``{% generation %}...{% endgeneration %}`` (marks assistant text for training masks):
        rendered as its body."""

        tags = {'generation'}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(['name:endgeneration'], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method('_body'), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        # Jinja's own tojson escapes HTML characters; templates expect plain JSON.
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, loopcontrols])
    env.filters['tojson'] = tojson
    env.globals['raise_exception'] = raise_exception
    env.globals['strftime_now'] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(source)


# --- from GGUF metadata ----------------------------------------------------------------------------

def _from_gguf_fields(fields: Mapping[str, Any], where: str) -> Tokenizer:
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, processors

    kind = fields.get(K.TOKENIZER_MODEL)
    if kind is None:
        raise ValueError(f'{where} has no tokenizer (no tokenizer.ggml.model): '
                         'pass model_id= with a tokenizer')
    if kind not in ('gpt2', 'llama', 'bert'):
        raise ValueError(f"{where}: tokenizer.ggml.model {kind!r} is not supported; supported: 'gpt2' "
                         "(byte-level BPE), 'llama' (SentencePiece BPE), 'bert' (WordPiece). "
                         'Pass model_id= with a tokenizer.json')
    tokens = fields.get(K.TOKENS)
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f'{where}: tokenizer.ggml.tokens must be a non-empty array of strings')
    n = len(tokens)
    types = _int_list(fields, K.TOKEN_TYPE, n, where)
    special = {}
    for name, key in SPECIAL_TOKEN_KEYS.items():
        token_id = fields.get(key)
        if token_id is None:
            continue
        if not isinstance(token_id, int) or not 0 <= token_id < n:
            raise ValueError(f'{where}: {key} = {token_id!r} is not a token id '
                             f'(the vocabulary has {n} tokens)')
        special[name] = tokens[token_id]
    add_bos = bool(fields.get(K.ADD_BOS, kind == 'llama'))
    add_eos = bool(fields.get(K.ADD_EOS, False))
    merges = fields.get(K.MERGES)
    if merges is not None and len(merges) == 0:
        merges = []     # an empty array has no element type to keep: it may come back numeric
    if merges:
        if not isinstance(merges, list) or not all(isinstance(m, str) and m.count(' ') == 1 for m in merges):
            raise ValueError(f"{where}: tokenizer.ggml.merges must be strings 'left right' (one space each)")
        merges = [tuple(m.split(' ')) for m in merges]

    if kind == 'gpt2':
        alphabet = _byte_alphabet()
        letters = set(alphabet.values())
        spelled = [t if set(t) <= letters else ''.join(alphabet[b] for b in t.encode('utf-8'))
                   for t in tokens]
        vocab = {t: i for i, t in enumerate(spelled)}
        backend = Backend(models.BPE(vocab=vocab, merges=merges or [], dropout=None,
                                     continuing_subword_prefix='', end_of_word_suffix='', fuse_unk=False))
        split = PRE_TOKENIZER_SPLITS.get(fields.get(K.TOKENIZER_PRE, ''))
        if split is None:
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        else:
            from tokenizers import Regex
            backend.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(split), behavior='isolated'),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        backend.decoder = decoders.ByteLevel()
        usable = letters
    elif kind == 'bert':
        backend = _wordpiece(tokens, types, fields, where)
        vocab = backend.get_vocab()
        spelled = [_wordpiece_spelling(t, k) for t, k in zip(tokens, types)]
        usable = None
    else:
        vocab = {t: i for i, t in enumerate(tokens)}
        if merges is None:
            scores = fields.get(K.SCORES)
            if scores is None or len(scores) != n:
                raise ValueError(f'{where}: a llama vocabulary without merges needs tokenizer.ggml.scores '
                                 f'({n} values)')
            merges = _merges_from_scores(tokens, [float(s) for s in scores])
        backend = Backend(models.BPE(vocab=vocab, merges=merges, dropout=None, fuse_unk=True,
                                     byte_fallback=True))
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement='\u2581', prepend_scheme='first',
                                                         split=False)
        backend.decoder = decoders.Sequence([decoders.Replace('\u2581', ' '), decoders.ByteFallback(),
                                             decoders.Fuse(), decoders.Strip(content=' ', left=1)])
        usable = None
    spelling = {t: (spelled[i] if kind in ('gpt2', 'bert') else t) for i, t in enumerate(tokens)}

    # Control tokens (<|im_end|>) are special: matched whole and left out of decoded text; user-defined
    # ones (<think>) are matched whole. In a byte-level vocabulary a control token spelled outside the
    # byte alphabet is a converter's mislabel and stays an ordinary token.
    control = [t for t, k in zip(tokens, types) if k == _CONTROL and (usable is None or set(t) <= usable)]
    named = [t for t in special.values() if t not in control and (usable is None or set(t) <= usable)]
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in [*control, *named]])
    user = [t for t, k in zip(tokens, types) if k == _USER_DEFINED and spelling[t] == t]
    if user:
        backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])

    bos, eos = special.get('bos_token'), special.get('eos_token')
    prefix = [bos] if add_bos and bos is not None else []
    suffix = [eos] if add_eos and eos is not None else []

    def sequence(piece: str, type_id: int, first: bool = True) -> str:
        return ' '.join([*(f'{t}:{type_id}' for t in prefix if first), f'{piece}:{type_id}',
                         *(f'{t}:{type_id}' for t in suffix)])

    # BERT pairs are [CLS] A [SEP] B [SEP]: the second text has no [CLS] of its own.
    backend.post_processor = processors.TemplateProcessing(
        single=sequence('$A', 0), pair=f"{sequence('$A', 0)} {sequence('$B', 1, first=kind != 'bert')}",
        special_tokens=[(t, vocab[spelling[t]]) for t in dict.fromkeys(prefix + suffix)])
    template = fields.get(K.CHAT_TEMPLATE)
    return Tokenizer(backend, special, template if isinstance(template, str) else None)


def _wordpiece_spelling(token: str, token_type: int) -> str:
    """A llama.cpp BERT token back in WordPiece's spelling: control tokens as they are, a word start
    without its ``▁``, a continuation with ``##``."""
    if token_type == _CONTROL:
        return token
    return token[1:] if token.startswith('\u2581') else '##' + token


def _wordpiece(tokens: list[str], types: list[int], fields: Mapping[str, Any], where: str) -> Any:
    """The WordPiece pipeline transformers' BertTokenizerFast runs: BERT's normalizer (lower-casing,
    and then accent stripping, when the file says so), its pre-tokenizer, WordPiece with ``##``."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    vocab: dict[str, int] = {}
    for i, (token, token_type) in enumerate(zip(tokens, types)):
        vocab.setdefault(_wordpiece_spelling(token, token_type), i)
    unk_id = fields.get(K.UNK_ID)
    if not isinstance(unk_id, int) or not 0 <= unk_id < len(tokens):
        raise ValueError(f'{where}: a bert vocabulary needs {K.UNK_ID} (the id of [UNK]), got {unk_id!r}')
    lowercase = fields.get(K.LOWERCASE)
    if lowercase is None:
        # Files without the flag (older llama.cpp converters): an uncased vocabulary has next to no
        # upper-case word pieces (a few symbols such as 'ℝ'), a cased one thousands.
        upper = sum(any(c.isupper() for c in t) for t, k in zip(tokens, types) if k != _CONTROL)
        lowercase = upper <= len(tokens) // 1000
    backend = Backend(models.WordPiece(vocab, unk_token=tokens[unk_id], continuing_subword_prefix='##',
                                       max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=bool(lowercase))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix='##', cleanup=True)
    return backend


def _int_list(fields: Mapping[str, Any], key: str, n: int, where: str) -> list[int]:
    values = fields.get(key)
    if values is None:
        return [1] * n                      # all normal
    values = [int(v) for v in values]
    if len(values) != n:
        raise ValueError(f'{where}: {key} has {len(values)} entries for {n} tokens')
    return values


def _merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: every split of a token into two tokens of
    the vocabulary, best-scored merged token first (ties: shorter left piece, then shorter right)."""
    index = {t: i for i, t in enumerate(tokens)}
    found = []
    for token, score in zip(tokens, scores):
        pairs = [(token[:k], token[k:]) for k in range(1, len(token))
                 if token[:k] in index and token[k:] in index]
        pairs.sort(key=lambda p: (index[p[0]], index[p[1]]))
        found += [(score, left, right) for left, right in pairs]
    found.sort(key=lambda m: (m[0], len(m[1]), len(m[2])), reverse=True)
    return [(left, right) for _, left, right in found]


# --- loading with a cache --------------------------------------------------------------------------

def _file_key(path: Path) -> str:
    stat = path.stat()
    ident = f'{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}'.encode()
    return hashlib.sha256(ident).hexdigest()[:24]


# Bumped whenever the tokenizer built from a GGUF changes, so older cache entries are not reused.
_CACHE_VERSION = 'v2'


def load_tokenizer(gguf_path: str | os.PathLike | None = None, model_id: str | os.PathLike | None = None,
                   use_cache: bool = True, gguf: Any = None) -> Tokenizer:
    """A :class:`Tokenizer`: from ``model_id`` (a folder with ``tokenizer.json``, or a Hugging Face id,
    which needs transformers) when given, else built from the GGUF file's metadata (``gguf``, an open
    :class:`~gadget.gguf.GgufFile`, saves reopening it) and cached."""
    if model_id is not None:
        folder = Path(model_id)
        if folder.is_dir():
            return Tokenizer.from_folder(folder)
        return _from_transformers(str(model_id))
    if gguf_path is None:
        raise ValueError('load_tokenizer needs a GGUF path or a model_id')
    path = Path(gguf_path)
    target = cache_dir() / 'tokenizers' / f'{_file_key(path)}-{_CACHE_VERSION}'
    if use_cache and (target / 'tokenizer.json').exists():
        try:
            return Tokenizer.from_folder(target)
        except Exception:   # a damaged cache entry is rebuilt, never trusted
            shutil.rmtree(target, ignore_errors=True)
    if gguf is None:
        from .gguf import GgufFile
        with GgufFile.from_path(path) as opened:
            tokenizer = Tokenizer.from_gguf(opened)
    else:
        tokenizer = Tokenizer.from_gguf(gguf)
    if use_cache:
        # Written to a private folder and renamed, so a concurrent or interrupted save never leaves
        # a half-written tokenizer where the next load would find it.
        tmp = target.with_name(target.name + f'.tmp{os.getpid()}')
        try:
            tokenizer.save(tmp)
            os.replace(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # read-only home or a concurrent save: no cache
    return tokenizer


def _from_transformers(model_id: str) -> Tokenizer:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ImportError(f'model_id={model_id!r} is not a local folder; loading a Hugging Face id needs '
                          'transformers: pip install transformers') from None
    hf = AutoTokenizer.from_pretrained(model_id)
    backend = getattr(hf, 'backend_tokenizer', None)
    if backend is None:
        raise ValueError(f'{model_id}: transformers has no fast (tokenizers) tokenizer for this model')
    special = {name: getattr(hf, name, None) for name in SPECIAL_TOKEN_KEYS}
    return Tokenizer(backend, {k: str(v) if v is not None else None for k, v in special.items()},
                     getattr(hf, 'chat_template', None))


def eog_token_ids(tokenizer: Tokenizer, gguf: Any = None) -> set[int]:
    """Every token id that ends a generation: the tokenizer's EOS, the GGUF file's EOS/EOT/EOM ids,
    and special tokens whose text marks an end of turn."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if gguf is not None:
        for key in (K.EOS_ID, K.EOT_ID,
                    K.EOM_ID):
            value = gguf.get_field(key, None)
            if value is not None:
                ids.add(int(value))
    for text in _EOG_TEXTS:
        token_id = tokenizer.token_to_id(text)
        if token_id is not None:
            ids.add(int(token_id))
    return ids

