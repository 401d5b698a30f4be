"""The generated binding matches GGML's headers and libraries, so drift after a GGML bump shows.

Three independent views are compared:

* the compiled module: ``gadget._ggml`` (``lib``, ``ffi``) and its API table ``gadget._ffi.API``;
* ``build_ffi.generate`` run again now on the GGML build tree's installed headers and libraries
  (skipped when there is no build tree, e.g. when gadget was installed from a wheel);
* a plain-regex reading of the raw header text (no preprocessor, no pycparser) and the symbols
  the shipped libraries export (``nm -D --defined-only gadget/lib/*.so*``).
"""

from __future__ import annotations

import enum
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

pytest.importorskip('gadget._ggml')

from gadget import ggml as G  # noqa: E402
from gadget._ffi import API, ffi, lib  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_LIB = Path(G.__file__).resolve().parent / 'lib'
BOUND_HEADERS = ['ggml.h', 'ggml-alloc.h', 'ggml-backend.h', 'ggml-cpu.h', 'ggml-opt.h', 'ggml-rpc.h',
                 'gguf.h']
FUNCTIONS: dict = API['functions']


# --------------------------------------------------------------------------------------------
# Locating the build tree, the headers and the libraries
# --------------------------------------------------------------------------------------------
def _install_dirs() -> list[Path]:
    """``build/ggml-*/install`` trees that hold headers and libraries: the one whose libraries are
    the installed package's first (a native and a portable build may both be there), then newest first."""
    found = [d for d in (ROOT / 'build').glob('ggml-*/install')
             if (d / 'include' / 'ggml.h').is_file() and any((d / 'lib').glob('libgadget-ggml*.so'))]
    installed = [p.read_bytes() for p in PACKAGE_LIB.glob('libgadget-ggml*.so*') if p.is_file()]

    def built_here(d: Path) -> bool:   # installed copies are renamed to their SONAMEs: compare contents
        return all(p.read_bytes() in installed
                   for p in (d / 'lib').glob('libgadget-ggml*.so*') if p.is_file() and not p.is_symlink())

    def newest(d: Path) -> float:
        return max(p.stat().st_mtime for p in (d / 'lib').glob('libgadget-ggml*.so'))
    return sorted(found, key=lambda d: (built_here(d), newest(d)), reverse=True)


@pytest.fixture(scope='module')
def install_dir() -> Path:
    dirs = _install_dirs()
    if not dirs:
        pytest.skip(f'no GGML build tree under {ROOT / "build"} (gadget installed from a wheel?): '
                    'the binding cannot be regenerated here')
    return dirs[0]


@pytest.fixture(scope='module')
def include_dir() -> Path:
    """The headers the binding was generated from: the build tree's, else the vendored sources'."""
    for d in [d / 'include' for d in _install_dirs()] + [ROOT / 'vendor' / 'ggml' / 'include']:
        if all((d / h).is_file() for h in BOUND_HEADERS):
            return d
    pytest.skip('no GGML headers found (no build tree and no vendored sources)')


@pytest.fixture(scope='module')
def build_ffi():
    path = ROOT / 'build_ffi.py'
    if not path.is_file():
        pytest.skip('build_ffi.py is not available (gadget installed from a wheel?)')
    pytest.importorskip('pycparser')
    spec = importlib.util.spec_from_file_location('gadget_build_ffi_under_test', path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope='module')
def regenerated(build_ffi, install_dir: Path):
    """``build_ffi.generate`` run now on the installed package's build tree (with its backend
    modules, in a portable build)."""
    modules = sorted((install_dir / 'bin').glob('libgadget-ggml-*.so'))
    return build_ffi.generate(install_dir / 'include', install_dir / 'lib', modules)


# --------------------------------------------------------------------------------------------
# Regex reading of the raw header text
# --------------------------------------------------------------------------------------------
_COMMENT = re.compile(r'/\*.*?\*/|//[^\n]*', re.S)
_BLOCK_COMMENT = re.compile(r'/\*.*?\*/', re.S)
_PREPROCESSOR = re.compile(r'^[ \t]*#(?:[^\n]*\\\n)*[^\n]*', re.M)
_DECLARATION = re.compile(r'\bGGML(?:_BACKEND)?_API\b[^;{}()]*?\b([A-Za-z_]\w*)\s*\(')
_ENUM = re.compile(r'\benum\s+([A-Za-z_]\w*)\s*\{([^}]*)\}')
_INT_LITERAL = r'(?:0[xX][0-9a-fA-F]+|\d+)[uUlL]*'
_LITERAL_DEFINE = re.compile(
    r'^[ \t]*#[ \t]*define[ \t]+((?:GGML|GGUF)_[A-Z0-9_]+)[ \t]+\(?[ \t]*(-?' + _INT_LITERAL + r')[ \t]*\)?'
    r'[ \t]*(?://[^\n]*|/\*[^\n]*)?$', re.M)


