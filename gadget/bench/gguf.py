"""Open a GGUF file and list its fields and tensors: gadget's GgufFile against gguf-py's GGUFReader.

Both run in the same process on the same file (default: gadget's default text model,
SmolLM2-135M-Instruct Q4_1). gadget decodes values lazily, so a second figure also decodes every
field value (gguf-py parses everything on open).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..gguf import GgufFile
from .common import find_peer, markdown_table, number, plural, progress_bar, ratio, time_median

__all__ = ['QUICK', 'gadget_list', 'ggufpy_list', 'run', 'report']

# What --quick runs: small sizes, 1-2 repeats.
QUICK: dict[str, Any] = {'repeats': 1}


def gadget_list(path: str | os.PathLike, decode: bool) -> int:
    """Open ``path`` with :class:`GgufFile`, list every field and tensor name (and with ``decode``
    decode every field's value); return the number of names."""
    with GgufFile.from_path(path) as f:
        names = list(f.fields) + list(f.tensors)
        if decode:
            for name in f.fields:
                f.get_field(name)
        return len(names)


def ggufpy_list(path: str | os.PathLike) -> int:
    """The same with gguf-py's ``GGUFReader`` (which parses everything on open)."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return len(list(reader.fields)) + len([t.name for t in reader.tensors])


def run(path: str | os.PathLike | None = None, repeats: int = 7, progress: bool = True) -> dict[str, Any]:
    """Time opening and listing ``path`` (default: gadget's default text model) with gadget, with
    every value decoded, and with gguf-py when it is installed.

    Returns ``{'suite': 'gguf', 'settings', 'peers', 'file': {...}, 'rows': [{'name', 'library', 'ms'}],
    'ratios': {'list', 'decode_all'}}``; ``ms`` and the ratios (gguf-py / gadget) are None without gguf-py.
    """
    if path is None:
        from ..textgen import default_model_path
        path = default_model_path()
    path = Path(path)
    with GgufFile.from_path(path) as f:                 # also checks the file before anything is timed
        info = {'path': str(path), 'name': path.name, 'bytes': path.stat().st_size,
                'fields': len(f.fields), 'tensors': len(f.tensors)}
    peer = find_peer('gguf-py', ['gguf'], 'gguf', 'pip install gguf', import_first=True)
    bar = progress_bar(3 if peer.present else 2, 'gguf', progress)
    lazy = time_median(lambda: gadget_list(path, decode=False), repeats)
    bar.update()
    full = time_median(lambda: gadget_list(path, decode=True), repeats)
    bar.update()
    ref = None
    if peer.present:
        ref = time_median(lambda: ggufpy_list(path), repeats)
        bar.update()
    bar.close()
    rows = [{'name': 'gadget `GgufFile.from_path` + list', 'library': 'gadget', 'ms': lazy * 1e3},
            {'name': 'gadget, and decode every value', 'library': 'gadget', 'ms': full * 1e3},
            {'name': 'gguf-py `GGUFReader` (parses everything on open)', 'library': 'gguf-py',
             'ms': None if ref is None else ref * 1e3}]
    return {'suite': 'gguf', 'title': 'GGUF', 'settings': {'repeats': repeats}, 'file': info,
            'peers': [peer.as_dict()], 'rows': rows,
            'ratios': {'list': None if ref is None else ref / lazy,
                       'decode_all': None if ref is None else ref / full}}


def report(result: dict[str, Any]) -> str:
    """The table of ``benchmarks/RESULTS.md``'s GGUF section, from :func:`run`'s result."""
    f, r = result['file'], result['ratios']
    peer = result['peers'][0]
    table = markdown_table(['', 'ms'], [[row['name'], number(row['ms'])] for row in result['rows']])
    if r['list'] is None:
        tail = f"{peer['name']}: {peer['reason']}; no comparison."
    else:
        tail = (f"Ratio: gguf-py / gadget = {ratio(r['list'], 0)} (open + list), {ratio(r['decode_all'], 0)} "
                f"(even with every value decoded); gguf-py {peer['version']}.")
    return (f"Open {f['name']} ({f['bytes'] / 1e6:.0f} MB, {f['fields']} fields, {f['tensors']} tensors) "
            f"and list every field and tensor name; median of {plural(result['settings']['repeats'], 'run')} "
            f"each, same process:\n\n{table}\n\n{tail}")
