"""The ``gadget`` command (``python -m gadget``)."""

from __future__ import annotations

import argparse
import sys
from typing import Callable


def _info(_args: argparse.Namespace) -> int:
    from . import __version__
    from ._ffi import MODULES
    from .ggml import API, ffi, lib

    features = [name[len('ggml_cpu_has_'):] for name in sorted(API['functions'])
                if name.startswith('ggml_cpu_has_') and getattr(lib, name)()]
    devices = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        devices.append(f"{ffi.string(lib.ggml_backend_dev_name(dev)).decode()} "
                       f"({ffi.string(lib.ggml_backend_dev_description(dev)).decode()})")
    print(f'gadget {__version__}, GGML {ffi.string(lib.ggml_version()).decode()} '
          f'({ffi.string(lib.ggml_commit()).decode()})')
    print(f"bound functions: {len(API['functions'])}, guarded against aborts: "
          f"{sum(f['guarded'] for f in API['functions'].values())}")
    print('devices: ' + ', '.join(devices))
    print('backends: ' + (', '.join(f'{group} ({name})' for group, name in MODULES.items()) if MODULES
                          else 'linked in (a native build)'))
    print('CPU features: ' + ' '.join(features))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .errors import GgufError
    from .gguf import GgufFile

    try:
        with GgufFile.from_path(args.file) as gguf:
            print(gguf.describe(max_items=args.items))
    except (GgufError, OSError) as exc:
        print(f'gadget inspect: {exc}', file=sys.stderr)
        return 1
    return 0


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', '-m', help='GGUF file (default: SmolLM2-135M-Instruct Q4_1)')
    parser.add_argument('--tokenizer', help='folder with a tokenizer.json, or a Hugging Face id '
                        '(needs transformers); default: from the GGUF')
    parser.add_argument('--max-gen', '-n', type=int, default=128, help='tokens to generate at most')
    parser.add_argument('--temperature', '-t', type=float, default=0.7, help='0 = greedy')
    parser.add_argument('--top-k', type=int, default=0)
    parser.add_argument('--top-p', type=float, default=1.0)
    parser.add_argument('--min-p', type=float, default=0.0)
    parser.add_argument('--repetition-penalty', type=float, default=1.0)
    parser.add_argument('--seed', type=int, default=None)
    parser.add_argument('--threads', type=_positive_int, default=None,
                        help='CPU threads (default: all cores)')
    parser.add_argument('--context', type=_positive_int, default=None, help='context length (KV cache size)')
    parser.add_argument('--backend', default='cpu', help="'cpu' or 'cuda[:N]'")


def _sampling_args(args: argparse.Namespace) -> dict:
    return dict(max_gen=args.max_gen, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed)


def _model_kwargs(args: argparse.Namespace) -> dict:
    kwargs = dict(backend=args.backend, n_threads=args.threads)
    if args.context is not None:
        kwargs['context_length'] = args.context
    return kwargs


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f'{value} must be a positive integer')
    return value


Command = Callable[[argparse.Namespace], int]


def _user_errors(command: str, run: Command) -> Command:
    """Run a command, turning what a user got wrong (a missing or broken file, a bad value, an
    unknown backend) into one line on stderr and exit status 1, not a traceback."""
    def guarded(args: argparse.Namespace) -> int:
        from .errors import GadgetError
        try:
            return run(args)
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 130
        except (GadgetError, OSError, ValueError, TypeError, ImportError, RuntimeError) as exc:
            print(f'gadget {command}: error: {exc}', file=sys.stderr)
            return 1
    return guarded


def _generate(args: argparse.Namespace) -> int:
    from .textgen import TextGen

    with TextGen(args.model, args.tokenizer, **_model_kwargs(args)) as gen:
        chunks = gen.stream(args.prompt, stop=args.stop or (), **_sampling_args(args))   # checks first
        print(args.prompt, end='', flush=True)
        for chunk in chunks:
            print(chunk, end='', flush=True)
        print()
    return 0


def _chat(args: argparse.Namespace) -> int:
    from .textgen import TextChat

    with TextChat(args.model, args.tokenizer, system=args.system, **_model_kwargs(args)) as chat:
        prompts = [args.message] if args.message else None
        while True:
            if prompts is not None:
                if not prompts:
                    return 0
                text = prompts.pop(0)
            else:
                try:
                    text = input('> ')
                except EOFError:
                    print()
                    return 0
                if text.strip() in ('/exit', '/quit'):
                    return 0
                if text.strip() == '/reset':
                    chat.reset()
                    continue
            for chunk in chat.stream_chat(text, **_sampling_args(args)):
                print(chunk, end='', flush=True)
            print()


def _convert(args: argparse.Namespace) -> int:
    import logging

    from .convert import convert

    logging.basicConfig(level=logging.INFO, format='%(levelname)s: %(message)s')
    try:
        path = convert(args.source, args.output, outtype=args.outtype, progress=not args.quiet,
                       name=args.name)
    except (OSError, ValueError, ImportError) as exc:
        print(f'gadget convert: error: {exc}', file=sys.stderr)
        return 1
    print(f'wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)')
    return 0


