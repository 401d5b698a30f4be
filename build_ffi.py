"""Generate the CFFI API-mode module ``gadget._ggml`` from GGML's own installed headers.

Nothing here mirrors a C prototype or struct by hand. The steps:

1. preprocess the public headers with the system C compiler (against empty stand-ins for the
   libc headers, so only GGML's own declarations remain; cffi knows ``int64_t``, ``size_t``,
   ``bool`` and ``FILE`` already);
2. parse the result with pycparser (cffi's own parser) and keep every typedef, struct and enum,
   and every function declaration whose symbol the built libraries actually export;
3. collect the integer ``#define`` constants of the headers (``GGML_MAX_DIMS``, ...) and let the C
   compiler supply their values (``#define NAME ...``);
4. generate a *guard* for every function declared in ``ggml.h`` (implemented in C, in ``ggml.c``):
   a C wrapper that sets a ``setjmp`` point before calling GGML. GGML's abort callback, set once at
   import, ``longjmp``s back to the innermost guard of the calling thread, so a failed
   ``GGML_ASSERT`` while *building* a graph becomes a Python exception instead of ``abort()``.

Why a generated C guard instead of per-op validation in Python: GGML already checks every
constructor's inputs (shapes, types, broadcasting, view bounds, ...) with ``GGML_ASSERT``; re-stating
those rules in Python would duplicate hundreds of conditions that drift with every GGML release,
and would cost Python time on every op call. The guard costs one ``setjmp`` (tens of nanoseconds)
and reports GGML's own message. Its limits: it only covers C frames on the calling thread, so
it is generated for ``ggml.h`` (``ggml.c``, pure C) only; functions implemented in C++
(``gguf.cpp``, ``ggml-backend.cpp``, ``ggml-opt.cpp``) and graph *computation* (worker threads)
are not guarded: the layers above validate their inputs before calling them.

5. generate a *trampoline* for every function of a backend module's header (``ggml-cpu.h``,
   ``ggml-rpc.h``, ``ggml-cuda.h``). GGML is built with ``GGML_BACKEND_DL``: its backends are
   modules loaded at run time (one CPU module per x86-64 level in a portable build, of which the
   best for the running CPU is chosen), so their functions cannot be linked. Each trampoline calls
   through a pointer that ``gadget_dl_bind`` fills from the chosen module with ``dlsym``; an
   unfilled one reports "module not loaded" as a pending error instead of crashing.

``make_ffibuilder(include_dir, lib_dir, modules)`` returns the configured ``cffi.FFI``; ``setup.py``
calls it after building GGML. ``python build_ffi.py INCLUDE_DIR LIB_DIR OUT_DIR`` emits the C
source for inspection.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cffi
from pycparser import c_ast, c_generator, c_parser

#: The public headers bound, in include order. ``ggml-cuda.h`` is added for CUDA builds.
HEADERS = ['ggml.h', 'ggml-alloc.h', 'ggml-backend.h', 'ggml-cpu.h', 'ggml-opt.h', 'ggml-rpc.h', 'gguf.h']
CUDA_HEADERS = ['ggml-cuda.h']

#: Headers whose functions are implemented in C and run on the calling thread: safe to guard.
GUARDED_HEADERS = {'ggml.h'}

#: Headers of the backend modules (loaded at run time), and the module group each belongs to.
MODULE_HEADERS = {'ggml-cpu.h': 'cpu', 'ggml-rpc.h': 'rpc', 'ggml-cuda.h': 'cuda'}

#: Never guarded: they cannot return (ggml_abort), install the hooks themselves, or take varargs.
UNGUARDED = {'ggml_abort', 'ggml_set_abort_callback', 'ggml_log_set', 'ggml_log_get'}

#: File names of the GGML libraries as setup.py builds them (renamed: see setup.LIBRARY_PREFIX).
LIBRARY_GLOB = 'libgadget-ggml'

#: Types cffi knows natively; declared here only so pycparser can parse the preprocessed text.
_KNOWN_TYPES = ['bool', 'size_t', 'ssize_t', 'FILE', 'va_list', 'intptr_t', 'uintptr_t'] + [
    f'{u}int{n}_t' for u in ('', 'u') for n in (8, 16, 32, 64)
]
_PRELUDE = ''.join(f'typedef int {t};\n' for t in _KNOWN_TYPES)
_PRELUDE_LINES = len(_KNOWN_TYPES)

_C_HELPERS = r'''
#include <dlfcn.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void gadget_on_parked(const char *message);   /* Python (extern "Python") */

/* One guard point per thread: GGML's abort callback jumps back to the innermost guarded call of
   the thread that failed. Outside a guarded call (e.g. GGML's worker threads during compute) the
   callback returns and GGML aborts as usual, after printing its message. */
static __thread jmp_buf *gadget_jmp = NULL;
static __thread int gadget_failed = 0;
static __thread char gadget_message[2048];

/* A thread that talks to GGML's RPC backend (C++ code, which no longjmp may cross) is marked
   "parkable": a GGML_ABORT on it (a server gone mid-call: "Remote RPC server crashed ...") tells
   Python through gadget_on_parked, then stops that thread for good, signals blocked, instead of
   letting GGML abort the process. Python, waiting for the call with a timeout, raises. */
static __thread int gadget_parkable = 0;

static void gadget_set_parkable(int on) {
    gadget_parkable = on;
}

static void gadget_park(const char *message) {
    gadget_on_parked(message);
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    for (;;) {
        sleep(3600);
    }
}

static void gadget_on_abort(const char *message) {
    jmp_buf *target = gadget_jmp;
    if (target != NULL) {
        snprintf(gadget_message, sizeof gadget_message, "%s", message);
        gadget_failed = 1;
        longjmp(*target, 1);
    }
    if (gadget_parkable) {
        gadget_park(message);
    }
    fprintf(stderr, "GGML aborted outside a guarded call: %s\n", message);
    fflush(stderr);
}

/* A NULL or otherwise invalid argument can make GGML's graph-building code fault (SIGSEGV) or
   divide by zero (SIGFPE) before any GGML_ASSERT. Inside a guarded call on this thread, that fault
   is turned into the same error as a failed assertion; anywhere else it goes to the handler that
   was installed before (Python's faulthandler, or the default action). The handler is installed
   with SA_NODEFER, so jumping out of it leaves the signal unblocked. */
static struct sigaction gadget_previous[3];
static const int gadget_signals[3] = {SIGSEGV, SIGFPE, SIGBUS};

static void gadget_copy_message(const char *text) {
    size_t i = 0;  /* async-signal-safe copy */
    for (; text[i] != '\0' && i + 1 < sizeof gadget_message; i++) {
        gadget_message[i] = text[i];
    }
    gadget_message[i] = '\0';
}

static void gadget_on_fault(int sig, siginfo_t *info, void *context) {
    jmp_buf *target = gadget_jmp;
    if (target != NULL) {
        gadget_copy_message(sig == SIGFPE
            ? "gadget-fault: arithmetic fault (division by zero) inside GGML: an argument is zero or out of range"
            : "gadget-fault: invalid memory access inside GGML: a tensor or pointer argument is NULL or invalid");
        gadget_failed = 1;
        longjmp(*target, 1);
    }
    for (int i = 0; i < 3; i++) {
        if (gadget_signals[i] != sig) {
            continue;
        }
        struct sigaction *prev = &gadget_previous[i];
        if ((prev->sa_flags & SA_SIGINFO) && prev->sa_sigaction != NULL) {
            prev->sa_sigaction(sig, info, context);
            return;
        }
        if (prev->sa_handler == SIG_IGN) {
            return;
        }
        if (prev->sa_handler != SIG_DFL && prev->sa_handler != NULL) {
            prev->sa_handler(sig);
            return;
        }
        /* Default action: restore it and re-raise, so a genuine fault (or a kill -SEGV) ends the
           process as it would without gadget. */
        sigaction(sig, prev, NULL);
        raise(sig);
        return;
    }
}

static void gadget_install_abort_guard(void) {
    ggml_set_abort_callback(gadget_on_abort);
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = gadget_on_fault;
    action.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    for (int i = 0; i < 3; i++) {
        sigaction(gadget_signals[i], &action, &gadget_previous[i]);
    }
}

/* Returns and clears the calling thread's pending GGML failure message, or NULL if none. */
static const char *gadget_take_error(void) {
    if (!gadget_failed) {
        return NULL;
    }
    gadget_failed = 0;
    return gadget_message;
}

static int gadget_error_pending(void) {
    return gadget_failed;
}

/* Backend modules (GGML_BACKEND_DL): scoring a CPU module and reporting a missing one. */
static char gadget_dl_message[1024];

static const char *gadget_dl_error(void) {
    return gadget_dl_message;
}

static void gadget_dl_missing(const char *function, const char *group) {
    snprintf(gadget_message, sizeof gadget_message,
             "gadget-dl: %s is in GGML's %s backend module, which is not loaded in this process "
             "(this build or machine has no usable %s module)", function, group, group);
    gadget_failed = 1;
}

/* The score GGML's module gives the running CPU (0: unsupported), 1 for a module without one,
   -1 if it cannot be opened. The module is closed again, as GGML's own loader does. */
static int gadget_dl_score(const char *path) {
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        snprintf(gadget_dl_message, sizeof gadget_dl_message, "%s", dlerror());
        return -1;
    }
    int (*score)(void) = (int (*)(void)) dlsym(handle, "ggml_backend_score");
    int result = score != NULL ? score() : 1;
    dlclose(handle);
    return result;
}
'''  # noqa: E501 (C text, kept verbatim)

_CDEF_HELPERS = '''
static void gadget_install_abort_guard(void);
static const char *gadget_dl_error(void);
static int gadget_dl_score(const char *path);
static int gadget_dl_bind(const char *group, const char *path);
static const char *gadget_take_error(void);
static int gadget_error_pending(void);
static const char *gadget_api(void);
extern "Python" void gadget_log_callback(enum ggml_log_level, const char *, void *);
extern "Python" void gadget_on_parked(const char *);
static void gadget_set_parkable(int on);
static void gadget_op_gelu_erf(struct ggml_tensor *, const struct ggml_tensor *, int, int, void *);
static void gadget_op_attention(struct ggml_tensor *, int, int, void *);
'''


@dataclass
class Function:
    name: str
    header: str
    decl: c_ast.Decl
    params: list[str]
    variadic: bool
    returns: str          # 'void', 'tensor', 'pointer' or 'value'
    first_param: str      # C type of the first parameter ('' if none)
    prototype: str = ''
    string_params: list[int] = field(default_factory=list)  # indexes of `char *` parameters


@dataclass
class Binding:
    """Everything generated from the headers: the cdef text, the C source and the API table."""
    cdef: str
    source: str
    functions: dict[str, Function] = field(default_factory=dict)
    constants: list[str] = field(default_factory=list)
    guarded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)   # declared but not exported
    enums: list[str] = field(default_factory=list)     # tags of the named enums
    modules: dict[str, str] = field(default_factory=dict)   # function -> module group (trampolines)
    enum_counts: dict[str, str] = field(default_factory=dict)  # enum tag -> its *_COUNT member


def find_compiler() -> str:
    for cc in (os.environ.get('CC'), 'cc', 'gcc', 'clang'):
        if cc and shutil.which(cc.split()[0]):
            return cc
    raise RuntimeError('no C compiler found (set CC)')


def preprocess(include_dir: Path, headers: list[str]) -> str:
    """Run the C preprocessor over ``headers``, with libc replaced by empty stand-ins."""
    with tempfile.TemporaryDirectory() as tmp:
        fake = Path(tmp) / 'fake_libc'
        fake.mkdir()
        for name in ('stdbool.h', 'stddef.h', 'stdint.h', 'stdio.h', 'stdlib.h', 'string.h', 'stdarg.h'):
            (fake / name).write_text('')
        umbrella = Path(tmp) / 'gadget_all.h'
        umbrella.write_text(''.join(f'#include "{h}"\n' for h in headers))
        cmd = find_compiler().split() + [
            '-E', '-nostdinc', '-I', str(fake), '-I', str(include_dir),
            '-D__attribute__(x)=', '-D_Noreturn=', '-Drestrict=', '-D__restrict=', '-D__restrict__=',
            '-D__inline=', '-D__extension__=', '-U__GNUC__', str(umbrella),
        ]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def exported_symbols(libraries: list[Path]) -> set[str]:
    """Names of the functions the built shared libraries export (``nm -D --defined-only``)."""
    symbols: set[str] = set()
    for lib in libraries:
        out = subprocess.run(['nm', '-D', '--defined-only', str(lib)], check=True,
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] in ('T', 'W', 'i'):
                symbols.add(parts[2].split('@')[0])
    return symbols


_DEFINE = re.compile(r'^\s*#\s*define\s+((?:GGML|GGUF|RPC)_[A-Z0-9_]+)[ \t]+([^\n]+?)\s*(?://.*)?$', re.M)
_INT_EXPR = re.compile(r'^[\s()0-9a-fA-FxXuUlL<>|&+\-*~]+$')


def integer_constants(include_dir: Path, headers: list[str]) -> list[str]:
    """The headers' object-like ``#define``s whose bodies are integer constant expressions."""
    bodies: dict[str, str] = {}
    for header in headers:
        for name, body in _DEFINE.findall((include_dir / header).read_text()):
            bodies[name] = body.split('/*')[0].strip()
    names: list[str] = []
    for name, body in bodies.items():
        # A body may refer to other integer constants (e.g. GGML_KQ_MASK_PAD); replace them first.
        expanded = re.sub(r'\b(?:GGML|GGUF|RPC)_[A-Z0-9_]+\b',
                          lambda m: '1' if m.group(0) in bodies else m.group(0), body)
        if _INT_EXPR.match(expanded) and re.search(r'\d', expanded):
            names.append(name)
    return sorted(names)