def _header_text(include_dir: Path, header: str) -> str:
    return (include_dir / header).read_text()


def _code_only(text: str) -> str:
    """Header text without comments and preprocessor lines."""
    return _PREPROCESSOR.sub('', _COMMENT.sub(' ', text))


def declared_functions(include_dir: Path, headers: list[str] = BOUND_HEADERS) -> dict[str, str]:
    """``GGML_API`` / ``GGML_BACKEND_API`` function names in the raw headers -> their header."""
    names: dict[str, str] = {}
    for header in headers:
        for name in _DECLARATION.findall(_code_only(_header_text(include_dir, header))):
            names.setdefault(name, header)
    return names


def _int(literal: str) -> int:
    return int(literal.rstrip('uUlL'), 0)


def header_enums(include_dir: Path) -> dict[str, dict[str, int | None]]:
    """Every named enum of the headers: tag -> {enumerator: value, or None if not a plain literal}."""
    enums: dict[str, dict[str, int | None]] = {}
    for header in BOUND_HEADERS:
        for tag, body in _ENUM.findall(_code_only(_header_text(include_dir, header))):
            values: dict[str, int | None] = {}
            last: int | None = -1
            for entry in filter(None, (e.strip() for e in body.split(','))):
                name, _, expr = (part.strip() for part in entry.partition('='))
                expr = re.sub(r'\s+', '', expr)
                while expr.startswith('(') and expr.endswith(')'):
                    expr = expr[1:-1]
                if not expr:
                    value = None if last is None else last + 1
                elif re.fullmatch('-?' + _INT_LITERAL, expr):
                    value = -_int(expr[1:]) if expr.startswith('-') else _int(expr)
                elif m := re.fullmatch(r'(\d+)<<(\d+)', expr):
                    value = int(m.group(1)) << int(m.group(2))
                else:
                    value = None  # an expression (another enumerator, ...): trust the compiler
                values[name] = last = value
            enums[tag] = values
    return enums


def header_literal_defines(include_dir: Path) -> dict[str, set[int]]:
    """``#define GGML_X 123`` of the headers: name -> every literal value it is given (per #if branch)."""
    defines: dict[str, set[int]] = {}
    for header in BOUND_HEADERS:
        text = _BLOCK_COMMENT.sub(' ', _header_text(include_dir, header))
        for name, literal in _LITERAL_DEFINE.findall(text):
            value = -_int(literal[1:]) if literal.startswith('-') else _int(literal)
            defines.setdefault(name, set()).add(value)
    return defines


@lru_cache(maxsize=None)
def exported_symbols() -> frozenset[str]:
    nm = shutil.which('nm')
    if nm is None:
        pytest.skip('nm (binutils) is not installed')
    libraries = sorted(p for p in PACKAGE_LIB.glob('*.so*') if p.is_file())
    if not libraries:
        pytest.skip(f'no shared libraries in {PACKAGE_LIB}')
    symbols: set[str] = set()
    for library in libraries:
        out = subprocess.run([nm, '-D', '--defined-only', str(library)], check=True,
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] in ('T', 'W', 'i'):
                symbols.add(parts[2].split('@')[0])
    return frozenset(symbols)


def _camel(tag: str) -> str:
    return ''.join(part.capitalize() for part in tag.split('_'))


# --------------------------------------------------------------------------------------------
# (a) the binding regenerated now equals the compiled one
# --------------------------------------------------------------------------------------------
def test_regenerated_function_set_matches_api(regenerated) -> None:
    now, built = set(regenerated.functions), set(FUNCTIONS)
    assert sorted(now - built) == [], 'declared and exported now, but missing from the compiled binding'
    assert sorted(built - now) == [], 'in the compiled binding, but no longer declared and exported'


def test_every_api_function_is_bound() -> None:
    missing = sorted(name for name in FUNCTIONS if not hasattr(lib, name))
    assert missing == []
    not_wrapped = sorted(name for name in FUNCTIONS if not callable(getattr(G, name, None)))
    assert not_wrapped == []


def test_regenerated_api_table_identical(build_ffi, regenerated) -> None:
    """Same parameters, headers, return kinds, guards, constants, enums: not just the same names."""
    table = json.loads(build_ffi.api_table(regenerated))
    changed = sorted(name for name in FUNCTIONS if table['functions'].get(name) != FUNCTIONS[name])
    assert changed == [], 'functions whose declaration changed since the binding was built'
    for key in ('constants', 'enums', 'skipped'):
        assert table[key] == API[key], key


