"""The GGML op layer: every public GGML function by its C name, guarded against aborts.

The functions take and return the raw cffi pointers (``struct ggml_context *``,
``struct ggml_tensor *``) exactly as the C API does, so calls to this module and to ``lib`` mix
freely. On top of the C function each wrapper adds only:

* **no aborts**: functions of ``ggml.h`` go through the generated C guard (see ``build_ffi.py``);
  when GGML's own checks fail (``GGML_ASSERT``), a :class:`~gadget.errors.GgmlOpError` (a
  ``ValueError``) names the op, GGML's assertion and the shapes of the tensor arguments, and the
  interpreter and the context go on working;
* ``name=``: graph ops (functions that take a context first and return a tensor) accept an
  optional keyword that names the result node, for ``ggml_graph_get_tensor`` and
  ``GgmlCompute.get_named_node``;
* ``str`` is accepted wherever C takes ``const char *``.

Functions implemented in C++ (backends, ``gguf_*``, ``ggml_opt_*``) cannot be guarded (see
``build_ffi.py``); they are the raw ``lib`` functions, and the layers above validate their inputs.

Conventions: shapes are in ggml order, ``ne[0]`` (the elements of one row) first: the reverse of
numpy's. ``ggml_mul_mat(ctx, a, b)`` computes ``b @ a.T`` in numpy terms: ``a`` is
``(K, M)`` and ``b`` is ``(K, N)`` in ggml order, the result ``(M, N)``.

Enums are available as ``IntEnum`` classes named after their C tag in CamelCase (``GgmlType``,
``GgmlOp``, ``GgufType``, ...; ``GGMLQuantizationType`` and ``GGUFValueType`` as in gguf-py), and
every enum value and integer ``#define`` as a module constant by its C name (``GGML_TYPE_F32``).
"""

from __future__ import annotations

import enum
import keyword
from typing import Any, Callable, cast

from ._ffi import API, ffi, lib
from .errors import GgmlOpError

__all__: list[str] = ['ffi', 'lib', 'GgmlOpError', 'tensor_shape', 'describe_tensor', 'gadget_gelu_erf',
                         'gadget_attention']

_TENSOR_PTR = ffi.typeof('struct ggml_tensor *')


def tensor_shape(tensor: Any) -> tuple[int, ...]:
    """Shape of a ``ggml_tensor *`` in ggml order (``ne[0]`` first), trailing 1s dropped."""
    n = lib.ggml_n_dims(tensor)
    ne = tensor.ne
    return tuple(ne[i] for i in range(n))


def describe_tensor(tensor: Any) -> str:
    """``'f32 [4, 3]'``: type and ggml-order shape of a tensor pointer, for messages."""
    if tensor == ffi.NULL:
        return 'NULL'
    type_name = ffi.string(lib.ggml_type_name(tensor.type)).decode()
    return f'{type_name} {list(tensor_shape(tensor))}'


def gadget_gelu_erf(ctx: Any, a: Any, name: str | None = None) -> Any:
    """Exact GELU, ``0.5 a (1 + erf(a / sqrt(2)))``, as a custom op running gadget's vectorized CPU
    kernel (``gadget/csrc/gadget_ops.h``; |error| below 2e-7 relative to the value): what
    ``ggml_gelu_erf`` computes, several times faster. CPU backend only, contiguous F32 ``a``; use
    ``ggml_gelu_erf`` for other backends."""
    if a.type != lib.GGML_TYPE_F32 or not lib.ggml_is_contiguous(a):
        raise GgmlOpError(f'gadget_gelu_erf: needs a contiguous F32 tensor, got {describe_tensor(a)}'
                          f'{"" if lib.ggml_is_contiguous(a) else " (not contiguous)"}')
    out = __getattr__('ggml_map_custom1')(ctx, a, ffi.addressof(lib, 'gadget_op_gelu_erf'),
                                          lib.GGML_N_TASKS_MAX, ffi.NULL)
    if name is not None:
        _set_name(out, name)
    return out


