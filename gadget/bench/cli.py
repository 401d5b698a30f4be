"""The ``gadget bench`` command: the benchmark suites of :mod:`gadget.bench` from an installed package,
with the peers that are installed, as markdown tables or one JSON document."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from . import SUITES

__all__ = ['add_parser', 'run']

DESCRIPTION = """\
Benchmark gadget against the libraries it replaces, on this machine, in one run:

  textgen  load, prefill and decode speed of a GGUF language model (default SmolLM2-135M Q4_1),
           against llama-cpp-python
  embed    texts/s and fidelity of an embedding model (default all-MiniLM-L6-v2), F32 and BF16,
           against sentence-transformers and llama-cpp-python, one process per library
  ops      op-call overhead and matmul GFLOPS (F32, F16, BF16, Q8_0, Q4_0), against numpy
  gguf     opening a GGUF file and listing it, against gguf-py's GGUFReader

A peer that is not installed is reported as absent (with how to install it) and gadget's side still
runs. The libraries alternate within each suite, so all see the same machine state; figures are
medians. Compare ratios within one run: a shared or busy machine moves the absolute figures."""

EPILOG = """\
examples:
  gadget bench                          every suite, against the peers installed
  gadget bench --quick                  a smoke test in well under a minute (figures not representative)
  gadget bench ops gguf --repeats 7
  gadget bench textgen --threads 4 --model model.Q4_0.gguf
  gadget bench embed --embed-model path/to/sentence-transformers-folder
  gadget bench --json > bench.json      one JSON document: machine, settings, and per suite its rows and peers

peers: pip install llama-cpp-python (builds from source), pip install sentence-transformers,
pip install gguf; numpy is always there."""

# What each suite repeats by default, and in --quick.
DEFAULT_REPEATS = {'textgen': 5, 'embed': 5, 'ops': 15, 'gguf': 7}


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand to the ``gadget`` command's subparsers; its ``run`` default is
    :func:`run`."""
    parser = commands.add_parser(
        'bench', help='benchmark gadget against llama-cpp-python, sentence-transformers, numpy, gguf-py',
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('suites', nargs='*', metavar='SUITE',
                        help=f"the suites to run, of {', '.join(SUITES)} (default: all)")
    parser.add_argument('--repeats', '--rounds', type=int, default=None, metavar='N', dest='repeats',
                        help='alternating rounds (textgen, embed) or timed runs (ops, gguf); default: '
                        + ', '.join(f'{k} {v}' for k, v in DEFAULT_REPEATS.items()))
    parser.add_argument('--threads', type=int, default=None, metavar='N',
                        help='CPU threads for every library (default: the usable cores, '
                        f'{_usable_cores()} here)')
    parser.add_argument('--quick', action='store_true',
                        help='small sizes and 1-2 repeats: a smoke test, not representative figures')
    parser.add_argument('--json', action='store_true',
                        help='print one JSON document on stdout instead of the tables')
    parser.add_argument('--model', '-m', metavar='GGUF',
                        help='language model for textgen and gguf (default: SmolLM2-135M-Instruct Q4_1)')
    parser.add_argument('--embed-model', metavar='PATH',
                        help='embedding model for embed: a sentence-transformers folder (converted to F32 '
                        'GGUF; sentence-transformers runs on the folder) or a GGUF file (then without '
                        'sentence-transformers); default: all-MiniLM-L6-v2')
    parser.add_argument('--quiet', '-q', action='store_true', help='no progress bars')
    parser.set_defaults(run=run)


def _check(args: argparse.Namespace) -> list[str]:
    """The suites asked for, after checking what a user can get wrong (ValueError saying what)."""
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite {unknown[0]!r}: choose from {', '.join(SUITES)}")
    for option, value in (('--repeats', args.repeats), ('--threads', args.threads)):
        if value is not None and value < 1:
            raise ValueError(f'{option} must be a positive integer, not {value}')
    if args.model is not None and not Path(args.model).is_file():
        raise ValueError(f'--model: no such file: {args.model}')
    if args.embed_model is not None and not Path(args.embed_model).exists():
        raise ValueError(f'--embed-model: no such file or folder: {args.embed_model}')
    return list(dict.fromkeys(args.suites)) or list(SUITES)


def _run_suite(name: str, args: argparse.Namespace, threads: int) -> tuple[dict[str, Any], str]:
    """Run one suite with the command's settings; return its result and its markdown report."""
    from importlib import import_module

    suite = import_module(f'.{name}', __package__)
    repeats = 'rounds' if name == 'embed' else 'repeats'      # embed's rounds are its repeats
    kwargs: dict[str, Any] = dict(suite.QUICK) if args.quick else {repeats: DEFAULT_REPEATS[name]}
    if args.repeats is not None:
        kwargs[repeats] = args.repeats
    if name in ('textgen', 'gguf'):
        kwargs['path'] = args.model
    elif name == 'embed':
        kwargs['model'] = args.embed_model
    if name != 'gguf':
        kwargs['threads'] = threads
    result = suite.run(progress=not args.quiet, **kwargs)
    return result, suite.report(result)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send whatever the suites' libraries print (from Python or from C) to stderr, so that stdout
    carries only the JSON document."""
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        fd = None                       # not a real file (captured): Python's prints only
    saved = os.dup(fd) if fd is not None else None
    try:
        if fd is not None:
            os.dup2(sys.stderr.fileno(), fd)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved is not None and fd is not None:
            os.dup2(saved, fd)
            os.close(saved)


def _bench(args: argparse.Namespace) -> int:
    from .common import QUICK_NOTE, describe_machine, machine_info, plural

    suites = _check(args)
    threads = args.threads or _usable_cores()
    info = machine_info()
    if args.json:
        results = {}
        with _stdout_to_stderr():
            for name in suites:
                results[name], _ = _run_suite(name, args, threads)
        document = {'gadget': info['gadget'], 'quick': args.quick, 'note': QUICK_NOTE if args.quick else None,
                    'machine': info,
                    'settings': {'suites': suites, 'threads': threads, 'repeats': args.repeats,
                                 'quick': args.quick, 'model': args.model, 'embed_model': args.embed_model},
                    'suites': results}
        print(json.dumps(document, indent=2))
        return 0
    print('# gadget bench\n')
    if args.quick:
        print(f'**{QUICK_NOTE[0].upper() + QUICK_NOTE[1:]}.**\n')
    print(describe_machine(info) + f'; {plural(threads, "thread")}', flush=True)
    for name in suites:
        result, text = _run_suite(name, args, threads)
        quick = ' (quick, not representative)' if args.quick else ''
        print(f"\n## {result['title']} — `gadget bench {name}`{quick}\n\n{text}", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``gadget bench`` with parsed arguments; return the exit status. What a user can get
    wrong (an unknown suite, a missing model file, a model gadget cannot load) is one line on
    stderr and status 1, not a traceback."""
    from ..errors import GadgetError

    try:
        return _bench(args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except (GadgetError, OSError, ValueError, RuntimeError, ImportError) as exc:
        message = ' '.join(str(exc).split()) or type(exc).__name__
        print(f'gadget bench: error: {message}', file=sys.stderr)
        return 1
