"""The ``gadget`` command (``python -m gadget``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable


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
    from .gguf import GgufFile

    with GgufFile.from_path(args.file) as gguf:
        if not args.json:
            print(gguf.describe(max_items=args.items))
            return 0
        import json
        document = dict(
            path=str(gguf.path), version=gguf.version, alignment=gguf.alignment,
            fields={name: dict(type=_field_type(gguf, name), value=_jsonable(gguf.get_field(name)))
                    for name in gguf.fields},
            tensors=[dict(name=t.name, type=t.type.name, shape=list(t.shape), nbytes=t.nbytes,
                          offset=gguf.tensor_file_offset(t.name)) for t in gguf.tensors.values()])
        json.dump(document, sys.stdout, ensure_ascii=False)
        print()
    return 0


def _field_type(gguf: Any, name: str) -> str:
    kind = gguf.get_field_type(name).name
    element = gguf.get_field_element_type(name)
    return f'{kind}[{element.name}]' if element is not None else kind


def _jsonable(value: Any) -> Any:
    """A GGUF value as JSON: numpy arrays as lists; NaN and infinities (JSON has none) as strings."""
    import math

    import numpy as np

    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--model', '-m', help='GGUF file (default: SmolLM2-135M-Instruct Q4_1)')
    parser.add_argument('--tokenizer', help='folder with a tokenizer.json, or a Hugging Face id '
                        '(needs transformers); default: from the GGUF')
    parser.add_argument('--max-gen', '-n', type=int, default=128, help='tokens to generate at most')
    parser.add_argument('--sampler', choices=['default', 'shrek'], default='default',
                        help="'shrek': entropy-aware sampling (gadget.shrek), which adjusts the settings "
                        'below at every token from the model\'s uncertainty')
    parser.add_argument('--temperature', '-t', type=float, default=None,
                        help='0 = greedy (default 0.7; shrek: 0.666, > 0)')
    parser.add_argument('--top-k', type=int, default=None, help='0 = off (default 0; shrek: 27, >= 1)')
    parser.add_argument('--top-p', type=float, default=None, help='1 = off (default 1; shrek: 0.9)')
    parser.add_argument('--min-p', type=float, default=None, help='0 = off (default 0)')
    parser.add_argument('--repetition-penalty', type=float, default=None, help='1 = off (default; not shrek)')
    parser.add_argument('--seed', type=int, default=None, help='the same seed gives the same text')
    parser.add_argument('--threads', type=_positive_int, default=None,
                        help='CPU threads (default: the physical cores this process may use)')
    parser.add_argument('--context', type=_positive_int, default=None, help='context length (KV cache size)')
    parser.add_argument('--backend', default='cpu', type=_backend_arg,
                        help="'cpu', 'cuda[:N]' or 'rpc://host:port'; several, separated by commas, "
                        'split the layers over them')
    parser.add_argument('--layer-split', type=_fractions, default=None,
                        help='with several backends: their shares of the layers, e.g. 0.6,0.4 (default even)')
    _add_blas_arg(parser)


def _add_blas_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--blas', action=argparse.BooleanOptionalAction, default=None,
                        help='matrix products of >= 32 rows through GGML\'s BLAS backend (OpenBLAS); '
                        'default: on where the build has it (not GADGET_BLAS=0), --no-blas to turn it off')


_SAMPLING = ('temperature', 'top_k', 'top_p', 'min_p', 'repetition_penalty')


def _sampling_args(args: argparse.Namespace) -> dict:
    """The sampling keywords given on the command line (the front end's defaults for the rest)."""
    kwargs = {k: getattr(args, k) for k in _SAMPLING if getattr(args, k) is not None}
    if args.sampler == 'shrek' and 'repetition_penalty' in kwargs:
        raise ValueError('--repetition-penalty does not apply to --sampler shrek')
    return dict(kwargs, max_gen=args.max_gen, seed=args.seed)


def _model_kwargs(args: argparse.Namespace) -> dict:
    kwargs = dict(backend=args.backend, n_threads=args.threads, blas=args.blas)
    if args.layer_split is not None:
        kwargs['layer_split'] = args.layer_split
    if args.context is not None:
        kwargs['context_length'] = args.context
    return kwargs


def _backend_arg(text: str) -> str | list[str]:
    """``--backend``: one name, or several separated by commas (a model split over them)."""
    names = [n.strip() for n in text.split(',')]
    if not all(names):
        raise argparse.ArgumentTypeError(f'{text!r}: expected a backend name, or names separated by '
                                         'commas (e.g. rpc://10.0.0.2:50052,rpc://10.0.0.3:50052)')
    return names if len(names) > 1 else names[0]


def _fractions(text: str) -> list[float]:
    try:
        return [float(f) for f in text.split(',')]
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r}: expected fractions separated by commas, '
                                         'e.g. 0.6,0.4') from None


