"""The PEP 517 build backend: setuptools, asking for CMake from the package index only when none
is installed (a CMake wheel may be missing for a platform, and building CMake from its sdist takes
longer than building GGML)."""

from __future__ import annotations

import os
import shlex
import shutil

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (the standard hooks)

_CMAKE = 'cmake>=3.21'


_OPENBLAS = 'scipy-openblas32>=0.3.28'


def _blas_requested() -> bool:
    """GGML's BLAS backend is built unless GADGET_BLAS=0 (or -DGGML_BLAS=OFF in CMAKE_ARGS, which
    has the last word): setup.py's rules."""
    off = os.environ.get('GADGET_BLAS', '').strip().lower() in ('0', 'off', 'false', 'no')
    value = 'OFF' if off else 'ON'
    for arg in shlex.split(os.environ.get('CMAKE_ARGS', '')):
        if arg.startswith(('-DGGML_BLAS=', '-DGGML_BLAS:BOOL=')):
            value = arg.split('=', 1)[1].upper()
    return value in ('ON', '1', 'TRUE', 'YES')


def _with_cmake(requires: list[str]) -> list[str]:
    """The build's requirements, plus CMake when none is installed and, for a build with GGML's BLAS
    backend, the OpenBLAS it links."""
    requires = requires if shutil.which('cmake') else [*requires, _CMAKE]
    return [*requires, _OPENBLAS] if _blas_requested() else requires


def get_requires_for_build_wheel(config_settings=None):
    return _with_cmake(_setuptools.get_requires_for_build_wheel(config_settings))


def get_requires_for_build_editable(config_settings=None):
    return _with_cmake(_setuptools.get_requires_for_build_editable(config_settings))


def get_requires_for_build_sdist(config_settings=None):
    return _setuptools.get_requires_for_build_sdist(config_settings)
