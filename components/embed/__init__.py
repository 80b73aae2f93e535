"""The embed stage: item and user understanding with a pretrained text encoder.

Items are turned into text by a template, encoded with a Hugging Face encoder (mean pooling,
L2 norm) and cached by (encoder id, text hash), so a re-run encodes only new or changed texts.
Users are the weighted mean of the vectors of what they consumed; free-text queries go through
the same encoder, which is how brand-new users and items are served.

- :mod:`~components.embed.text`: the item text template and text hashes.
- :mod:`~components.embed.encoder`: :class:`TextEncoder`, its identity, precision and loading.
- :mod:`~components.embed.onnx`: the ONNX Runtime backend's export, quantisation and sessions.
- :mod:`~components.embed.cache`: :class:`EmbeddingCache`, vectors by text hash.
- :mod:`~components.embed.stage`: the stage functions and :class:`ItemEmbeddings`.
- :mod:`~components.embed.profile`: user interest vectors from a history.

Module settings such as ``SORT_WINDOW`` are read by the module that defines them; set them there.
"""

from components.embed.cache import EmbeddingCache
from components.embed.encoder import (
    BACKENDS,
    PRECISIONS,
    QUANTIZE_MODES,
    TextEncoder,
    configure_threads,
    cpu_flags,
    cpu_has_bf16,
    default_encoder_path,
    encode_query,
    encoder_from_settings,
    encoder_identity,
    length_batches,
    load_encoder,
    resolve_precision,
)
from components.embed.onnx import ensure_onnx_export
from components.embed.profile import interest_weights, user_interest_vector
from components.embed.stage import ItemEmbeddings, embed_items, embed_shard, has_text, plan_shards
from components.embed.text import ITEM_TEXT_SEGMENTS, compose_item_text, item_texts, text_hash

__all__ = [
    "BACKENDS",
    "ITEM_TEXT_SEGMENTS",
    "PRECISIONS",
    "QUANTIZE_MODES",
    "EmbeddingCache",
    "ItemEmbeddings",
    "TextEncoder",
    "compose_item_text",
    "configure_threads",
    "cpu_flags",
    "cpu_has_bf16",
    "default_encoder_path",
    "embed_items",
    "embed_shard",
    "encode_query",
    "encoder_from_settings",
    "encoder_identity",
    "ensure_onnx_export",
    "has_text",
    "interest_weights",
    "item_texts",
    "length_batches",
    "load_encoder",
    "plan_shards",
    "resolve_precision",
    "text_hash",
    "user_interest_vector",
]