def test_regenerated_guards_match(regenerated) -> None:
    assert sorted(regenerated.guarded) == sorted(n for n, info in FUNCTIONS.items() if info['guarded'])


# --------------------------------------------------------------------------------------------
# (b) regex-declared and exported functions are all bound
# --------------------------------------------------------------------------------------------
def test_declared_and_exported_functions_all_bound(include_dir: Path) -> None:
    declared = declared_functions(include_dir)
    candidates = set(declared) & exported_symbols()
    assert len(candidates) > 500, f'suspiciously few GGML functions found: {len(candidates)}'
    missing = sorted(name for name in candidates if not hasattr(lib, name))
    coverage = 1 - len(missing) / len(candidates)
    assert coverage >= 0.95, f'only {coverage:.1%} of {len(candidates)} functions bound'
    assert missing == []


def test_regex_and_pycparser_agree_on_declarations(include_dir: Path) -> None:
    """Every regex-found declaration was seen by the generator (bound, or skipped as not exported)."""
    declared = declared_functions(include_dir)
    seen = set(FUNCTIONS) | set(API['skipped'])
    assert sorted(set(declared) - seen) == []
    assert sorted(set(FUNCTIONS) - set(declared)) == []
    wrong_header = sorted(n for n, info in FUNCTIONS.items() if info['header'] != declared[n])
    assert wrong_header == []


def test_declared_but_not_exported_is_reported(include_dir: Path) -> None:
    declared = set(declared_functions(include_dir))
    assert sorted(declared - exported_symbols()) == API['skipped']


# --------------------------------------------------------------------------------------------
# (c) enums
# --------------------------------------------------------------------------------------------
def test_every_header_enum_is_an_intenum(include_dir: Path) -> None:
    enums = header_enums(include_dir)
    assert sorted(enums) == sorted(API['enums'])
    for tag, values in enums.items():
        cls = getattr(G, _camel(tag), None)
        assert isinstance(cls, type) and issubclass(cls, enum.IntEnum), tag
        c_values = ffi.typeof(f'enum {tag}').relements
        assert set(c_values) == set(values), tag
        for name, c_value in c_values.items():
            assert getattr(lib, name) == c_value, name
            assert getattr(G, name) == c_value, name  # module constant by its C name
            assert c_value in cls._value2member_map_, (tag, name)
            if values[name] is not None:
                assert values[name] == c_value, f'{name}: header says {values[name]}, binding {c_value}'
        # every member maps back to the C enumerator of the same value
        by_value: dict[int, set[str]] = {}
        for name, c_value in c_values.items():
            by_value.setdefault(c_value, set()).add(name)
        for member_name, member in cls.__members__.items():
            full_names = by_value[int(member)]
            assert any(n == member_name or n.endswith('_' + member_name) for n in full_names), \
                (tag, member_name, full_names)


def test_known_enum_values() -> None:
    assert G.GgmlType.F32 == lib.GGML_TYPE_F32 == 0
    assert G.GgmlType.F16 == 1 and G.GgmlType.Q4_0 == 2 and G.GgmlType.I32 == 26
    assert G.GgmlOp.NONE == 0 and G.GgmlOp.ADD == lib.GGML_OP_ADD
    assert G.GGMLQuantizationType is G.GgmlType and G.GGUFValueType is G.GgufType
    assert G.GgufType.STRING == lib.GGUF_TYPE_STRING == 8


# --------------------------------------------------------------------------------------------
# (d) integer #defines
# --------------------------------------------------------------------------------------------
def test_integer_defines_exposed(include_dir: Path) -> None:
    literals = header_literal_defines(include_dir)
    assert set(literals) <= set(API['constants']), sorted(set(literals) - set(API['constants']))
    for name in API['constants']:
        value = getattr(lib, name)
        assert isinstance(value, int), name
        assert getattr(G, name) == value, name
        if name in literals:
            assert value in literals[name], f'{name}: header says {literals[name]}, binding {value}'


def test_core_limits() -> None:
    assert lib.GGML_MAX_DIMS == G.GGML_MAX_DIMS == 4
    assert lib.GGML_MAX_NAME == 64
    assert lib.GGML_MAX_SRC == 10
    assert lib.GGML_MAX_OP_PARAMS == 64
    assert lib.GGML_N_TASKS_MAX == -1
    assert lib.GGUF_DEFAULT_ALIGNMENT == 32
    assert lib.GGML_MEM_ALIGN in (4, 8, 16)