def gadget_attention(ctx: Any, q: Any, k: Any, v: Any, lengths: Any, name: str | None = None) -> Any:
    """Scaled dot-product attention within each of ``n_seq`` sequences of at most ``n_len`` tokens,
    as a custom op running gadget's CPU kernel (``gadget/csrc/gadget_ops.h``): for short
    sequences, where GGML's batched products and its untiled flash attention spend their time on
    overhead, and with every sum in a fixed order, so a sequence's result does not depend on the
    batch it is in.

    Arguments:
        q, k, v: (head_dim, n_head, n_len, n_seq), contiguous F32 (a linear layer's output reshaped).
        lengths: I32 (n_seq,): the real tokens of each sequence; its queries attend to its first
            ``length`` keys, with scale ``1 / sqrt(head_dim)``; rows past the length are zero.

    Returns (head_dim * n_head, n_len * n_seq). CPU backend only.
    """
    for label, t in (('q', q), ('k', k), ('v', v)):
        if t.type != lib.GGML_TYPE_F32 or not lib.ggml_is_contiguous(t) or any(
                t.ne[i] != q.ne[i] for i in range(4)):
            raise GgmlOpError(f'gadget_attention: {label} must be a contiguous F32 tensor shaped like q '
                              f'({describe_tensor(q)}), got {describe_tensor(t)}')
    if lengths.type != lib.GGML_TYPE_I32 or lib.ggml_nelements(lengths) != q.ne[3] \
            or not lib.ggml_is_contiguous(lengths):
        raise GgmlOpError(f'gadget_attention: lengths must be I32 with one entry per sequence ({q.ne[3]}), '
                          f'got {describe_tensor(lengths)}')
    if q.ne[2] > 4096:
        raise GgmlOpError(f'gadget_attention: sequences of {q.ne[2]} tokens are too long for this kernel '
                          '(at most 4096): use ggml_flash_attn_ext')
    args = ffi.new('struct ggml_tensor *[4]', [q, k, v, lengths])
    out = __getattr__('ggml_custom_4d')(ctx, lib.GGML_TYPE_F32, q.ne[0] * q.ne[1], q.ne[2] * q.ne[3], 1, 1,
                                        args, 4, ffi.addressof(lib, 'gadget_op_attention'),
                                        lib.GGML_N_TASKS_MAX, ffi.NULL)
    if name is not None:
        _set_name(out, name)
    return out


def _fail(op: str, params: tuple[str, ...], args: tuple[Any, ...], result: Any) -> Any:
    """Raise the pending GGML failure of this thread for ``op``, or return ``result`` if none."""
    message = lib.gadget_take_error()
    if message == ffi.NULL:
        return result
    text = ffi.string(message).decode('utf-8', 'replace')
    # GGML's text is 'path/to/ggml.c:3282: GGML_ASSERT(...) failed'.
    where, _, reason = text.partition(': ')
    where = where.rsplit('/', 1)[-1]
    shapes = [f'{p}: {describe_tensor(a)}' for p, a in zip(params, args)
              if isinstance(a, ffi.CData) and ffi.typeof(a) is _TENSOR_PTR]
    detail = f" ({'; '.join(shapes)}; shapes in ggml order, ne[0] first)" if shapes else ''
    if 'obj_new' in reason:
        reason += (": the context's memory pool is full; create it with a larger mem_size "
                   '(or no_alloc=True and allocate tensors in a backend buffer)')
    raise GgmlOpError(f'{op}: {reason or text} [{where}]{detail}', op=op, reason=reason, where=where)


_REQUIRED_CPU_ARGS = frozenset({'ctx', 'cgraph', 'cplan'})


def _set_name(tensor: Any, name: str | bytes) -> None:
    lib.ggml_set_name(tensor, name.encode() if isinstance(name, str) else name)


