"""GgmlModel: models declared with class-level ``Parameter``, ``Tensor`` and ``State`` hints.

::

    class LinearModel(GgmlModel):
        weight: Tensor('F32', ('input_dim', 'output_dim'))
        inputs: Tensor('F32', ('input_dim', 'batch_size'))

        def forward(self):
            ctx = self.ctx_graph
            w, x = self.tensors['weight', 'inputs']
            return ggml_mul_mat(ctx, w, x)

    model = LinearModel.from_values(dict(weight=weight_np), input_dim=256, output_dim=32, batch_size=16)
    output_np = model(inputs=inputs_np)    # == inputs_np @ weight_np.T

* ``Parameter(default)``: a hyper-parameter. ``default`` is a value, a GGUF key (a dotted string,
  read from the file by :meth:`GgmlModel.from_gguf`; ``{arch}`` expands to ``general.architecture``),
  or a callable computing it from the other parameters (``lambda p: p['dim'] // p['n_head']``).
  Dimension names used in ``Tensor`` shapes without a declaration are parameters too.
* ``Tensor(type, shape)``: a tensor in the model's buffer; the shape is in ggml order, each
  dimension an int, a parameter name or a GGUF key. Its *role* says where its data come from:
  a weight (the default) must come from the GGUF file (by name) or from ``values``, and a model
  whose file or values lack one is refused with the missing names; ``Input(...)`` (set per call:
  token ids, masks) and ``Buffer(...)`` (state the graph writes: a KV cache) start at zero.
  Tensors of a file that no declaration uses are logged (``gadget.model`` logger, debug), or
  refused with ``strict=True``.
* ``State(default)``: a value the graph depends on (e.g. a batch size or a mode). Changing it
  (``model.state['x'] = v`` or ``model.x = v``) rebuilds the graph before the next call, and only then.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence, TypeVar

import numpy as np

from .compute import GgmlCompute, HostRegion
from .errors import ModelFileError
from .gguf import GgufFile
from .gguf import keys as K
from .types import TypeLike, as_ggml_type, is_quantized

__all__ = ['GgmlModel', 'Parameter', 'Tensor', 'Input', 'Buffer', 'State', 'ROLES', 'positive_int',
           'positive_float', 'one_of', 'divides', 'even_at_most', 'at_most', 'ggml_type_in']

log = logging.getLogger('gadget.model')

#: Where a declared tensor's data come from (see the module docstring).
ROLES = ('weight', 'input', 'buffer')

_REQUIRED = object()

#: A subclass of GgmlModel: what its alternative constructors (from_gguf, ...) return.
_Model = TypeVar('_Model', bound='GgmlModel')


class Parameter:
    """A hyper-parameter: a default value, a GGUF key, or a callable of the other parameters.

    A string with a dot and no spaces (``'llama.block_count'``, ``'{arch}.context_length'``) is a
    GGUF key; any other string is a plain value (``Parameter('F16')``).

    ``fallback`` (a value or a callable of the other parameters) is used when a GGUF key is absent
    from the file, or when the model is built with ``from_values`` and the parameter is not given.

    ``check(value, params)`` validates the resolved value (and may look at the others): it returns
    None when the value is fine, else what is allowed (``'a positive integer'``); the model is then
    refused with an error naming the parameter, its GGUF key, the value and the rule
    (:class:`~gadget.errors.ModelFileError` when the value came from the file, ``ValueError`` when
    it was given). :func:`positive_int`, :func:`positive_float`, :func:`one_of` are ready-made checks.
    """

    def __init__(self, default: Any = _REQUIRED, fallback: Any = _REQUIRED,
                 check: Callable[[Any, Mapping[str, Any]], str | None] | None = None):
        self.default = default
        self.fallback = fallback
        self.check = check

    def __repr__(self) -> str:
        return f'Parameter({"required" if self.default is _REQUIRED else repr(self.default)})'


def positive_int(value: Any, params: Mapping[str, Any] | None = None) -> str | None:
    """A check: an integer > 0 (bools are not integers here)."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value > 0
    return None if ok else 'a positive integer'


def positive_float(value: Any, params: Mapping[str, Any] | None = None) -> str | None:
    """A check: a finite number > 0."""
    number = (isinstance(value, (int, float, np.integer, np.floating))
              and not isinstance(value, (bool, np.bool_)))
    ok = number and math.isfinite(value) and value > 0
    return None if ok else 'a finite number > 0'


