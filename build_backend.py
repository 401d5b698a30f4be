"""The PEP 517 build backend: setuptools, asking for CMake from the package index only when none
is installed (a CMake wheel may be missing for a platform, and building CMake from its sdist takes
longer than building GGML)."""

from __future__ import annotations

import shutil

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (the standard hooks)

_CMAKE = 'cmake>=3.21'


def _with_cmake(requires: list[str]) -> list[str]:
    return requires if shutil.which('cmake') else [*requires, _CMAKE]


def get_requires_for_build_wheel(config_settings=None):
    return _with_cmake(_setuptools.get_requires_for_build_wheel(config_settings))


def get_requires_for_build_editable(config_settings=None):
    return _with_cmake(_setuptools.get_requires_for_build_editable(config_settings))


def get_requires_for_build_sdist(config_settings=None):
    return _setuptools.get_requires_for_build_sdist(config_settings)