# --------------------------------------------------------------------------------------------
# (e) struct ggml_tensor
# --------------------------------------------------------------------------------------------
def test_tensor_struct_layout() -> None:
    fields = dict(ffi.typeof('struct ggml_tensor').fields)
    for name in ('type', 'buffer', 'ne', 'nb', 'op', 'op_params', 'flags', 'src', 'view_src',
                 'view_offs', 'data', 'name', 'extra'):
        assert name in fields, name
    assert fields['ne'].type.length == lib.GGML_MAX_DIMS
    assert fields['ne'].type.item.cname == 'int64_t'
    assert fields['nb'].type.length == lib.GGML_MAX_DIMS
    assert fields['name'].type.length == lib.GGML_MAX_NAME
    assert fields['src'].type.length == lib.GGML_MAX_SRC
    op_params = fields['op_params'].type
    assert op_params.length * ffi.sizeof(op_params.item) == lib.GGML_MAX_OP_PARAMS
    assert ffi.sizeof('struct ggml_tensor') == lib.GGML_TENSOR_SIZE


@pytest.fixture
def ctx():
    params = ffi.new('struct ggml_init_params *', dict(mem_size=1 << 20, mem_buffer=ffi.NULL, no_alloc=False))
    c = G.ggml_init(params[0])
    yield c
    lib.ggml_free(c)


def test_tensor_fields_accessible(ctx) -> None:
    a = G.ggml_new_tensor_2d(ctx, G.GGML_TYPE_F32, 4, 3)
    b = G.ggml_new_tensor_2d(ctx, G.GGML_TYPE_F32, 4, 2)
    assert list(a.ne) == [4, 3, 1, 1]
    assert list(a.nb) == [4, 16, 48, 48]
    assert a.type == G.GgmlType.F32 and a.op == G.GgmlOp.NONE
    assert a.data != ffi.NULL and a.view_src == ffi.NULL and a.flags == 0

    c = G.ggml_concat(ctx, a, b, 1, name='joined')
    assert c.op == G.GgmlOp.CONCAT
    assert c.src[0] == a and c.src[1] == b and c.src[2] == ffi.NULL
    assert c.op_params[0] == 1  # the concat dimension
    assert ffi.string(c.name) == b'joined'

    v = G.ggml_view_1d(ctx, a, 4, 16)
    assert v.view_src == a and v.view_offs == 16
    assert int(ffi.cast('uintptr_t', v.data)) == int(ffi.cast('uintptr_t', a.data)) + 16

    lib.ggml_set_input(a)
    assert a.flags & G.GgmlTensorFlag.INPUT


# --------------------------------------------------------------------------------------------
# (f) guards
# --------------------------------------------------------------------------------------------
def test_every_non_variadic_ggml_h_function_is_guarded(build_ffi) -> None:
    expected = sorted(n for n, info in FUNCTIONS.items()
                      if info['header'] == 'ggml.h' and not info['variadic'] and n not in build_ffi.UNGUARDED)
    assert len(expected) > 300
    assert sorted(n for n, info in FUNCTIONS.items() if info['guarded']) == expected
    assert [n for n in expected if not hasattr(lib, f'gadget_guard_{n}')] == []
    # the op layer calls the guard, not the raw function
    assert [n for n in expected if getattr(G, n) is getattr(lib, n)] == []


def test_unguarded_functions() -> None:
    outside = [n for n, info in FUNCTIONS.items() if info['guarded'] and info['header'] != 'ggml.h']
    assert outside == []
    variadic = [n for n, info in FUNCTIONS.items() if info['variadic']]
    assert variadic and not any(hasattr(lib, f'gadget_guard_{n}') for n in variadic)
    for name in ('ggml_abort', 'ggml_set_abort_callback', 'ggml_log_set'):
        if name in FUNCTIONS:
            assert not FUNCTIONS[name]['guarded'], name
    # an unguarded function without string parameters is the raw C function itself, except the CPU
    # backend's graph functions, whose wrapper refuses a NULL context, graph or plan
    raw = [n for n, info in FUNCTIONS.items() if not info['guarded'] and not info['strings']
           and not info.get('module')
           and not (info['header'] == 'ggml-cpu.h' and {'ctx', 'cgraph', 'cplan'} & set(info['params']))]
    assert raw and all(getattr(G, n) is getattr(lib, n) for n in raw)
    checked = [n for n, info in FUNCTIONS.items()
               if info['header'] == 'ggml-cpu.h' and 'cgraph' in info['params']]
    assert 'ggml_graph_compute_with_ctx' in checked
    assert all(getattr(G, n) is not getattr(lib, n) for n in checked)