def divides(other: str) -> Callable[[Any, Mapping[str, Any]], str | None]:
    """A check: a positive integer dividing parameter ``other`` (KV heads dividing the heads)."""
    def check(value: Any, params: Mapping[str, Any]) -> str | None:
        ok = positive_int(value) is None and params[other] % value == 0
        return None if ok else f'a positive integer dividing {other} ({params[other]})'
    return check


def even_at_most(other: str) -> Callable[[Any, Mapping[str, Any]], str | None]:
    """A check: an even positive integer no larger than parameter ``other`` (rotated dimensions)."""
    def check(value: Any, params: Mapping[str, Any]) -> str | None:
        ok = positive_int(value) is None and value % 2 == 0 and value <= params[other]
        return None if ok else f'an even positive integer at most {other} ({params[other]})'
    return check


def at_most(other: str) -> Callable[[Any, Mapping[str, Any]], str | None]:
    """A check: a positive integer no larger than parameter ``other``."""
    def check(value: Any, params: Mapping[str, Any]) -> str | None:
        ok = positive_int(value) is None and value <= params[other]
        return None if ok else f'a positive integer at most {other} ({params[other]})'
    return check


def ggml_type_in(*allowed: str) -> Callable[[Any, Mapping[str, Any]], str | None]:
    """A check: one of the GGML types ``allowed`` (by name, any case, or as a ``GgmlType``)."""
    def check(value: Any, params: Mapping[str, Any] | None = None) -> str | None:
        try:
            ok = as_ggml_type(value).name in allowed
        except (ValueError, TypeError):
            ok = False
        return None if ok else 'one of the types ' + ', '.join(repr(a) for a in allowed)
    return check


def optional_type_in(*allowed: str) -> Callable[[Any, Mapping[str, Any]], str | None]:
    """A check: None (as stored in the file), or one of the GGML types ``allowed``."""
    inner = ggml_type_in(*allowed)

    def check(value: Any, params: Mapping[str, Any] | None = None) -> str | None:
        return None if value is None else inner(value, params or {})
    return check


def one_of(*allowed: Any) -> Callable[[Any, Mapping[str, Any]], str | None]:
    """A check: one of ``allowed``."""
    def check(value: Any, params: Mapping[str, Any] | None = None) -> str | None:
        return None if value in allowed else 'one of ' + ', '.join(repr(a) for a in allowed)
    return check


class Tensor:
    """A tensor declaration.

    Arguments:
        type: GGML type (``'F32'``, ``'Q4_0'``, ...), the name of a parameter holding one, or None
            for "as stored": the type of the GGUF tensor, or of the array given to ``from_values``
            (F32 when neither exists).
        shape: ggml order; each dimension an int, a parameter name, a GGUF key, or None ("as
            stored": from the GGUF tensor or the given array).
        name: the tensor's name (default: the attribute name); with ``repeat``, a template with
            ``{i}``, e.g. ``'blk.{i}.attn_q.weight'`` (GGUF names, so weights load by name).
        repeat: a parameter name: one tensor per ``i in range(params[repeat])`` (layers).
        optional: absent from the file (or from ``values``) is fine: the tensor is then not created,
            and ``forward`` checks ``name in self.tensors``.
        role: ``'weight'`` (default: from the file or the values, required unless ``optional``),
            ``'input'`` (set before each call) or ``'buffer'`` (written by the graph); inputs and
            buffers start at zero. ``Input(...)`` and ``Buffer(...)`` are the short forms.
    """

    def __init__(self, type: TypeLike | None, shape: tuple[int | str, ...] | list[int | str],
                 name: str | None = None, repeat: str | None = None, optional: bool = False,
                 role: str = 'weight'):
        if role not in ROLES:
            raise ValueError(f'Tensor role must be one of {ROLES}, got {role!r}')
        self.role = role
        self.type_param = None
        try:
            self.type = as_ggml_type(type) if type is not None else None
        except ValueError:
            if not isinstance(type, str):
                raise
            self.type, self.type_param = None, type   # resolved from the parameter at creation
        self.shape = tuple(shape)
        self.name = name
        self.repeat = repeat
        self.optional = optional

    def names(self, attribute: str, params: Mapping[str, Any]) -> list[str]:
        """The concrete tensor names this declaration stands for."""
        template = self.name or attribute
        if self.repeat is None:
            return [template]
        if self.repeat not in params:
            raise TypeError(f'tensor {attribute!r} repeats over {self.repeat!r}, which is not a parameter')
        return [template.format(i=i) for i in range(int(params[self.repeat]))]

    def __repr__(self) -> str:
        kind = self.type.name if self.type is not None else 'as stored'
        role = f', role={self.role!r}' if self.role != 'weight' else ''
        return f'Tensor({kind}, {self.shape}{f", name={self.name!r}" if self.name else ""}{role})'