def _embed(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from .embed import EmbedNumpy

    texts = list(args.texts)
    if args.file is not None:
        stream = sys.stdin if args.file == '-' else open(args.file, encoding='utf-8')
        with stream:
            texts += [line.rstrip('\n') for line in stream]
    elif not texts and not sys.stdin.isatty():
        texts = [line.rstrip('\n') for line in sys.stdin]
    if not texts:
        raise ValueError('no texts: give them as arguments, with --file FILE (one per line), or on stdin')
    kwargs = dict(model_id=args.tokenizer, pooling=args.pooling, normalize=not args.no_normalize,
                  batch_size=args.batch_size, max_length=args.max_length, truncate=not args.no_truncate,
                  weight_type=args.weight_type, backend=args.backend, n_threads=args.threads)
    with EmbedNumpy(args.model, **kwargs) as embedder:
        vectors = embedder.embed(texts, progress=len(texts) >= 100 and not args.quiet)
    if args.pooling == 'none':
        if args.output:
            raise ValueError('--pooling none gives one array per text: write them as JSON lines '
                             '(no --output)')
        for text, v in zip(texts, vectors):
            print(json.dumps({'text': text, 'tokens': v.tolist()}, ensure_ascii=False))
        return 0
    if args.output:
        np.save(args.output, vectors)
        print(f'wrote {args.output}: {vectors.shape[0]} vectors of {vectors.shape[1]} float32',
              file=sys.stderr)
        return 0
    for text, v in zip(texts, vectors):
        print(json.dumps({'text': text, 'embedding': v.tolist()}, ensure_ascii=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='gadget', description='Build and run GGML models.')
    commands = parser.add_subparsers(dest='command', required=True)
    commands.add_parser('info', help='versions, devices and CPU features of this build').set_defaults(
        run=_info)
    inspect = commands.add_parser('inspect', help='print the fields and tensor table of a GGUF file')
    inspect.add_argument('file', help='path of a .gguf file')
    inspect.add_argument('--items', type=int, default=8, help='array items shown before abbreviating')
    inspect.set_defaults(run=_inspect)
    generate = commands.add_parser('generate', help='continue a prompt with a language model')
    generate.add_argument('prompt', help='the text to continue')
    generate.add_argument('--stop', action='append', help='stop string (repeatable)')
    _add_model_args(generate)
    generate.set_defaults(run=_user_errors('generate', _generate))
    chat = commands.add_parser('chat', help='chat with a model (interactive, or one --message)')
    chat.add_argument('--system', help='system prompt')
    chat.add_argument('--message', help='one message, then exit')
    _add_model_args(chat)
    chat.set_defaults(run=_user_errors('chat', _chat), max_gen=512)
    embed = commands.add_parser(
        'embed', help='embed texts with a BERT model (default all-MiniLM-L6-v2)',
        description='Embed texts: one vector per text, as .npy (--output) or JSON lines on stdout.',
        epilog='examples:\n  gadget embed "A cat sits on the mat." "Dogs run in the park."\n'
               '  gadget embed --file sentences.txt -o vectors.npy\n'
               '  cat sentences.txt | gadget embed > vectors.jsonl',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    embed.add_argument('texts', nargs='*', help='texts to embed (or --file, or stdin)')
    embed.add_argument('--file', '-f', help="a file with one text per line ('-': stdin)")
    embed.add_argument('--output', '-o', help='write the vectors to this .npy file instead of JSON lines')
    embed.add_argument('--model', '-m', help='GGUF file of a BERT model (default: all-MiniLM-L6-v2, F32)')
    embed.add_argument('--tokenizer', help='folder with a tokenizer.json (and sentence_bert_config.json); '
                       'default: from the GGUF')
    embed.add_argument('--pooling', choices=['mean', 'cls', 'last', 'none'], default=None,
                       help="default: the model's (mean for sentence-transformers models)")
    embed.add_argument('--no-normalize', action='store_true', help='do not L2-normalise the vectors')
    embed.add_argument('--max-length', type=_positive_int, default=None, help='tokens kept per text')
    embed.add_argument('--no-truncate', action='store_true', help='refuse texts longer than --max-length')
    embed.add_argument('--batch-size', type=_positive_int, default=None,
                       help='tokens per batch (default 2048)')
    embed.add_argument('--weight-type', type=str.upper, choices=['F32', 'F16', 'BF16', 'Q8_0'], default=None,
                       help='convert the matrices when loading (BF16: fastest with AVX-512 BF16)')
    embed.add_argument('--threads', type=_positive_int, default=None, help='CPU threads (default: all cores)')
    embed.add_argument('--backend', default='cpu', help="'cpu' or 'cuda[:N]'")
    embed.add_argument('--quiet', '-q', action='store_true', help='no progress bar')
    embed.set_defaults(run=_user_errors('embed', _embed))
    convert = commands.add_parser('convert', help='Hugging Face checkpoint (Llama, BERT) -> GGUF')
    convert.add_argument('source', help='folder with config.json, *.safetensors and the tokenizer')
    convert.add_argument('output', help='GGUF file to write')
    convert.add_argument('--outtype', default='F16', type=str.upper, choices=['F32', 'F16', 'BF16', 'Q8_0'],
                         help='type of the 2-D weights (default F16; 1-D tensors stay F32)')
    convert.add_argument('--name', default=None, help='general.name (default: the folder name)')
    convert.add_argument('--quiet', action='store_true', help='no progress bar')
    convert.set_defaults(run=_convert)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == '__main__':
    sys.exit(main())