def _make_wrapper(c_name: str, info: dict[str, Any]) -> Callable[..., Any]:
    """Generate the Python wrapper of one C function (straight-line code, no *args)."""
    # Functions of backend modules report a module that is not loaded as a pending error, like a guard.
    guarded = info['guarded'] or info.get('module') is not None
    target = getattr(lib, f'gadget_guard_{c_name}' if info['guarded'] else c_name)
    params = [p + '_' if keyword.iskeyword(p) else p for p in info['params']]
    takes_name = info['graph_op'] and 'name' not in params
    # The CPU backend's graph functions run on GGML's worker threads, where no guard can catch a
    # fault: the context, graph and plan they are given must not be NULL.
    required = [p for p in params if info['header'] == 'ggml-cpu.h' and p in _REQUIRED_CPU_ARGS]
    if not guarded and not info['strings'] and not required:
        return target  # nothing to add: the raw C function is the fastest wrapper

    lines = []
    for p in required:
        lines.append(f'    if {p} is None or {p} == _NULL: raise _GgmlOpError('
                     f'"{c_name}: argument {p} is NULL", op={c_name!r}, reason="{p} is NULL")')
    for i in info['strings']:
        p = params[i]
        lines.append(f'    if {p}.__class__ is str: {p} = {p}.encode()')
    variadic = ['*varargs'] if info['variadic'] else []
    call = f"_c({', '.join(params + variadic)})"
    arg_tuple = f"({', '.join(params)}{',' if len(params) == 1 else ''})"
    if not guarded:
        lines.append(f'    return {call}')
    elif info['returns'] in ('tensor', 'pointer'):
        lines.append(f'    r = {call}')
        lines.append(f'    if not r: return _fail({c_name!r}, _params, {arg_tuple}, r)')
        if takes_name:
            lines.append('    if name is not None: _set_name(r, name)')
        lines.append('    return r')
    else:
        lines.append(f'    r = {call}')
        lines.append(f'    if _pending(): _fail({c_name!r}, _params, {arg_tuple}, r)')
        lines.append('    return r')
    signature = ', '.join(params + variadic + (['name=None'] if takes_name else []))
    source = f'def {c_name}({signature}):\n' + '\n'.join(lines) + '\n'
    namespace = {'_c': target, '_fail': _fail, '_set_name': _set_name, '_NULL': ffi.NULL,
                 '_GgmlOpError': GgmlOpError, '_pending': lib.gadget_error_pending, '_params': tuple(params)}
    exec(compile(source, f'<gadget.ggml {c_name}>', 'exec'), namespace)
    wrapper = namespace[c_name]
    wrapper.__doc__ = info['c'] + ('\n\nname: optional name of the result node.' if takes_name else '')
    wrapper.__module__ = __name__
    return wrapper


def _camel(tag: str) -> str:
    return ''.join(part.capitalize() for part in tag.split('_'))


def _make_enum(tag: str) -> type[enum.IntEnum]:
    names = ffi.typeof(f'enum {tag}').relements
    prefix = _common_prefix(list(names))
    members = {}
    for full, value in names.items():
        short = full[len(prefix):]
        members[short if short.isidentifier() and not keyword.iskeyword(short) else full] = value
    # The functional API returns a new class; mypy types its result as a member of IntEnum.
    return cast('type[enum.IntEnum]', enum.IntEnum(_camel(tag), members, module=__name__))


def _common_prefix(names: list[str]) -> str:
    if len(names) < 2:
        return names[0].rsplit('_', 1)[0] + '_' if names and '_' in names[0] else ''
    first, last = min(names), max(names)
    i = 0
    while i < min(len(first), len(last)) and first[i] == last[i]:
        i += 1
    return first[:first[:i].rfind('_') + 1]


def _export() -> None:
    g = globals()
    __all__.extend(API['functions'])   # the wrappers themselves are made on first use (__getattr__)
    for name in dir(lib):
        if name.isupper() and name.startswith(('GGML_', 'GGUF_', 'RPC_')):
            value = getattr(lib, name)
            if isinstance(value, int):
                g[name] = value
                __all__.append(name)
    for tag in API['enums']:
        cls = _make_enum(tag)
        g[cls.__name__] = cls
        __all__.append(cls.__name__)


_export()

def __getattr__(name: str) -> Any:
    # Wrappers are generated on first use: making all of them at import would cost ~0.1 s of start-up.
    info = API['functions'].get(name)
    if info is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    wrapper = globals()[name] = _make_wrapper(name, info)
    return wrapper


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


#: gguf-py's names for the two enums users meet most.
GGMLQuantizationType = globals()['GgmlType']
GGUFValueType = globals()['GgufType']
__all__ += ['GGMLQuantizationType', 'GGUFValueType']