def Input(type: TypeLike | None, shape: tuple[int | str, ...] | list[int | str], **kwargs: Any) -> Tensor:
    """A tensor set before each call (token ids, positions, masks); starts at zero."""
    return Tensor(type, shape, role='input', **kwargs)


def Buffer(type: TypeLike | None, shape: tuple[int | str, ...] | list[int | str], **kwargs: Any) -> Tensor:
    """A tensor the graph writes and keeps between calls (a KV cache); starts at zero."""
    return Tensor(type, shape, role='buffer', **kwargs)


class State:
    """A value the graph is built from; changing it rebuilds the graph before the next call."""

    def __init__(self, default: Any = None):
        self.default = default

    def __repr__(self) -> str:
        return f'State({self.default!r})'


@dataclass
class _Declarations:
    params: dict[str, Parameter]
    tensors: dict[str, Tensor]
    states: dict[str, State]


def _declarations(cls: type[GgmlModel], namespace: Mapping[str, Any]) -> _Declarations:
    params: dict[str, Parameter] = {}
    tensors: dict[str, Tensor] = {}
    states: dict[str, State] = {}
    for klass in reversed(cls.__mro__):
        annotations = klass.__dict__.get('__annotations__', {})
        module = sys.modules.get(klass.__module__)
        for name, hint in annotations.items():
            if isinstance(hint, str):  # `from __future__ import annotations` in the model's module
                scope = dict(namespace)
                if module is not None and klass is not cls:
                    scope = dict(vars(module))
                try:
                    hint = eval(hint, scope, dict(vars(klass)))
                except Exception as exc:
                    if any(hint.lstrip().startswith(k) for k in ('Parameter(', 'Tensor(', 'State(')):
                        raise TypeError(f'{cls.__name__}.{name}: cannot evaluate the declaration '
                                        f'{hint!r}: {exc}') from None
                    continue  # an ordinary annotation, not a gadget declaration
            if isinstance(hint, (Parameter, Tensor, State)):
                for table in (params, tensors, states):
                    table.pop(name, None)
                if isinstance(hint, Parameter):
                    params[name] = hint
                elif isinstance(hint, Tensor):
                    tensors[name] = hint
                else:
                    states[name] = hint
    return _Declarations(params, tensors, states)


class _StateDict(MutableMapping[str, Any]):
    """The model's states; assigning a changed value marks the graph for rebuilding."""

    def __init__(self, model: 'GgmlModel', values: dict[str, Any]):
        self._model, self._values = model, values

    def __getitem__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise KeyError(f'no state {name!r}; states: {", ".join(self._values) or "(none)"}') from None

    def __setitem__(self, name: str, value: Any) -> None:
        if name not in self._values:
            raise KeyError(f'no state {name!r}; states: {", ".join(self._values) or "(none)"}')
        old = self._values[name]
        changed = old is not value and not _same(old, value)
        self._values[name] = value
        if changed:
            self._model._dirty = True

    def __delitem__(self, name: str) -> None:
        raise TypeError('states are declared on the class and cannot be removed')

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return repr(self._values)


def _same(a: Any, b: Any) -> bool:
    try:
        result = a == b
        return bool(result) if not isinstance(result, np.ndarray) else bool(result.all())
    except Exception:
        return False