def _rpc_server(args: argparse.Namespace) -> int:
    import os
    import socket
    import threading

    from . import rpc
    from .backends import default_threads, local_device

    device = local_device(args.device)
    if not rpc.is_loopback(args.host):
        print(f'gadget rpc-server: warning: serving on {args.host}, not loopback. GGML\'s RPC protocol has '
              'no authentication and no encryption: anyone who reaches this port can run code on this '
              'machine\'s device and read its memory there. Use a private network or a tunnel only.',
              file=sys.stderr)
    # GGML only says "Failed to create server socket": find out why first, with the reason.
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((args.host, args.port))
    except OSError as exc:
        raise OSError(exc.errno, f'cannot listen on {args.host}:{args.port}: {exc.strerror}') from None
    if args.cache:
        os.makedirs(args.cache, exist_ok=True)
    threads = args.threads or default_threads()
    print(f'gadget rpc-server: serving {args.device} on {args.host}:{args.port} with {threads} threads '
          f'(GGML RPC protocol {".".join(map(str, rpc.PROTOCOL))}); Ctrl-C stops it', flush=True)
    server = threading.Thread(target=rpc.serve, args=(args.host, args.port, device, threads, args.cache),
                              daemon=True)
    server.start()
    while server.is_alive():
        server.join(0.5)
    raise RuntimeError(f'GGML\'s RPC server on {args.host}:{args.port} stopped (see its messages above)')


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f'{value} is not a port (1 to 65535)')
    return value


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
        except BrokenPipeError:     # the reader went away (`gadget inspect ... | head`): stop quietly
            import os
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        except (GadgetError, OSError, ValueError, TypeError, ImportError, RuntimeError) as exc:
            print(f'gadget {command}: error: {exc}', file=sys.stderr)
            return 1
    return guarded


def _generate(args: argparse.Namespace) -> int:
    from .shrek import ShrekGen
    from .textgen import TextGen

    front: type[TextGen] = ShrekGen if args.sampler == 'shrek' else TextGen
    if len(args.prompt) > 1 and front is ShrekGen:
        raise ValueError('--sampler shrek generates one prompt at a time: give one prompt')
    with front(args.model, args.tokenizer, **_model_kwargs(args)) as gen:
        if len(args.prompt) > 1:
            # several prompts decode together; each is printed whole, in order, a blank line apart
            texts = gen.generate_batch(args.prompt, stop=args.stop or (), **_sampling_args(args))
            print('\n\n'.join(p + t for p, t in zip(args.prompt, texts)))
            return 0
        chunks = gen.stream(args.prompt[0], stop=args.stop or (), **_sampling_args(args))  # checks first
        print(args.prompt[0], end='', flush=True)
        for chunk in chunks:
            print(chunk, end='', flush=True)
        print()
    return 0


