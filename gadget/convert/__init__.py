"""Hugging Face checkpoints -> GGUF files that llama.cpp (and gadget) load: a shared core
(``core.py``: output types, tensor sources, streaming, the tokenizer's metadata) and one file per
architecture (``llama.py``, ``bert.py``); :func:`convert` picks the converter from the checkpoint's
``config.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .bert import BertHparams, bert_hparams, convert_bert
from .core import OUTTYPES
from .llama import LlamaHparams, convert_llama, llama3_rope_factors, llama_hparams

__all__ = ['OUTTYPES', 'CONVERTERS', 'convert', 'BertHparams', 'bert_hparams', 'convert_bert', 'LlamaHparams',
           'convert_llama', 'llama3_rope_factors', 'llama_hparams']

#: ``model_type`` of a Hugging Face ``config.json`` -> the converter for it.
CONVERTERS = {'llama': convert_llama, 'mistral': convert_llama, 'bert': convert_bert}


def convert(source: str | os.PathLike | Any, out_path: str | os.PathLike, outtype: str = 'F16',
            **kwargs: Any) -> Path:
    """Convert a checkpoint folder (or a transformers model) with the converter for its
    ``model_type`` (see :data:`CONVERTERS`); keyword arguments go to that converter."""
    if isinstance(source, (str, os.PathLike)):
        config_file = Path(source) / 'config.json'
        if not config_file.is_file():
            raise FileNotFoundError(f'{source}: no config.json (pass a Hugging Face checkpoint folder)')
        model_type = json.loads(config_file.read_text(encoding='utf-8')).get('model_type')
    else:
        model_type = getattr(getattr(source, 'config', None), 'model_type', None)
    converter = CONVERTERS.get(model_type)
    if converter is None:
        raise ValueError(f'unsupported architecture {model_type!r}; gadget converts: {", ".join(CONVERTERS)}')
    return converter(source, out_path, outtype=outtype, **kwargs)
