"""What the benchmark suites share: medians, alternating runs, one process per library, the peers
(the libraries compared against, when installed), machine information and markdown tables."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from tqdm import tqdm

__all__ = ['QUICK_NOTE', 'Peer', 'find_peer', 'median', 'time_median', 'alternate', 'progress_bar',
           'in_subprocess', 'machine_info', 'numpy_blas', 'describe_machine', 'markdown_table', 'number',
           'plural', 'ratio']

T = TypeVar('T')

QUICK_NOTE = ('quick run (--quick): small sizes and 1-2 repeats, a smoke test: '
              'these figures are not representative')


def median(values: Iterable[float]) -> float:
    """The median of ``values`` (at least one)."""
    return statistics.median(list(values))


def time_median(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn``, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times)


def progress_bar(total: int, desc: str, enabled: bool = True) -> tqdm:
    """A tqdm bar on stderr for one suite's steps; shown only when stderr is a terminal (and
    ``enabled``), so logs and pipes stay clean."""
    return tqdm(total=total, desc=desc, unit='run', file=sys.stderr, leave=False,
                disable=None if enabled else True)


def alternate(runners: Mapping[str, Callable[[], T]], rounds: int,
              bar: tqdm | None = None) -> dict[str, list[T]]:
    """Call every runner once per round, in turn, for ``rounds`` rounds: the libraries compared
    see the same machine state (a slower minute of a shared machine hits all of them alike).

    Returns each runner's results in round order, by name; ``bar`` (if given) advances once per call.
    """
    results: dict[str, list[T]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            if bar is not None:
                bar.set_postfix_str(name, refresh=False)
            results[name].append(fn())
            if bar is not None:
                bar.update()
    return results


@dataclass(frozen=True)
class Peer:
    """A library gadget is compared against, and whether it can be used here.

    ``version`` is its installed version (None when absent); ``reason`` says why it is absent and
    how to install it.
    """

    name: str
    install: str
    version: str | None = None
    reason: str | None = None

    @property
    def present(self) -> bool:
        """Whether the peer is installed (and, for in-process peers, imports)."""
        return self.reason is None

    def as_dict(self) -> dict[str, Any]:
        """The peer as plain data, with ``present``."""
        return {**asdict(self), 'present': self.present}

    def describe(self) -> str:
        """``name version``, or ``name: why it is absent``."""
        return f'{self.name} {self.version}' if self.present else f'{self.name}: {self.reason}'


def find_peer(name: str, modules: Sequence[str], distribution: str, install: str,
              import_first: bool = False) -> Peer:
    """Look for a peer without importing it (``import_first``: import its first module, for peers
    that run in this process, so a broken installation is reported here and not half-way through).

    Arguments:
        name: the name printed, e.g. ``'llama-cpp-python'``.
        modules: the modules it needs, e.g. ``('sentence_transformers', 'torch')``.
        distribution: the package whose version is reported.
        install: the command that installs it, printed when it is absent.
    """
    for module in modules:
        if importlib.util.find_spec(module) is None:
            return Peer(name, install, reason=f'not installed: {install}')
    if import_first:
        try:
            importlib.import_module(modules[0])
        except (ImportError, OSError, RuntimeError) as exc:   # installed but broken (e.g. its C library
            # does not load): reported, and the suite goes on without it
            return Peer(name, install, reason=f'cannot be imported ({exc}): {install}')
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        version = 'unknown version'
    return Peer(name, install, version=version)


_CHILD = 'from gadget.bench.common import _child; _child()'


def in_subprocess(target: str, kwargs: Mapping[str, Any], env: Mapping[str, str] | None = None,
                  timeout: float | None = None) -> Any:
    """Call ``'package.module:function'`` with ``kwargs`` (JSON values) in a fresh interpreter and
    return its result (a JSON value).

    Libraries measured one after another must not share a process: OpenMP and BLAS thread pools
    (torch's, GGML's, OpenBLAS's) keep spinning for a while after their work and slow whatever runs
    next. The child imports the same gadget as this process; ``env`` adds environment variables.
    Raises RuntimeError with the child's last line of stderr when it fails.
    """
    with tempfile.TemporaryDirectory(prefix='gadget-bench-') as tmp:
        out = Path(tmp) / 'result.json'
        child_env = {**os.environ, **(env or {})}
        root = str(Path(__file__).resolve().parents[2])          # the folder holding this gadget
        child_env['PYTHONPATH'] = os.pathsep.join(p for p in (root, os.environ.get('PYTHONPATH')) if p)
        request = json.dumps({'target': target, 'kwargs': dict(kwargs), 'out': str(out)})
        # cwd: an empty folder, so that no other `gadget` folder where the user stands is imported.
        proc = subprocess.run([sys.executable, '-c', _CHILD], input=request, text=True, cwd=tmp,
                              env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=timeout)
        if proc.returncode != 0 or not out.exists():
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            raise RuntimeError(f'{target} failed in its own process (exit status {proc.returncode}): '
                               f'{lines[-1] if lines else "no message"}')
        return json.loads(out.read_text())


def _child() -> None:
    """The child side of :func:`in_subprocess`: the request comes on stdin."""
    request = json.loads(sys.stdin.read())
    module, function = request['target'].split(':')
    result = getattr(importlib.import_module(module), function)(**request['kwargs'])
    Path(request['out']).write_text(json.dumps(result))


def _cpu_name() -> str:
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numpy_blas() -> str | None:
    """The BLAS numpy was built with (e.g. ``'scipy-openblas 0.3.31'``), when numpy says."""
    import numpy as np

    try:
        blas = np.show_config(mode='dicts')['Build Dependencies']['blas']
    except (TypeError, KeyError):       # a numpy that cannot say
        return None
    return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()


def machine_info() -> dict[str, Any]:
    """The machine and software the figures come from: CPU, cores, OS, Python, numpy and its BLAS,
    gadget, GGML and the CPU features GGML sees."""
    import numpy as np

    from .. import __version__
    from ..ggml import API, ffi, lib

    usable = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    features = [name[len('ggml_cpu_has_'):] for name in sorted(API['functions'])
                if name.startswith('ggml_cpu_has_') and getattr(lib, name)()]
    return {'cpu': _cpu_name(), 'cores': os.cpu_count(), 'usable_cores': usable,
            'os': platform.platform(), 'python': platform.python_version(), 'numpy': np.__version__,
            'blas': numpy_blas(), 'openblas_coretype': os.environ.get('OPENBLAS_CORETYPE'),
            'gadget': __version__, 'ggml': ffi.string(lib.ggml_version()).decode(),
            'cpu_features': features, 'date': time.strftime('%Y-%m-%d %H:%M')}


def describe_machine(info: Mapping[str, Any]) -> str:
    """One line from :func:`machine_info`."""
    return (f"machine: {info['cpu']}, {info['usable_cores']} of {info['cores']} cores usable; {info['os']}; "
            f"Python {info['python']}, numpy {info['numpy']} ({info['blas'] or 'BLAS unknown'}); "
            f"gadget {info['gadget']}, GGML {info['ggml']}; {info['date']}")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table, as ``benchmarks/RESULTS.md`` has them."""
    def line(cells: Sequence[str]) -> str:
        return '|' + '|'.join(f' {cell} ' if cell else ' ' for cell in cells) + '|'

    return '\n'.join([line(header), '|' + '---|' * len(header), *(line(row) for row in rows)])


def number(value: float | None, digits: int = 1) -> str:
    """``value`` with ``digits`` decimals and thousands separators; ``'—'`` for None."""
    return '—' if value is None else f'{value:,.{digits}f}'


def plural(n: int, word: str) -> str:
    """``'1 thread'``, ``'2 threads'``."""
    return f'{n} {word}' if n == 1 else f'{n} {word}s'


def ratio(value: float | None, digits: int = 2) -> str:
    """``'1.11×'``; ``'—'`` for None."""
    return '—' if value is None else f'{value:.{digits}f}×'