def _chat(args: argparse.Namespace) -> int:
    from .shrek import ShrekChat
    from .textgen import TextChat

    front: type[TextChat] = ShrekChat if args.sampler == 'shrek' else TextChat
    with front(args.model, args.tokenizer, system=args.system, **_model_kwargs(args)) as chat:
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
                  weight_type=args.weight_type, backend=args.backend, n_threads=args.threads,
                  blas=args.blas)
    if args.json and args.output:
        raise ValueError('--json and --output both say where the vectors go: give one')
    with EmbedNumpy(args.model, **kwargs) as embedder:
        vectors = embedder.embed(texts, progress=len(texts) >= 100 and not args.quiet)
        pooling, normalized = embedder.pooling, embedder.normalize
        gguf = embedder.model.gguf
        model = str(gguf.path) if gguf is not None and gguf.path is not None else str(args.model)
    if args.pooling == 'none':
        if args.output:
            raise ValueError('--pooling none gives one array per text: write them as JSON lines '
                             '(no --output)')
        rows = [v.tolist() for v in vectors]
        if args.json:
            json.dump(dict(model=model, pooling='none', texts=texts, tokens=rows), sys.stdout,
                      ensure_ascii=False)
            print()
            return 0
        for text, row in zip(texts, rows):
            print(json.dumps({'text': text, 'tokens': row}, ensure_ascii=False))
        return 0
    if args.output:
        np.save(args.output, vectors)
        print(f'wrote {args.output}: {vectors.shape[0]} vectors of {vectors.shape[1]} float32',
              file=sys.stderr)
        return 0
    if args.json:
        json.dump(dict(model=model, dimensions=int(vectors.shape[1]), pooling=pooling, normalized=normalized,
                       texts=texts, embeddings=vectors.tolist()), sys.stdout, ensure_ascii=False)
        print()
        return 0
    for text, v in zip(texts, vectors):
        print(json.dumps({'text': text, 'embedding': v.tolist()}, ensure_ascii=False))
    return 0


def _graph(args: argparse.Namespace) -> int:
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    from .models import load_model

    output = Path(args.output)
    fmt = output.suffix.lower().lstrip('.')
    if fmt not in ('dot', 'gv') + _RENDERED:
        raise ValueError(f'-o {output}: the suffix names the format, one of .dot, .gv, '
                         f'{", ".join("." + f for f in _RENDERED)}')
    dot = shutil.which('dot')
    if fmt in _RENDERED and dot is None:
        raise RuntimeError(f"Graphviz's `dot` is needed to render .{fmt} and is not on PATH: install "
                           'Graphviz (apt install graphviz, brew install graphviz, conda install graphviz), '
                           f'or write the graph itself with -o {output.with_suffix(".dot")}')
    kwargs: dict[str, Any] = dict(context_length=args.context)
    if args.layers:
        kwargs['n_layer'] = args.layers
    with load_model(args.model, **kwargs) as model:
        n_layer = model.params.get('n_layer')
        model.ensure_graph()
        n_nodes = model.n_nodes()
        if fmt in _RENDERED:
            assert dot is not None        # (checked above, before the model loaded)
            with tempfile.TemporaryDirectory() as tmp:
                source = model.graph_dot(Path(tmp) / 'graph.dot')
                done = subprocess.run([dot, f'-T{fmt}', str(source), '-o', str(output)],
                                      capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f'dot failed ({done.returncode}): {done.stderr.strip()[-300:]}')
        else:
            model.graph_dot(output)
    layers = f', {n_layer} layer{"s" * (n_layer != 1)}' if n_layer is not None else ''
    print(f'wrote {output}: {type(model).__name__} graph, {n_nodes} nodes{layers} '
          f'(one {"token" if hasattr(model, "n_past") else "batch"}; shapes in ggml order)', file=sys.stderr)
    return 0


_RENDERED = ('svg', 'png', 'pdf')

