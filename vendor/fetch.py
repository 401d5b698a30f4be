"""Fetch the pinned GGML source into ``vendor/ggml`` (git-ignored).

The pin (package, version, sha256) lives in ``vendor/ggml.pin.json``. The sdist is downloaded
from the package index pip is configured with (through the index's simple API, so no build hook
ever runs), its sha256 verified, and only its ``ggml/`` folder unpacked.
Nothing happens when the tree is already there for the same pin.

Usage: ``python vendor/fetch.py`` (``setup.py`` calls :func:`fetch` itself).
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

VENDOR = Path(__file__).resolve().parent
PIN_FILE = VENDOR / 'ggml.pin.json'
STAMP = '.gadget-pin'


def load_pin() -> dict:
    return json.loads(PIN_FILE.read_text())


def pin_key(pin: dict) -> str:
    return f"{pin['package']}=={pin['version']} sha256:{pin['sha256']}"


def _load_index_client():
    """``gadget/_index.py`` (standard library only), loaded by path: gadget itself is not built yet."""
    import importlib.util

    spec = importlib.util.spec_from_file_location('_gadget_index', VENDOR.parent / 'gadget' / '_index.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_index = _load_index_client()
# Downloads come straight from the package index that pip is configured with, by its simple API,
# never through ``pip download``: pip would prepare the sdist's metadata, which runs a build hook,
# and inside gadget's own PEP 517 build the outer build's hook settings leak into it (pip 26:
# "Cannot import build backend ...").
pip_settings, package_locations = _index.pip_settings, _index.package_locations
find_file, download = _index.find_file, _index.download
sha256_of, verify_sha256 = _index.sha256_of, _index.verify_sha256


def _download(pin: dict, into: Path) -> Path:
    """The pinned sdist, sha256-verified: from ``vendor/downloads``, ``$GADGET_GGML_SDIST`` or the
    package indexes pip is configured with."""
    cached = VENDOR / 'downloads' / pin['sdist']
    if cached.exists() and sha256_of(cached) == pin['sha256']:
        return cached
    path = into / pin['sdist']
    local = os.environ.get('GADGET_GGML_SDIST')
    if local:
        shutil.copyfile(local, path)
    else:
        try:
            url = find_file(pin['sdist'], pin['package'])
        except RuntimeError as exc:
            raise RuntimeError(f'{exc}. Download it by hand and set GADGET_GGML_SDIST to its path.') from None
        download(url, path)
    verify_sha256(path, pin['sha256'])
    cached.parent.mkdir(exist_ok=True)
    shutil.copyfile(path, cached)
    return cached


def _safe_members(tar: tarfile.TarFile, prefix: str):
    for member in tar.getmembers():
        name = member.name
        if not name.startswith(prefix + '/') or '..' in Path(name).parts or name.startswith('/'):
            continue
        if member.issym() or member.islnk():
            continue
        member.name = name[len(prefix) + 1:]
        if member.name:
            yield member


def fetch(dest: Path | None = None, quiet: bool = False) -> Path:
    """Make sure the pinned GGML tree is at ``dest`` (default ``vendor/ggml``); return its path."""
    pin = load_pin()
    dest = Path(dest) if dest else VENDOR / pin['subdir']
    stamp = dest / STAMP
    if stamp.exists() and stamp.read_text().strip() == pin_key(pin):
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        sdist = _download(pin, Path(tmp))
        staging = Path(tmp) / 'tree'
        with tarfile.open(sdist) as tar:
            top = tar.getmembers()[0].name.split('/')[0]
            tar.extractall(staging, members=list(_safe_members(tar, f"{top}/{pin['subdir']}")))
        if not (staging / 'CMakeLists.txt').exists():
            raise RuntimeError(f"{sdist.name} has no {pin['subdir']}/CMakeLists.txt")
        if dest.exists():
            shutil.rmtree(dest)
        shutil.move(str(staging), dest)
    stamp.write_text(pin_key(pin) + '\n')
    if not quiet:
        print(f"gadget: fetched GGML {pin['ggml_version']} into {dest}")
    return dest


if __name__ == '__main__':
    fetch()