def _type_text(node: c_ast.Node) -> str:
    return c_generator.CGenerator().visit(node)


def _declare(type_node: c_ast.Node, name: str | None) -> str:
    """C text declaring ``name`` (or an abstract type when None) of the type ``type_node``."""
    node = copy.deepcopy(type_node)
    _set_declname(node, name)
    if name is None:
        return _type_text(c_ast.Typename(None, [], None, node)).strip()
    return _type_text(c_ast.Decl(name, [], [], [], [], node, None, None)).strip()


def _return_kind(decl: c_ast.Decl) -> str:
    ret = decl.type.type
    text = _declare(ret, None)
    if text == 'void':
        return 'void'
    if text == 'struct ggml_tensor *':
        return 'tensor'
    if isinstance(ret, c_ast.PtrDecl):
        return 'pointer'
    return 'value'


def _param_info(decl: c_ast.Decl) -> tuple[list[c_ast.Node], bool]:
    params = decl.type.args.params if decl.type.args else []
    variadic = any(isinstance(p, c_ast.EllipsisParam) for p in params)
    params = [p for p in params if not isinstance(p, c_ast.EllipsisParam)]
    if len(params) == 1 and _type_text(params[0]).strip() == 'void':
        params = []
    return params, variadic


def _set_declname(node: c_ast.Node, name: str) -> None:
    while not isinstance(node, c_ast.TypeDecl):
        node = node.type
    node.declname = name


