"""Benchmarks of gadget against the libraries it replaces, runnable from an installed package.

One module per suite, each with ``run(...)`` returning plain dicts and lists of numbers (what
``gadget bench --json`` prints) and ``report(result)`` returning the markdown tables of
``benchmarks/RESULTS.md``:

* :mod:`gadget.bench.textgen`: load, prefill and decode speed, against llama-cpp-python;
* :mod:`gadget.bench.embed`: texts/s and fidelity, against sentence-transformers and
  llama-cpp-python, one process per library;
* :mod:`gadget.bench.ops`: op-call overhead and matmul GFLOPS, against numpy;
* :mod:`gadget.bench.gguf`: opening a GGUF file, against gguf-py's ``GGUFReader``.

:mod:`gadget.bench.common` holds what they share, :mod:`gadget.bench.cli` the ``gadget bench``
command. This package is a front end: it imports from gadget, and nothing in gadget imports it.
The scripts in the repository's ``benchmarks/`` folder are thin wrappers over these modules.
"""

SUITES = ('textgen', 'embed', 'ops', 'gguf')

__all__ = ['SUITES']