class GgmlModel(GgmlCompute):
    """Base class of declarative models. Subclasses declare hints and implement :meth:`forward`.

    Inside ``forward``: ``self.ctx_graph`` (the graph context), ``self.tensors`` (declared tensors;
    ``self.tensors['a', 'b']`` gives a tuple), ``self.params`` and ``self.state``.

    Models are made with :meth:`from_values`, :meth:`from_gguf` or :meth:`from_path`, which resolve
    the parameters and load the weights; the constructor they call takes:

    Arguments:
        params: the resolved hyper-parameters (``name -> value``).
        states: initial values of declared states (the rest take their defaults).
        gguf: the open file whose tensors declared "as stored" take their type and shape.
        backend, framework, n_threads: as for :class:`~gadget.compute.GgmlCompute`.
        values: ``name -> array`` (numpy order), consulted for tensors declared "as stored".
        compute_kwargs: the other :class:`~gadget.compute.GgmlCompute` arguments (``graph_size``,
            ``keep``, ``mapped``, ...), and ``layer_split``: with a list of backends
            (``backend=['rpc://a:50052', 'rpc://b:50052']``), each one's share of the layers
            (default: even), consecutive layers together; each layer's weights and buffers (its
            KV cache) live on its backend, the other tensors on the CPU.
    """

    _decl: _Declarations
    #: ``general.architecture`` values this class runs (set by ``models.registry.register``); empty:
    #: any file (a model assembled by hand).
    architectures: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # String annotations (postponed evaluation) are evaluated where the class is defined: the
        # caller's frame (type.__new__ and __build_class__ are C and leave no Python frame).
        frame = sys._getframe(1)
        cls._decl = _declarations(cls, {**frame.f_globals, **frame.f_locals})

    def __init__(self, params: Mapping[str, Any], states: Mapping[str, Any] | None = None,
                 gguf: GgufFile | None = None, backend: Any = 'cpu', framework: str = 'numpy',
                 n_threads: int | None = None, values: Mapping[str, Any] | None = None,
                 **compute_kwargs: Any):
        decl = type(self)._decl
        object.__setattr__(self, '_dirty', False)
        resolved = dict(params)
        # values only inform tensors declared "as stored"; from_values sets them after creation
        specs = _tensor_specs(type(self), resolved, gguf, values)
        state_values = {name: s.default for name, s in decl.states.items()}
        for name, value in (states or {}).items():
            if name not in state_values:
                raise KeyError(f'no state {name!r}; states: {", ".join(state_values) or "(none)"}')
            state_values[name] = value
        self.state = _StateDict(self, state_values)
        self.gguf = gguf
        layer_split = compute_kwargs.pop('layer_split', None)
        if isinstance(backend, (list, tuple)) and len(backend) > 1 and 'placement' not in compute_kwargs:
            compute_kwargs['placement'] = _layer_placement(type(self), resolved, specs, len(backend),
                                                           layer_split)
        elif layer_split is not None:
            raise ValueError(f'layer_split={layer_split!r} needs a list of backends to split over '
                             '(backend=[...])')
        super().__init__(resolved, specs, model=None, backend=backend, framework=framework,
                         n_threads=n_threads, **compute_kwargs)

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def _split_kwargs(cls, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        decl = cls._decl
        states = {k: kwargs.pop(k) for k in list(kwargs) if k in decl.states}
        compute = {k: kwargs.pop(k) for k in list(kwargs)
                   if k in ('backend', 'framework', 'n_threads', 'graph_size', 'keep', 'offload',
                            'scheduler', 'blas', 'layer_split', 'placement')}
        return kwargs, states, compute

    @classmethod
    def _resolve_params(cls, given: dict[str, Any], gguf: GgufFile | None) -> dict[str, Any]:
        decl = cls._decl
        dims = {d for t in decl.tensors.values() for d in t.shape if isinstance(d, str)}
        unknown = set(given) - set(decl.params) - dims
        if unknown:
            raise TypeError(f'{cls.__name__}: unknown arguments {sorted(unknown)}; parameters: '
                            f'{", ".join(sorted(set(decl.params) | dims)) or "(none)"}, states: '
                            f'{", ".join(decl.states) or "(none)"}')
        params = dict(given)
        pending = {n: p for n, p in decl.params.items() if n not in params}
        from_file: dict[str, str] = {}     # parameter -> the GGUF key its value came from
        # Values and GGUF keys first, then callables (which may use them), in declaration order.
        late: dict[str, Any] = {}
        for name, p in list(pending.items()):
            if p.default is _REQUIRED:
                raise TypeError(f'{cls.__name__}: parameter {name!r} is required; pass {name}=...')
            if _is_gguf_key(p.default):
                key = _gguf_key(p.default, gguf)
                if gguf is not None and key in gguf.fields:
                    params[name] = _gguf_value(cls.__name__, name, p.default, gguf)
                    from_file[name] = key
                elif p.fallback is not _REQUIRED:
                    late[name] = p.fallback
                else:
                    params[name] = _gguf_value(cls.__name__, name, p.default, gguf)  # raises
            elif callable(p.default):
                late[name] = p.default
            else:
                params[name] = p.default
        # The values known so far are checked before anything is computed from them.
        _check_params(cls, params, given, from_file, gguf, partial=True)
        # Callables and fallbacks may use other parameters, including each other: resolve in
        # declaration order, retrying those whose inputs are not known yet.
        while late:
            progress = False
            for name, value in list(late.items()):
                if not callable(value):
                    params[name] = value
                else:
                    try:
                        params[name] = value(params)
                    except KeyError:
                        continue
                    except (ArithmeticError, ValueError, TypeError) as exc:
                        error = ModelFileError if gguf is not None else ValueError
                        raise error(f'{cls.__name__}: parameter {name!r} cannot be computed: {exc}') from None
                del late[name]
                progress = True
            if not progress:
                name, value = next(iter(late.items()))
                try:
                    value(params)
                except KeyError as exc:
                    raise TypeError(f'{cls.__name__}: parameter {name!r} needs {exc} to be computed; '
                                    f'known: {", ".join(params)}') from None
        _check_params(cls, params, given, from_file, gguf)
        return params

    @classmethod
    def from_values(cls: type[_Model], values: Mapping[str, Any] | None = None, **kwargs: Any) -> _Model:
        """A model with tensors set from ``values`` (name → array, numpy order).

        Keyword arguments: parameters (and dimension names), states, and ``backend``, ``framework``,
        ``n_threads``, ``graph_size``, ``keep``, ``offload``, ``scheduler``, ``blas``.
        """
        given, states, compute = cls._split_kwargs(dict(kwargs))
        params = cls._resolve_params(given, None)
        values = dict(values or {})
        declared = _declared_names(cls, params)
        unknown = set(values) - set(declared)
        if unknown:
            raise KeyError(f'{cls.__name__}: no tensors {sorted(unknown)}; declared tensors: '
                           f'{", ".join(declared) or "(none)"}')
        missing = [n for n in _required_weights(cls, params) if n not in values]
        if missing:
            raise ValueError(f'{cls.__name__}: weights missing from values: {_listing(missing)} (a weight '
                             'must be given; declare per-call tensors with Input(...), state with '
                             'Buffer(...))')
        model = cls(params, states, values=values, **compute)
        return model._filled(values.items())

    @classmethod
    def from_gguf(cls: type[_Model], gguf: GgufFile, **kwargs: Any) -> _Model:
        """A model whose parameters and weights come from an open :class:`GgufFile`.

        Weights are loaded from the file by name: without a copy on a host backend (mapped from
        the file) when their type and shape match the declaration, else copied once
        (``use_mmap=False`` copies them all into the backend's own buffer). The file must stay
        open as long as the model lives (the model keeps a reference to it).

        A weight the file lacks, or has in another shape, raises :class:`ModelFileError` naming
        every such tensor, and so does a file of an architecture the class does not run. Tensors of
        the file that no declaration uses are logged, or refused with ``strict=True``.
        ``close_gguf=True`` hands the file to the model, which closes it when it is closed.
        """
        given, states, compute = cls._split_kwargs(dict(kwargs))
        use_mmap = given.pop('use_mmap', True)
        strict = given.pop('strict', False)
        close_gguf = given.pop('close_gguf', False)
        _check_architecture(cls, gguf)
        params = cls._resolve_params(given, gguf)
        specs = _check_file_weights(cls, gguf, params, strict)
        mapped = _mappable(cls, gguf, params, specs, compute) if use_mmap else None
        model = cls(params, states, gguf=gguf, mapped=mapped, **compute)
        in_place = mapped.tensors if mapped is not None else {}
        weights = set(_weight_names(cls, params))
        copied = [n for n in model.tensors if n in weights and n in gguf.tensors and n not in in_place]
        model._owns_gguf = close_gguf
        return model._filled((name, _file_value(gguf, name, model.tensors[name].type)) for name in copied)

    def _filled(self: _Model, values: Iterable[tuple[str, Any]]) -> _Model:
        """Set ``values`` into the new model and build its graph; close it on any failure."""
        try:
            for name, array in values:
                self.set_input(name, array)
            self.rebuild_graph()
        except BaseException:
            self.close()
            raise
        return self

    @classmethod
    def from_path(cls: type[_Model], path: str | Path, **kwargs: Any) -> _Model:
        """:meth:`from_gguf` on the file at ``path`` (opened memory-mapped; closed with the model)."""
        gguf = GgufFile.from_path(path)
        try:
            return cls.from_gguf(gguf, close_gguf=True, **kwargs)
        except BaseException:
            gguf.close()
            raise

    # --- graph --------------------------------------------------------------------------------

    def forward(self) -> Any:
        """Build the graph in ``self.ctx_graph``; return the output tensor(s)."""
        raise NotImplementedError(f'{type(self).__name__} must implement forward()')

    def _build(self, ctx: Any) -> Any:
        return self.forward()

    def rebuild_graph(self) -> None:
        """Build (or rebuild) the graph from ``forward`` with the current states."""
        self.create_graph()
        object.__setattr__(self, '_dirty', False)

    def ensure_graph(self) -> None:
        """Build the graph if there is none, or rebuild it if a state changed since it was built."""
        if self._dirty or self.graph is None:
            self.rebuild_graph()

    def compute(self) -> Any:
        """Rebuild the graph if a state changed, then compute it (see :meth:`GgmlCompute.compute`)."""
        self.ensure_graph()
        return super().compute()

    # --- state as attributes --------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        state = self.__dict__.get('state')
        if state is not None and name in state:
            return state[name]
        raise AttributeError(f'{type(self).__name__!s} has no attribute {name!r}')

    def __setattr__(self, name: str, value: Any) -> None:
        state = self.__dict__.get('state')
        if state is not None and name in state:
            state[name] = value
        else:
            object.__setattr__(self, name, value)

    def close(self) -> None:
        """Free the model, and its GGUF file when it owns it (opened by path); idempotent."""
        super().close()
        if self.__dict__.get('_owns_gguf') and self.gguf is not None:
            self.gguf.close()


def _mappable(cls: type[GgmlModel], gguf: GgufFile, params: dict[str, Any], specs: Mapping[str, Any],
              compute: dict[str, Any]) -> HostRegion | None:
    """Weights that can point into the file's mapping (host backend, same type and shape, aligned)."""
    backend = compute.get('backend', 'cpu')
    mapping = gguf.mapping
    if (getattr(backend, 'kind', backend) or 'cpu') != 'cpu' or mapping is None:
        return None
    from .ggml import ffi
    base = ffi.from_buffer(mapping)
    mapped = HostRegion(base=base, size=len(mapping))
    weights = set(_weight_names(cls, params))
    for name, (ttype, shape) in specs.items():
        record = gguf.tensors.get(name)
        if record is None or name not in weights:
            continue
        start = gguf.tensor_file_offset(name)
        if record.type == ttype and tuple(record.shape) == shape and start % 32 == 0:
            mapped.tensors[name] = base + start
    return mapped if mapped.tensors else None


def _layer_placement(cls: type[GgmlModel], params: Mapping[str, Any], specs: Mapping[str, Any],
                     n_backends: int, fractions: Sequence[float] | None) -> dict[str, int]:
    """``tensor name -> backend index`` for a model split over ``n_backends`` backends: the
    tensors of layer ``i`` (declared with ``repeat``) go to one backend, consecutive layers to
    the same one, each backend's share of the layers as in ``fractions`` (default: even). Tensors
    of no layer (embeddings, the head, the inputs) are placed nowhere: they stay on the CPU."""
    if fractions is None:
        fractions = [1.0] * n_backends
    try:
        shares = [float(f) for f in fractions]
    except (TypeError, ValueError):
        raise ValueError(f'layer_split must be a list of {n_backends} numbers, got {fractions!r}') from None
    if len(shares) != n_backends or any(not math.isfinite(f) or f < 0 for f in shares) or sum(shares) <= 0:
        raise ValueError(f'layer_split must give {n_backends} non-negative fractions (one per backend, not '
                         f'all zero), got {list(fractions)!r}')
    total = sum(shares)
    placement = {}
    for attr, t in cls._decl.tensors.items():
        if t.repeat is None:
            continue
        n_layers = int(params[t.repeat])
        ends, acc = [], 0.0
        for f in shares:
            acc += f / total
            ends.append(round(acc * n_layers))
        for i, name in enumerate(t.names(attr, params)):
            if name in specs:
                placement[name] = next(k for k, end in enumerate(ends) if i < end or k == n_backends - 1)
    return placement


def _file_value(gguf: GgufFile, name: str, wanted: int) -> Any:
    """A weight's data from the file, for a tensor of type ``wanted``: raw blocks for a quantized
    tensor of the same type, float32 when a quantized one is declared in another type (converted
    on the way in), the stored array otherwise."""
    stored = gguf.get_tensor_type(name)
    if is_quantized(stored) and int(stored) != int(wanted):
        return gguf.dequantize(name)
    return gguf.get_tensor(name)


def _declared_names(cls: type[GgmlModel], params: Mapping[str, Any]) -> list[str]:
    return [n for attr, t in cls._decl.tensors.items() for n in t.names(attr, params)]


def _weight_names(cls: type[GgmlModel], params: Mapping[str, Any]) -> list[str]:
    return [n for attr, t in cls._decl.tensors.items() if t.role == 'weight' for n in t.names(attr, params)]


def _required_weights(cls: type[GgmlModel], params: Mapping[str, Any]) -> list[str]:
    return [n for attr, t in cls._decl.tensors.items() if t.role == 'weight' and not t.optional
            for n in t.names(attr, params)]


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ', '.join(names[:limit])
    return shown + (f' and {len(names) - limit} more' if len(names) > limit else '')


def _check_params(cls: type[GgmlModel], params: dict[str, Any], given: Mapping[str, Any],
                  from_file: Mapping[str, str], gguf: GgufFile | None, partial: bool = False) -> None:
    """Run every declared check; the first failure names the parameter, where its value came from,
    the value and the rule. ``partial``: some parameters are not known yet; a check that needs one
    of them waits for the final pass."""
    for name, p in cls._decl.params.items():
        if p.check is None or name not in params:
            continue
        value = params[name]
        try:
            rule = p.check(value, params)
        except KeyError:
            if partial:
                continue
            raise
        except (TypeError, ValueError, ArithmeticError):
            rule = 'a value this check can evaluate'
        if rule is None:
            continue
        if name in from_file:
            where = str(gguf.path) if gguf is not None and gguf.path else 'the GGUF file'
            raise ModelFileError(f'{where}: {from_file[name]} = {value!r} is not valid for {cls.__name__}: '
                                 f'{name} must be {rule}')
        source = 'given' if name in given else 'derived from the other parameters'
        raise ValueError(f'{cls.__name__}: {name} = {value!r} ({source}) must be {rule}')


def _check_architecture(cls: type[GgmlModel], gguf: GgufFile) -> None:
    if not cls.architectures:
        return
    architecture = gguf.get_field(K.ARCHITECTURE, None)
    if architecture not in cls.architectures:
        where = str(gguf.path) if gguf.path else 'the GGUF file'
        raise ModelFileError(f'{where} is a {architecture!r} model (general.architecture); {cls.__name__} '
                             f'runs: {", ".join(cls.architectures)}')


def _check_file_weights(cls: type[GgmlModel], gguf: GgufFile, params: dict[str, Any],
                        strict: bool) -> dict[str, tuple[Any, tuple[int, ...]]]:
    """Every weight the model needs is in the file, in the declared shape; report what is unused.
    Returns the tensor specs (``name -> (type, ggml shape)``) for the file."""
    where = str(gguf.path) if gguf.path else 'the GGUF file'
    missing = [n for n in _required_weights(cls, params) if n not in gguf.tensors]
    if missing:
        raise ModelFileError(f'{where}: {cls.__name__} needs weights the file lacks: {_listing(missing)} '
                             f'(the file has {len(gguf.tensors)} tensors; a truncated or mislabelled file?)')
    specs = _tensor_specs(cls, params, gguf, None)
    wrong = []
    for name in _weight_names(cls, params):
        record = gguf.tensors.get(name)
        if record is not None and name in specs and tuple(record.shape) != specs[name][1]:
            wrong.append(f'{name} is {list(record.shape)}, expected {list(specs[name][1])}')
    if wrong:
        raise ModelFileError(f'{where}: weights of the wrong shape for {cls.__name__} (ggml order; the '
                             f'shapes follow from the file\'s hyper-parameters): {_listing(wrong, 6)}')
    unused = sorted(set(gguf.tensors) - set(_weight_names(cls, params)))
    if unused and strict:
        raise ModelFileError(f'{where}: tensors no part of {cls.__name__} uses (strict=True): '
                             f'{_listing(unused)}')
    if unused:
        log.debug('%s: tensors %s uses none of: %s', where, cls.__name__, _listing(unused))
    return specs


def _tensor_specs(cls: type[GgmlModel], params: dict[str, Any], gguf: GgufFile | None,
                  values: Mapping[str, Any] | None) -> dict[str, tuple[Any, tuple[int, ...]]]:
    """``name -> (type, ggml shape)`` for every tensor to create, resolving names, types, shapes."""
    from .arrays import to_numpy_input
    from .types import ggml_type_for_dtype, GgmlType
    specs = {}
    for attr, t in cls._decl.tensors.items():
        for name in t.names(attr, params):
            record = gguf.tensors.get(name) if gguf is not None else None
            value = values.get(name) if values else None
            if t.optional and record is None and value is None:
                continue
            shape = tuple(_stored_dimension(cls, name, i, record, value) if d is None
                          else _dimension(cls, name, d, params, gguf) for i, d in enumerate(t.shape))
            ttype = t.type
            if t.type_param is not None:
                if t.type_param not in params:
                    raise TypeError(f'tensor {name!r}: its type comes from parameter {t.type_param!r}, '
                                    'which is not set')
                # a parameter holding None means "as stored"
                ttype = as_ggml_type(params[t.type_param]) if params[t.type_param] is not None else None
            if ttype is None:
                if record is not None:
                    ttype = record.type
                elif value is not None:
                    ttype = ggml_type_for_dtype(to_numpy_input(value).dtype)
                else:
                    ttype = GgmlType.F32
            specs[name] = (ttype, shape)
    return specs


def _is_gguf_key(value: Any) -> bool:
    # GGUF keys are dotted ('general.name', '{arch}.block_count'); other strings are plain values.
    return isinstance(value, str) and '.' in value and ' ' not in value


def _gguf_key(key: str, gguf: GgufFile | None) -> str:
    if '{arch}' in key and gguf is not None:
        key = key.replace('{arch}', str(gguf.get_field(K.ARCHITECTURE, '')))
    return key


def _gguf_value(model: str, name: str, key: str, gguf: GgufFile | None) -> Any:
    if gguf is None:
        raise TypeError(f'{model}: parameter {name!r} comes from GGUF key {key!r}: pass {name}=... '
                        'or load the model with from_gguf / from_path')
    if '{arch}' in key:
        key = key.replace('{arch}', str(gguf.get_field(K.ARCHITECTURE, '')))
    if key not in gguf.fields:
        raise KeyError(f'{model}: parameter {name!r} needs GGUF field {key!r}, which the file lacks; '
                       f'pass {name}=... (fields: {", ".join(gguf.fields)})')
    value = gguf.get_field(key)
    return value.item() if isinstance(value, np.generic) else value


def _stored_dimension(model: Any, tensor: str, i: int, record: Any, value: Any) -> int:
    """A dimension declared None: taken from the GGUF tensor or from the given array."""
    if record is not None:
        return int(record.shape[i])
    if value is not None:
        from .arrays import to_numpy_input
        shape = to_numpy_input(value).shape[::-1]
        return int(shape[i]) if i < len(shape) else 1
    owner = getattr(model, '__name__', None) or type(model).__name__
    raise TypeError(f'{owner}: tensor {tensor!r} has dimension {i} "as stored", but neither a GGUF tensor '
                    'nor a value gives it')


def _dimension(model: Any, tensor: str, dim: int | str, params: dict[str, Any], gguf: GgufFile | None) -> int:
    if isinstance(dim, (int, np.integer)):
        return int(dim)
    if dim in params:
        value = params[dim]
    elif gguf is not None and dim in gguf.fields:
        value = gguf.get_field(dim)
    else:
        owner = getattr(model, '__name__', None) or type(model).__name__
        raise TypeError(f'{owner}: tensor {tensor!r} has dimension {dim!r}, which is neither a parameter '
                        f'nor a GGUF field; pass {dim}=... (parameters: {", ".join(params) or "(none)"})')
    try:
        return int(value)
    except (TypeError, ValueError):
        raise TypeError(f'tensor {tensor!r}: dimension {dim!r} = {value!r} is not an integer') from None