def _rename_params(params: list[c_ast.Node]) -> list[str]:
    names = []
    for i, p in enumerate(params):
        name = getattr(p, 'name', None) or f'arg{i}'
        if name in names:
            name = f'{name}_{i}'
        p.name = name
        _set_declname(p.type, name)
        names.append(name)
    return names


CHECKS_HEADER = Path(__file__).resolve().parent / 'gadget' / 'csrc' / 'gadget_checks.h'
# gadget's own CPU kernels (custom ops), compiled into the extension
OPS_HEADER = CHECKS_HEADER.with_name('gadget_ops.h')


def checked_ops(header: Path = CHECKS_HEADER) -> set[str]:
    """Ops with a hand-written pre-check ``gadget_check_<op>`` in ``gadget/csrc/gadget_checks.h``."""
    text = header.read_text()
    return set(re.findall(r'static int gadget_check_(\w+)\(', text)) | \
        set(re.findall(r'^GADGET_\w+_CHECK\((\w+)\)', text, re.M))


def _wrapper_head(fn: Function, name: str, storage: list[str]) -> tuple[str, list[str]]:
    """The C head of a function wrapping ``fn`` under ``name`` (same parameters, renamed to be
    unique), and its parameter names."""
    decl = copy.deepcopy(fn.decl)
    decl.storage = storage
    decl.funcspec = []
    decl.name = name
    _set_declname(decl.type, decl.name)
    params, _ = _param_info(decl)
    names = _rename_params(params)
    return c_generator.CGenerator().visit(decl), names


