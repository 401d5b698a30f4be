"""Model architectures, one file each, registered by ``general.architecture`` (see ``registry``)."""

from ..errors import ContextOverflowError
from .bert import BertModel
from .encoder import SequenceEncoder
from .llama import LlamaModel
from .registry import ARCHITECTURES, load_model, model_class_for, register, supported

__all__ = ['BertModel', 'SequenceEncoder', 'LlamaModel', 'ContextOverflowError', 'ARCHITECTURES',
           'load_model', 'model_class_for', 'register', 'supported']
