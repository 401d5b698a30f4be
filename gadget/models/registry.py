"""The architecture registry: ``general.architecture`` of a GGUF file -> the model class running it.

Model files register themselves (``@register('llama')`` on the class); :func:`model_class_for`
and :func:`load_model` look the file's architecture up, and an architecture no class runs is
refused with the list of those that are supported.
"""

from __future__ import annotations

import os
from typing import Any, Callable, TypeVar

from ..errors import ModelFileError
from ..gguf import GgufFile
from ..gguf import keys as K
from ..model import GgmlModel

__all__ = ['ARCHITECTURES', 'register', 'supported', 'model_class_for', 'load_model']

#: ``general.architecture`` -> model class.
ARCHITECTURES: dict[str, type[GgmlModel]] = {}

_Class = TypeVar('_Class', bound=type[GgmlModel])


def register(*architectures: str) -> Callable[[_Class], _Class]:
    """Class decorator: the class runs files of these architectures (its ``architectures``)."""
    def decorate(cls: _Class) -> _Class:
        for name in architectures:
            if name in ARCHITECTURES and ARCHITECTURES[name] is not cls:
                raise ValueError(f'architecture {name!r} is already run by {ARCHITECTURES[name].__name__}')
            ARCHITECTURES[name] = cls
        cls.architectures = tuple(dict.fromkeys([*getattr(cls, 'architectures', ()), *architectures]))
        return cls
    return decorate


def supported() -> list[str]:
    """The architectures a registered class runs, sorted (``['bert', 'llama']``)."""
    return sorted(ARCHITECTURES)


def model_class_for(gguf: GgufFile) -> type[GgmlModel]:
    """The model class for the file's ``general.architecture``."""
    where = str(gguf.path) if gguf.path else 'the GGUF file'
    architecture = gguf.get_field(K.ARCHITECTURE, None)
    if not isinstance(architecture, str) or not architecture:
        raise ModelFileError(f'{where} has no general.architecture: not a model file? '
                             f'supported architectures: {", ".join(supported())}')
    cls = ARCHITECTURES.get(architecture)
    if cls is None:
        raise ModelFileError(f'{where}: architecture {architecture!r} is not supported; supported: '
                             f'{", ".join(supported())}')
    return cls


def load_model(source: GgufFile | str | os.PathLike, model_class: type[GgmlModel] | None = None,
               **kwargs: Any) -> Any:
    """The model of a GGUF file (an open :class:`GgufFile` or a path, which the model then owns and
    closes), of the class its architecture is registered to unless ``model_class`` is given.

    Arguments:
        source: the file, open or by path.
        model_class: the :class:`~gadget.model.GgmlModel` subclass to run it with.
        kwargs: passed to ``model_class.from_gguf`` (parameters, states, ``backend``, ...).

    Returns:
        An instance of that class: typed ``Any``, since callers use the class's own call signature
        (a decoder's ``model(tokens)``), which the :class:`GgmlModel` base does not have.
    """
    owned = not isinstance(source, GgufFile)
    gguf = source if isinstance(source, GgufFile) else GgufFile.from_path(source)
    try:
        cls = model_class if model_class is not None else model_class_for(gguf)
        return cls.from_gguf(gguf, close_gguf=owned, **kwargs)
    except BaseException:
        if owned:
            gguf.close()
        raise