def _enum_checks(fn: Function, names: list[str], counts: dict[str, str]) -> str:
    """C conditions that every enum argument lies in its enum's range (GGML indexes tables with
    them: ``ggml_type_name(100000)`` would read far out of bounds)."""
    params, _ = _param_info(fn.decl)
    conditions = []
    for param, name in zip(params, names):
        text = _declare(param.type, None)
        tag = text[len('enum '):] if text.startswith('enum ') else None
        if tag in counts:
            conditions.append(f'gadget_enum_ok((long long) {name}, {counts[tag]}, "{name}", "{tag}")')
    return ' && '.join(conditions)


def _guard_source(fn: Function, checked: bool = False, counts: dict[str, str] | None = None) -> str:
    head, names = _wrapper_head(fn, f'gadget_guard_{fn.name}', ['static'])
    call = f"{fn.name}({', '.join(names)})"
    check = f"gadget_check_{fn.name}({', '.join(names)})" if checked else ''
    enums = _enum_checks(fn, names, counts or {})
    check = ' && '.join(c for c in (enums, check) if c)
    check = f'({check})' if check else ''
    result_decl = _declare(fn.decl.type.type, 'result')
    if fn.returns == 'void':
        body = ('    jmp_buf here; jmp_buf *outer = gadget_jmp;\n'
                + (f'    if (!{check}) return;\n' if check else '')
                + f'    if (setjmp(here)) {{ gadget_jmp = outer; return; }}\n'
                f'    gadget_jmp = &here;\n    {call};\n    gadget_jmp = outer;\n')
    else:
        body = (f'    {result_decl};\n'
                f'    jmp_buf here; jmp_buf *outer = gadget_jmp;\n'
                + (f'    if (!{check}) {{ memset(&result, 0, sizeof result); return result; }}\n'
                   if check else '')
                + f'    if (setjmp(here)) {{ gadget_jmp = outer; '
                f'memset(&result, 0, sizeof result); return result; }}\n'
                f'    gadget_jmp = &here;\n    result = {call};\n'
                f'    gadget_jmp = outer;\n    return result;\n')
    return f'{head}\n{{\n{body}}}\n'


