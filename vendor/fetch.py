"""Fetch the pinned GGML source into ``vendor/ggml`` (git-ignored).

The pin (package, version, sha256) lives in ``vendor/ggml.pin.json``. The sdist is downloaded
from the package index with pip, its hash verified, and only its ``ggml/`` folder unpacked.
Nothing happens when the tree is already there for the same pin.

Usage: ``python vendor/fetch.py`` (``setup.py`` calls :func:`fetch` itself).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _outside_build_env() -> dict[str, str]:
    """The environment without what pip's isolated build environment adds (a PYTHONPATH whose
    sitecustomize hides the interpreter's own site-packages, where pip lives)."""
    env = dict(os.environ)
    for name in list(env):
        # PEP517_*: the outer build's backend settings, which would misdirect the build hooks pip
        # runs to read the downloaded sdist's metadata.
        if name in ('PYTHONPATH', 'PYTHONNOUSERSITE', 'PYTHONHOME') or name.startswith('PEP517'):
            del env[name]
    return env


def _pip_command() -> list[str] | None:
    """How to run pip here: this interpreter's pip, seen from outside any isolated build environment."""
    probe = subprocess.run([sys.executable, '-c', 'import pip'], capture_output=True,
                           env=_outside_build_env())
    if probe.returncode == 0:
        return [sys.executable, '-m', 'pip']
    found = shutil.which('pip') or shutil.which('pip3')
    return [found] if found else None


def _download_from_index(pin: dict, into: Path) -> Path:
    """The sdist straight from the package index's JSON simple API (PEP 691), without pip."""
    import urllib.request

    index = os.environ.get('PIP_INDEX_URL', 'https://pypi.org/simple').rstrip('/')
    request = urllib.request.Request(f"{index}/{pin['package']}/",
                                     headers={'Accept': 'application/vnd.pypi.simple.v1+json'})
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)['files']
    url = next((f['url'] for f in files if f['filename'] == pin['sdist']), None)
    if url is None:
        raise RuntimeError(f"{pin['sdist']} is not on {index}")
    path = into / pin['sdist']
    with urllib.request.urlopen(url, timeout=300) as response, open(path, 'wb') as out:
        shutil.copyfileobj(response, out)
    return path


def _download(pin: dict, into: Path) -> Path:
    cached = VENDOR / 'downloads' / pin['sdist']
    if cached.exists() and sha256_of(cached) == pin['sha256']:
        return cached
    pip = _pip_command()
    path = into / pin['sdist']
    if pip is not None:
        subprocess.run(
            [*pip, 'download', '--no-deps', '--no-binary', ':all:', '--disable-pip-version-check',
             '-d', str(into), f"{pin['package']}=={pin['version']}"],
            check=True, env=_outside_build_env(),
        )
    else:
        path = _download_from_index(pin, into)
    if not path.exists():
        raise RuntimeError(f"the download did not produce {pin['sdist']} in {into}")
    got = sha256_of(path)
    if got != pin['sha256']:
        raise RuntimeError(f"sha256 mismatch for {path.name}: expected {pin['sha256']}, got {got}")
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
