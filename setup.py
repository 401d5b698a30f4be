"""Build gadget: fetch the pinned GGML, compile it with CMake, generate the CFFI module.

``pip install .`` / ``pip install -e .`` run three steps inside ``build_ext``:

1. ``vendor/fetch.py`` unpacks the pinned GGML source into ``vendor/ggml`` (skipped when present);
2. CMake configures and builds it in ``build/ggml-<key>/``, where ``<key>`` hashes the pin and the
   CMake options, so an unchanged re-install reuses the previous build (CMake only re-checks it);
   ``CMAKE_ARGS`` from the environment is passed through (``-DGGML_CUDA=ON`` builds CUDA);
3. ``build_ffi.py`` generates ``gadget._ggml`` from the installed headers and libraries; the GGML
   shared libraries and backend modules are copied to ``gadget/lib/`` next to it (found through
   ``$ORIGIN`` rpath).

By default GGML is compiled for the build machine's CPU (``GGML_NATIVE``): the fastest build, but
one that dies with "illegal instruction" on an older CPU. ``GADGET_PORTABLE=1`` makes a build that
runs on any x86-64 machine, as llama.cpp's release builds do: GGML's backends become modules
loaded at run time (``GGML_BACKEND_DL``), with one CPU module per x86-64 level
(``GGML_CPU_ALL_VARIANTS``), of which gadget loads the best the running CPU supports.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

# The fast CPU paths, as llama.cpp builds them. Users override any of these through CMAKE_ARGS.
DEFAULT_CMAKE_ARGS = [
    '-DCMAKE_BUILD_TYPE=Release',
    '-DBUILD_SHARED_LIBS=ON',
    '-DGGML_NATIVE=ON',
    # GGML's own thread pool, not OpenMP: gadget owns it (gadget/backends.py) and lets its idle
    # workers sleep as soon as a graph is done, which OpenMP's spin-waiting cannot do per graph. The
    # CPU backend alone runs at the same speed either way; with the BLAS backend, GGML's OpenMP
    # threads and OpenBLAS's fought over the cores (prefill 7x slower, benchmarks/RESULTS.md).
    '-DGGML_OPENMP=OFF',
    '-DGGML_LLAMAFILE=ON',
    '-DGGML_RPC=ON',
    '-DGGML_BUILD_TESTS=OFF',
    '-DGGML_BUILD_EXAMPLES=OFF',
    '-DGGML_CCACHE=OFF',
    # The libraries find each other next to themselves once copied into gadget/lib/.
    '-DCMAKE_INSTALL_RPATH=$ORIGIN',
    '-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON',
]


# GADGET_PORTABLE=1: backends as modules, and every x86-64 level's CPU module instead of one for this
# machine (GGML refuses GGML_NATIVE with GGML_BACKEND_DL: its CPU-feature scoring needs known levels).
PORTABLE_CMAKE_ARGS = ['-DGGML_BACKEND_DL=ON', '-DGGML_NATIVE=OFF', '-DGGML_CPU_ALL_VARIANTS=ON']
# GGML's BLAS backend (matrix products of >= 32 rows through cblas_sgemm), over the OpenBLAS of the
# scipy-openblas32 wheel (see cmake/FindBLAS.cmake), a run-time dependency too. Built unless
# GADGET_BLAS=0: it wins on prefill and batched embeddings (benchmarks/RESULTS.md).
BLAS_CMAKE_ARGS = ['-DGGML_BLAS=ON', '-DGGML_BLAS_VENDOR=OpenBLAS']


def portable_requested() -> bool:
    return os.environ.get('GADGET_PORTABLE', '').strip().lower() in ('1', 'on', 'true', 'yes')


def blas_env_requested() -> bool:
    return os.environ.get('GADGET_BLAS', '').strip().lower() not in ('0', 'off', 'false', 'no')


def cmake_args() -> list[str]:
    args = DEFAULT_CMAKE_ARGS + (PORTABLE_CMAKE_ARGS if portable_requested() else [])
    args += BLAS_CMAKE_ARGS if blas_env_requested() else []
    return args + shlex.split(os.environ.get('CMAKE_ARGS', ''))


def _last_value(args: list[str], option: str) -> str | None:
    value = None
    for arg in args:
        if arg.startswith(f'-D{option}=') or arg.startswith(f'-D{option}:BOOL='):
            value = arg.split('=', 1)[1].upper()
    return value


def blas_requested(args: list[str]) -> bool:
    return _last_value(args, 'GGML_BLAS') in ('ON', '1', 'TRUE', 'YES')


def openblas_dir() -> Path:
    """The scipy-openblas32 package folder of this (build) environment."""
    try:
        import scipy_openblas32
    except ImportError:
        raise RuntimeError('GGML_BLAS=ON builds against the scipy-openblas32 package: pip install '
                           'scipy-openblas32 (build_backend.py asks for it with GADGET_BLAS=1)') from None
    return Path(scipy_openblas32.__file__).parent


def cuda_requested(args: list[str]) -> bool:
    return _last_value(args, 'GGML_CUDA') in ('ON', '1', 'TRUE', 'YES')


def find_cmake() -> str:
    found = shutil.which('cmake')   # the system's, or the PyPI package's (build_backend.py adds it)
    if not found:
        raise RuntimeError('CMake is needed to build GGML: install it, or pip install cmake')
    return found


# GGML's libraries get gadget's own names (libgadget-ggml-base.so.0, ...). Under GGML's names
# (libggml-base.so.0, the SONAMEs llama-cpp-python and others ship too) the dynamic loader would
# hand gadget whichever GGML a process loaded first, of another version and ABI.
LIBRARY_PREFIX = 'gadget-'
_WRAPPER = """cmake_minimum_required(VERSION 3.14)
project(gadget_ggml C CXX)
# gadget's FindBLAS (the scipy-openblas32 wheel's OpenBLAS) before CMake's: GGML appends its own.
list(PREPEND CMAKE_MODULE_PATH "{modules}")
# On CPUs with AVX512-FP16 (Intel Sapphire Rapids and later) GGML 0.20.2's F16 vectors step 128
# elements at a time, so an F16 dot product shorter than that (attention over 64-wide heads while
# decoding) runs entirely in the scalar remainder loop: 8x slower than on other AVX-512 CPUs (later
# GGML gives F16 dot products the F32 path for this reason). Without the native FP16 path, F16
# vectors take the AVX-512 path of every other AVX-512 CPU.
include(CheckCCompilerFlag)
check_c_compiler_flag(-mno-avx512fp16 GADGET_CC_HAS_NO_AVX512FP16)
if(GADGET_CC_HAS_NO_AVX512FP16)
    add_compile_options($<$<COMPILE_LANGUAGE:C,CXX>:-mno-avx512fp16>)