def _trampoline_source(fn: Function, group: str) -> str:
    """A module function's stand-in: calls through the pointer ``gadget_dl_bind`` fills."""
    head, names = _wrapper_head(fn, f'gadget_dl_{fn.name}', [])
    call = f"gadget_fp_{fn.name}({', '.join(names)})"
    missing = f'gadget_dl_missing("{fn.name}", "{group}");'
    if fn.returns == 'void':
        body = f'    if (gadget_fp_{fn.name} == NULL) {{ {missing} return; }}\n    {call};\n'
    else:
        result_decl = _declare(fn.decl.type.type, 'result')
        body = (f'    if (gadget_fp_{fn.name} == NULL) {{\n        {missing}\n        {result_decl};\n'
                f'        memset(&result, 0, sizeof result);\n        return result;\n    }}\n'
                f'    return {call};\n')
    return f'static __typeof__(gadget_dl_{fn.name}) *gadget_fp_{fn.name} = NULL;\n{head}\n{{\n{body}}}\n'


def _bind_source(binding: Binding) -> str:
    """``gadget_dl_bind(group, path)``: open a module, fill its group's pointers; returns how many
    functions it lacks, or -1 if it cannot be opened (``gadget_dl_error()`` says why)."""
    lines = ['static int gadget_dl_bind(const char *group, const char *path) {',
             '    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);',
             '    if (handle == NULL) {',
             '        snprintf(gadget_dl_message, sizeof gadget_dl_message, "%s", dlerror());',
             '        return -1;',
             '    }',
             '    int missing = 0;']
    for group in sorted(set(binding.modules.values())):
        lines.append(f'    if (strcmp(group, "{group}") == 0) {{')
        for name, fn_group in binding.modules.items():
            if fn_group == group:
                lines.append(f'        gadget_fp_{name} = (__typeof__(gadget_fp_{name})) '
                             f'dlsym(handle, "{name}");')
                lines.append(f'        missing += gadget_fp_{name} == NULL;')
        lines.append('    }')
    lines += ['    return missing;', '}']
    return '\n'.join(lines) + '\n'


