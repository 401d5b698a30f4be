"""The GGUF metadata keys gadget reads and writes, in one table (llama.cpp's names).

Keys under an architecture's prefix are templates with ``{arch}`` (``'{arch}.block_count'``):
:func:`arch_key` fills it in, and ``Parameter('{arch}.block_count')`` declarations expand it from
the file's ``general.architecture``.
"""

from __future__ import annotations

__all__ = ['arch_key']

# general.*
ARCHITECTURE = 'general.architecture'
NAME = 'general.name'
TYPE = 'general.type'
FILE_TYPE = 'general.file_type'
QUANTIZATION_VERSION = 'general.quantization_version'
ALIGNMENT = 'general.alignment'

# {arch}.*: hyper-parameters
VOCAB_SIZE = '{arch}.vocab_size'
CONTEXT_LENGTH = '{arch}.context_length'
EMBEDDING_LENGTH = '{arch}.embedding_length'
BLOCK_COUNT = '{arch}.block_count'
FEED_FORWARD_LENGTH = '{arch}.feed_forward_length'
HEAD_COUNT = '{arch}.attention.head_count'
HEAD_COUNT_KV = '{arch}.attention.head_count_kv'
KEY_LENGTH = '{arch}.attention.key_length'
VALUE_LENGTH = '{arch}.attention.value_length'
LAYER_NORM_RMS_EPSILON = '{arch}.attention.layer_norm_rms_epsilon'
LAYER_NORM_EPSILON = '{arch}.attention.layer_norm_epsilon'
ATTENTION_CAUSAL = '{arch}.attention.causal'
POOLING_TYPE = '{arch}.pooling_type'             # llama.cpp's enum: see POOLING_TYPES
ROPE_DIMENSION_COUNT = '{arch}.rope.dimension_count'
ROPE_FREQ_BASE = '{arch}.rope.freq_base'
ROPE_SCALING_TYPE = '{arch}.rope.scaling.type'
ROPE_SCALING_FACTOR = '{arch}.rope.scaling.factor'
ROPE_SCALING_ORIGINAL_CONTEXT_LENGTH = '{arch}.rope.scaling.original_context_length'

# tokenizer.*
TOKENIZER_MODEL = 'tokenizer.ggml.model'
TOKENIZER_PRE = 'tokenizer.ggml.pre'
TOKENS = 'tokenizer.ggml.tokens'
TOKEN_TYPE = 'tokenizer.ggml.token_type'
SCORES = 'tokenizer.ggml.scores'
MERGES = 'tokenizer.ggml.merges'
BOS_ID = 'tokenizer.ggml.bos_token_id'
EOS_ID = 'tokenizer.ggml.eos_token_id'
EOT_ID = 'tokenizer.ggml.eot_token_id'
EOM_ID = 'tokenizer.ggml.eom_token_id'
UNK_ID = 'tokenizer.ggml.unknown_token_id'
PAD_ID = 'tokenizer.ggml.padding_token_id'
CLS_ID = 'tokenizer.ggml.cls_token_id'
SEP_ID = 'tokenizer.ggml.seperator_token_id'     # sic: llama.cpp's spelling
MASK_ID = 'tokenizer.ggml.mask_token_id'
TOKEN_TYPE_COUNT = 'tokenizer.ggml.token_type_count'
LOWERCASE = 'tokenizer.ggml.normalizer.lowercase'
ADD_BOS = 'tokenizer.ggml.add_bos_token'
ADD_EOS = 'tokenizer.ggml.add_eos_token'
ADD_SPACE_PREFIX = 'tokenizer.ggml.add_space_prefix'
CHAT_TEMPLATE = 'tokenizer.chat_template'

# gadget's own: the sequence length a sentence-transformers model truncates to (its
# max_seq_length), which may be shorter than the positions it has ({arch}.context_length).
MAX_SEQUENCE_LENGTH = 'gadget.max_sequence_length'

#: ``{arch}.pooling_type`` values (llama.cpp's ``enum llama_pooling_type``) -> gadget's names.
POOLING_TYPES = {0: 'none', 1: 'mean', 2: 'cls', 3: 'last'}


def arch_key(template: str, architecture: str) -> str:
    """``'{arch}.block_count'`` -> ``'llama.block_count'``."""
    return template.replace('{arch}', architecture)