endif()
add_subdirectory("{source}" ggml)
if(TARGET ggml-blas)
    # ggml-blas.cpp calls the plain names; scipy-openblas32 exports them with a scipy_ prefix.
    target_compile_definitions(ggml-blas PRIVATE
        cblas_sgemm=scipy_cblas_sgemm
        openblas_set_num_threads=scipy_openblas_set_num_threads
        openblas_get_parallel=scipy_openblas_get_parallel)
endif()
# Every GGML library and backend module (ggml, ggml-base, ggml-cpu or ggml-cpu-<level>, ggml-rpc,
# ggml-cuda, ...), wherever GGML defines it, gets gadget's prefix.
function(gadget_rename directory)
    get_property(targets DIRECTORY "${{directory}}" PROPERTY BUILDSYSTEM_TARGETS)
    foreach(target ${{targets}})
        get_target_property(kind ${{target}} TYPE)
        if(target MATCHES "^ggml" AND kind MATCHES "SHARED_LIBRARY|MODULE_LIBRARY")
            set_target_properties(${{target}} PROPERTIES OUTPUT_NAME "{prefix}${{target}}")
        endif()
    endforeach()
    get_property(children DIRECTORY "${{directory}}" PROPERTY SUBDIRECTORIES)
    foreach(child ${{children}})
        gadget_rename("${{child}}")
    endforeach()
endfunction()
gadget_rename("${{CMAKE_CURRENT_SOURCE_DIR}}")
"""


def _wrapper_project(source: Path) -> Path:
    """A CMake project that builds GGML under gadget's library names."""
    folder = ROOT / 'build' / 'ggml-wrapper'
    folder.mkdir(parents=True, exist_ok=True)
    text = _WRAPPER.format(source=source.as_posix(), prefix=LIBRARY_PREFIX,
                           modules=(ROOT / 'cmake').as_posix())
    path = folder / 'CMakeLists.txt'
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return folder