class _ArrayDims(c_ast.NodeVisitor):
    def visit_ArrayDecl(self, node: c_ast.ArrayDecl) -> None:
        # cffi's cdef only evaluates plain numbers; `[...]` asks the compiler for the length.
        if node.dim is not None and not isinstance(node.dim, c_ast.Constant):
            node.dim = c_ast.ID('...')
        self.generic_visit(node)


class _Enums(c_ast.NodeVisitor):
    def __init__(self) -> None:
        self.tags: list[str] = []
        self.counts: dict[str, str] = {}   # tag -> its ``*_COUNT`` member (one past the last value)

    def visit_Enum(self, node: c_ast.Enum) -> None:
        if node.name and node.values is not None:
            self.tags.append(node.name)
            names = [e.name for e in node.values.enumerators]
            count = [n for n in names if n.endswith('_COUNT')]
            if count and names[-1] == count[0]:
                self.counts[node.name] = count[0]

    @classmethod
    def find(cls, node: c_ast.Node) -> list[str]:
        finder = cls()
        finder.visit(node)
        return finder.tags


def _simplify_array_dims(node: c_ast.Node) -> None:
    _ArrayDims().visit(node)


def collect(text: str, exported: set[str], guarded_headers: set[str],
            module_exports: dict[str, set[str]] | None = None) -> Binding:
    """Parse the preprocessed headers; keep types and the exported functions: those the linked
    libraries export (``exported``), and those of a module header that a module of its group exports
    (``module_exports``: group -> symbols), which are bound through trampolines."""
    module_exports = module_exports or {}
    ast = c_parser.CParser().parse(_PRELUDE + text, '<ggml headers>')
    gen = c_generator.CGenerator()
    cdef_parts: list[str] = []
    binding = Binding(cdef='', source='')
    typedefs: set[str] = set()
    for node in ast.ext[_PRELUDE_LINES:]:
        if isinstance(node, c_ast.Typedef):
            if node.name in typedefs:
                continue  # headers repeat some typedefs (C11 allows it, cdef does not)
            typedefs.add(node.name)
        if isinstance(node, c_ast.FuncDef):
            continue  # static inline helpers in headers: not part of the ABI
        header = os.path.basename(node.coord.file) if node.coord and node.coord.file else ''
        if isinstance(node, c_ast.Decl) and isinstance(node.type, c_ast.FuncDecl):
            name = node.name
            group = MODULE_HEADERS.get(header)
            in_module = group is not None and name in module_exports.get(group, ())
            if name not in exported and in_module and not _param_info(node)[1]:
                binding.modules[name] = group    # (a variadic one could not be forwarded)
            elif name not in exported:
                binding.skipped.append(name)
                continue
            node.storage = [s for s in node.storage if s != 'extern']
            node.funcspec = []
            params, variadic = _param_info(node)
            first = _declare(params[0].type, None) if params else ''
            fn = Function(name=name, header=header, decl=node, params=[], variadic=variadic,
                          returns=_return_kind(node), first_param=first.strip())
            fn.params = [getattr(p, 'name', None) or f'arg{i}' for i, p in enumerate(params)]
            fn.string_params = [i for i, p in enumerate(params)
                                if _declare(p.type, None).replace('const ', '') == 'char *']
            fn.prototype = gen.visit(node) + ';'
            binding.functions[name] = fn
            cdef_parts.append(gen.visit(node) + ';')
        elif isinstance(node, c_ast.Decl) and node.storage and 'extern' in node.storage:
            continue  # global variables: none are part of GGML's public API
        else:
            finder = _Enums()
            finder.visit(node)
            for enum in finder.tags:
                if enum not in binding.enums:
                    binding.enums.append(enum)
            binding.enum_counts.update(finder.counts)
            if isinstance(node, c_ast.Decl) and node.init is not None:
                node.init = None  # `static const size_t X = sizeof(...)`: the compiler supplies it
            _simplify_array_dims(node)
            cdef_parts.append(gen.visit(node) + ';')
    binding.cdef = '\n'.join(cdef_parts)
    guards = []
    checks = checked_ops()
    for fn in binding.functions.values():
        if fn.header in guarded_headers and not fn.variadic and fn.name not in UNGUARDED:
            guards.append(_guard_source(fn, checked=fn.name in checks, counts=binding.enum_counts))
            binding.guarded.append(fn.name)
    unknown = checks - set(binding.guarded)
    if unknown:
        raise RuntimeError(f'gadget_checks.h has checks for ops that are not guarded here: {sorted(unknown)}')
    trampolines = [_trampoline_source(binding.functions[name], group)
                   for name, group in binding.modules.items()]
    binding.source = '\n'.join(guards + trampolines) + _bind_source(binding)
    return binding