_EXAMPLES = {
    'info': ['gadget info'],
    'inspect': ['gadget inspect model.gguf', 'gadget inspect model.gguf --items 20',
                "gadget inspect model.gguf --json | python -c \"import json,sys; "
                "print(json.load(sys.stdin)['fields']['general.architecture']['value'])\""],
    'generate': ['gadget generate "The capital of France is" --temperature 0 -n 16',
                 'gadget generate "Once upon a time" -n 64 --top-p 0.95 --seed 1 --stop "\\n\\n"',
                 'gadget generate "Once upon a time" --sampler shrek --seed 1',
                 'gadget generate "Hello" --model model.gguf --threads 4 --context 2048',
                 'gadget generate "The capital of France is" "Water boils at" -n 16 --temperature 0'],
    'chat': ['gadget chat                                  (interactive; /reset, /exit)',
             'gadget chat --message "Name three rivers." --system "Answer briefly."',
             'gadget chat --sampler shrek --seed 3 --message "Tell me a story."'],
    'embed': ['gadget embed "A cat sits on the mat." "Dogs run in the park."',
              'gadget embed --file sentences.txt -o vectors.npy',
              'cat sentences.txt | gadget embed > vectors.jsonl',
              'gadget embed "one text" --json'],
    'convert': ['gadget convert path/to/hf-checkpoint model.F16.gguf',
                'gadget convert path/to/all-MiniLM-L6-v2 minilm.F32.gguf --outtype F32'],
    'graph': ['gadget graph model.gguf -o graph.svg        (the first 2 layers; needs Graphviz)',
              'gadget graph model.gguf -o graph.dot --layers 0   (every layer, dot source only)'],
}


