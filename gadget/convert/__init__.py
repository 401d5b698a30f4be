"""Hugging Face checkpoints -> GGUF files that llama.cpp (and gadget) load: a shared core
(``core.py``: output types, tensor sources, streaming, the tokenizer's metadata) and one file per
architecture (``llama.py``)."""

from .core import OUTTYPES
from .llama import LlamaHparams, convert_llama, llama3_rope_factors, llama_hparams

__all__ = ['OUTTYPES', 'LlamaHparams', 'convert_llama', 'llama3_rope_factors', 'llama_hparams']