def api_table(binding: Binding) -> str:
    """JSON description of every bound function, compiled into the module as ``gadget_api()``."""
    table = {
        name: {
            'header': fn.header,
            'params': fn.params,
            'variadic': fn.variadic,
            'returns': fn.returns,
            'graph_op': fn.returns == 'tensor' and fn.first_param == 'struct ggml_context *',
            'guarded': name in binding.guarded,
            'module': binding.modules.get(name),
            'strings': fn.string_params,
            'c': fn.prototype,
        }
        for name, fn in binding.functions.items()
    }
    return json.dumps({'functions': table, 'constants': binding.constants, 'enums': binding.enums,
                       'skipped': sorted(binding.skipped)}, separators=(',', ':'))


def _c_string(text: str) -> str:
    # Split into chunks: C compilers cap the length of a single string literal token.
    chunks = [text[i:i + 2000] for i in range(0, len(text), 2000)]
    return '\n'.join('"' + c.replace('\\', '\\\\').replace('"', '\\"') + '"' for c in chunks)


def module_group(path: Path) -> str:
    """The group of a backend module file: ``libgadget-ggml-cpu-haswell.so`` -> ``'cpu'``."""
    return path.name[len(LIBRARY_GLOB) + 1:].split('.so')[0].split('-')[0]


