"""Model architectures, one file each."""

from .llama import ContextOverflowError, LlamaModel

__all__ = ['LlamaModel', 'ContextOverflowError']