def build_ggml() -> tuple[Path, Path, list[Path], bool]:
    """Fetch and build GGML; return (include dir, lib dir, backend modules, cuda)."""
    sys.path.insert(0, str(ROOT / 'vendor'))
    from fetch import fetch, load_pin, pin_key

    source = fetch()
    args = cmake_args()
    wrapper = _wrapper_project(source)
    # The wrapper's text is part of the key: a changed wrapper (compile options) builds afresh.
    text = '\n'.join([pin_key(load_pin()), LIBRARY_PREFIX, _WRAPPER, *args])
    key = hashlib.sha256(text.encode()).hexdigest()[:12]
    if blas_requested(args):
        # Not part of the key: pip's isolated build environment (and so this folder) is new every
        # install; configuring re-points an existing build at it.
        args = [*args, f'-DGADGET_OPENBLAS_DIR={openblas_dir().as_posix()}']
    build_dir = ROOT / 'build' / f'ggml-{key}'
    prefix = build_dir / 'install'
    cmake = find_cmake()
    jobs = os.environ.get('CMAKE_BUILD_PARALLEL_LEVEL') or str(os.cpu_count() or 2)
    # Configure every time: it takes seconds on an existing cache, and it re-points the build at
    # this run's cmake (pip's isolated build environment, and so its cmake, is new every install).
    subprocess.run([cmake, '-S', str(wrapper), '-B', str(build_dir),
                    f'-DCMAKE_INSTALL_PREFIX={prefix}', '-DCMAKE_INSTALL_LIBDIR=lib', *args],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([cmake, '--build', str(build_dir), '--parallel', jobs], check=True)
    subprocess.run([cmake, '--install', str(build_dir)], check=True, stdout=subprocess.DEVNULL)
    # With GGML_BACKEND_DL the backends are modules, installed under bin/.
    modules = sorted(p for p in (prefix / 'bin').glob(f'lib{LIBRARY_PREFIX}ggml-*.so') if p.is_file())
    if _last_value(args, 'GGML_BACKEND_DL') in ('ON', '1', 'TRUE', 'YES') and not any(
            p.name.startswith(f'lib{LIBRARY_PREFIX}ggml-cpu') for p in modules):
        raise RuntimeError(f'the GGML build made no CPU backend module in {prefix / "bin"}')
    return prefix / 'include', prefix / 'lib', modules, cuda_requested(args)


class BuildGadget(build_ext):
    """build_ext that builds GGML first and generates the CFFI extension from its headers."""

    def run(self) -> None:
        import build_ffi

        include_dir, lib_dir, modules, cuda = build_ggml()
        ffi = build_ffi.make_ffibuilder(include_dir, lib_dir, modules, cuda=cuda)
        gen_dir = Path(self.build_temp) / 'gadget_ffi'
        gen_dir.mkdir(parents=True, exist_ok=True)
        generated = ffi.distutils_extension(str(gen_dir), verbose=False)
        # Fill in the placeholder Extension that setuptools has already finalised.
        ext = self.extensions[0]
        for attr in ('sources', 'include_dirs', 'library_dirs', 'libraries', 'extra_compile_args',
                     'extra_link_args', 'define_macros'):
            setattr(ext, attr, list(getattr(generated, attr)))
        super().run()
        # Ship the GGML libraries (real files under their SONAMEs) next to the extension.
        target = Path(self.get_ext_fullpath('gadget._ggml')).parent / 'lib'
        target.mkdir(parents=True, exist_ok=True)
        for stale in target.glob('*.so*'):   # libraries of an earlier build (other names or options)
            stale.unlink()
        for lib in lib_dir.glob(f'lib{LIBRARY_PREFIX}ggml*.so*'):
            if lib.is_symlink() or lib.name.endswith('.so'):
                continue
            soname = subprocess.run(['objdump', '-p', str(lib)], capture_output=True, text=True).stdout
            name = next((ln.split()[1] for ln in soname.splitlines() if ln.strip().startswith('SONAME')),
                        lib.name)
            shutil.copyfile(lib, target / name)
        for module in modules:   # backend modules: loaded by path, by gadget/_ffi.py
            shutil.copyfile(module, target / module.name)


if __name__ == '__main__':  # setuptools runs this file as __main__; tests import the helpers
    setup(
        ext_modules=[Extension('gadget._ggml', sources=[])],  # filled in by BuildGadget.run
        cmdclass={'build_ext': BuildGadget},
    )