def generate(include_dir: Path, lib_dir: Path, modules: list[Path] = (), cuda: bool | None = None) -> Binding:
    include_dir, lib_dir, modules = Path(include_dir), Path(lib_dir), [Path(m) for m in modules]
    if cuda is None:
        cuda = (any(module_group(m) == 'cuda' for m in modules)
                or any(lib_dir.glob(f'{LIBRARY_GLOB}-cuda.so*')))
    headers = HEADERS + (CUDA_HEADERS if cuda else [])
    libraries = sorted(p for p in lib_dir.glob(f'{LIBRARY_GLOB}*.so') if p.is_file())
    if not libraries:
        raise RuntimeError(f'no GGML libraries in {lib_dir}')
    module_exports: dict[str, set[str]] = {}
    for module in modules:
        module_exports.setdefault(module_group(module), set()).update(exported_symbols([module]))
    binding = collect(preprocess(include_dir, headers), exported_symbols(libraries), GUARDED_HEADERS,
                      module_exports)
    binding.constants = integer_constants(include_dir, headers)
    return binding


def library_names(lib_dir: Path) -> list[str]:
    """Linker names (``ggml``, ``ggml-base``, ...) of the GGML libraries in ``lib_dir``."""
    names = sorted({p.name[3:].split('.so')[0] for p in Path(lib_dir).glob(f'{LIBRARY_GLOB}*.so')})
    return names


def make_ffibuilder(include_dir: Path, lib_dir: Path, modules: list[Path] = (),
                    cuda: bool | None = None) -> cffi.FFI:
    """The configured ``cffi.FFI`` for ``gadget._ggml``, linked against the libraries in ``lib_dir``,
    with trampolines into the backend ``modules``."""
    binding = generate(include_dir, lib_dir, modules, cuda)
    cuda = 'ggml_backend_cuda_init' in binding.functions if cuda is None else cuda
    headers = HEADERS + (CUDA_HEADERS if cuda else [])
    ffi = cffi.FFI()
    ffi.cdef(binding.cdef)
    ffi.cdef(''.join(f'#define {name} ...\n' for name in binding.constants))
    ffi.cdef(''.join(f'static {_guard_decl(binding.functions[n])};\n' for n in binding.guarded))
    ffi.cdef(_CDEF_HELPERS)
    # Module functions are renamed to their trampolines before the headers declare them, so the
    # binding's calls (and the headers' declarations) refer to the trampolines.
    renames = ''.join(f'#define {name} gadget_dl_{name}\n' for name in binding.modules)
    includes = ''.join(f'#include "{h}"\n' for h in headers)
    source = (renames + includes + _C_HELPERS + f'#include "{CHECKS_HEADER.name}"\n'
              + f'#include "{OPS_HEADER.name}"\n' + binding.source
              + f'\nstatic const char *gadget_api(void) {{\n'
              f'    return {_c_string(api_table(binding))};\n}}\n')
    ffi.set_source(
        'gadget._ggml', source,
        include_dirs=[str(include_dir), str(CHECKS_HEADER.parent)],
        library_dirs=[str(lib_dir)],
        libraries=library_names(lib_dir) + ['dl'],
        # The GGML libraries ship in gadget/lib/ next to the extension module.
        extra_link_args=["-Wl,-rpath,$ORIGIN/lib"],
        extra_compile_args=['-O2', '-Wno-unused-function', '-Wno-deprecated-declarations'],
    )
    return ffi


def _guard_decl(fn: Function) -> str:
    decl = copy.deepcopy(fn.decl)
    decl.storage = []
    decl.name = f'gadget_guard_{fn.name}'
    _set_declname(decl.type, decl.name)
    return c_generator.CGenerator().visit(decl)


if __name__ == '__main__':
    if len(sys.argv) < 4:
        sys.exit('usage: python build_ffi.py INCLUDE_DIR LIB_DIR OUT_DIR [MODULE.so ...]')
    builder = make_ffibuilder(Path(sys.argv[1]), Path(sys.argv[2]), [Path(m) for m in sys.argv[4:]])
    out = Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    builder.emit_c_code(str(out / '_ggml.c'))
    print(out / '_ggml.c')