def _parser(commands: Any, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand's parser with its examples as the --help epilog."""
    epilog = 'examples:\n' + '\n'.join(f'  {line}' for line in _EXAMPLES[name]) if name in _EXAMPLES else None
    import textwrap

    description = textwrap.fill(description or help[0].upper() + help[1:] + '.', 100)
    return commands.add_parser(name, help=help, description=description,
                               epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)


def main(argv: list[str] | None = None) -> int:
    """The ``gadget`` command; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog='gadget',
        description='Build and run GGML models: generate text, chat, embed, inspect and convert\n'
                    'model files, draw a model\'s graph, benchmark against the peers.',
        epilog='examples:\n  gadget generate "The capital of France is" --temperature 0 -n 16\n'
               '  gadget embed "A cat sits on the mat." "Dogs run in the park."\n'
               '  gadget COMMAND --help      (each command\'s options and examples)',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    _parser(commands, 'info', 'versions, devices and CPU features of this build').set_defaults(run=_info)

    inspect = _parser(commands, 'inspect', 'print the fields and tensor table of a GGUF file')
    inspect.add_argument('file', help='path of a .gguf file')
    inspect.add_argument('--items', type=int, default=8, help='array items shown before abbreviating')
    inspect.add_argument('--json', action='store_true',
                         help='one JSON document: every field (type, full value) and tensor (type, '
                         'ggml-order shape, bytes, file offset)')
    inspect.set_defaults(run=_user_errors('inspect', _inspect))

    generate = _parser(commands, 'generate', 'continue a prompt with a language model')
    generate.add_argument('prompt', nargs='+', help='the text to continue; several prompts are decoded '
                          'together (printed whole, in order, a blank line apart)')
    generate.add_argument('--stop', action='append', help='stop string (repeatable)')
    _add_model_args(generate)
    generate.set_defaults(run=_user_errors('generate', _generate))

    chat = _parser(commands, 'chat', 'chat with a model (interactive, or one --message)')
    chat.add_argument('--system', help='system prompt')
    chat.add_argument('--message', help='one message, then exit')
    _add_model_args(chat)
    chat.set_defaults(run=_user_errors('chat', _chat), max_gen=512)

    embed = _parser(commands, 'embed', 'embed texts with a BERT model (default all-MiniLM-L6-v2)',
                    'Embed texts: one vector per text, as JSON lines on stdout (default), one JSON '
                    'document (--json) or .npy (--output).')
    embed.add_argument('texts', nargs='*', help='texts to embed (or --file, or stdin)')
    embed.add_argument('--file', '-f', help="a file with one text per line ('-': stdin)")
    embed.add_argument('--output', '-o', help='write the vectors to this .npy file instead of JSON lines')
    embed.add_argument('--json', action='store_true',
                       help='one JSON document {"model", "dimensions", "pooling", "normalized", "texts", '
                       '"embeddings"} instead of JSON lines')
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
    embed.add_argument('--threads', type=_positive_int, default=None,
                       help='CPU threads (default: the physical cores this process may use)')
    embed.add_argument('--backend', default='cpu', type=_backend_arg,
                       help="'cpu', 'cuda[:N]' or 'rpc://host:port'; several, separated by commas, split "
                       'the layers over them')
    _add_blas_arg(embed)
    embed.add_argument('--quiet', '-q', action='store_true', help='no progress bar')
    embed.set_defaults(run=_user_errors('embed', _embed))

    convert = _parser(commands, 'convert', 'convert a Hugging Face checkpoint (Llama, Mistral, BERT) to GGUF')
    convert.add_argument('source', help='folder with config.json, *.safetensors and the tokenizer')
    convert.add_argument('output', help='GGUF file to write')
    convert.add_argument('--outtype', default='F16', type=str.upper, choices=['F32', 'F16', 'BF16', 'Q8_0'],
                         help='type of the 2-D weights (default F16; 1-D tensors stay F32)')
    convert.add_argument('--name', default=None, help='general.name (default: the folder name)')
    convert.add_argument('--quiet', action='store_true', help='no progress bar')
    convert.set_defaults(run=_convert)

    graph = _parser(commands, 'graph', "draw a model's compute graph (GGML's dump, rendered by Graphviz)",
                    "Write a model's GGML compute graph: one box per node (name, type, shape in ggml order, "
                    'op), an edge per source. .dot/.gv is the dot source (no Graphviz needed); .svg, .png '
                    "and .pdf are rendered with Graphviz's dot.")
    graph.add_argument('model', help='GGUF file of a model gadget runs (see gadget inspect)')
    graph.add_argument('--output', '-o', default='graph.svg', help='file to write; its suffix is the format '
                       '(default graph.svg)')
    graph.add_argument('--layers', type=int, default=2,
                       help='build the model with only its first N layers, so the picture stays readable '
                       "(and Graphviz's layout fast); 0: every layer (default 2)")
    graph.add_argument('--context', type=_positive_int, default=256, help='context length (default 256)')
    graph.set_defaults(run=_user_errors('graph', _graph))

    server = _parser(commands, 'rpc-server', "serve this machine's CPU or GPU to other gadgets (GGML RPC)",
                     "Run GGML's RPC server: clients use this machine's device with "
                     "--backend rpc://HOST:PORT (or backend='rpc://HOST:PORT'). GGML's RPC protocol has no "
                     'authentication and no encryption: never expose the port to an untrusted network '
                     '(bind to loopback, the default, or a private interface, or tunnel).')
    server.add_argument('--host', default='127.0.0.1', help='address to listen on (default 127.0.0.1)')
    server.add_argument('--port', type=_port, default=50052, help='port (default 50052)')
    server.add_argument('--threads', type=_positive_int, default=None,
                        help='CPU threads (default: the physical cores this process may use)')
    server.add_argument('--device', default='cpu', help="the device to serve: 'cpu' (default) or 'cuda[:N]'")
    server.add_argument('--cache', default=None,
                        help='folder where the server keeps large tensors by hash, so a client loading the '
                        'same weights again sends only their hashes')
    server.set_defaults(run=_user_errors('rpc-server', _rpc_server))

    from .bench.cli import add_parser as add_bench
    add_bench(commands)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == '__main__':
    sys.exit(main())
