"""The micro-world (procedural stand-in for every dataset of the paper), its tokenizer and loaders.

Public API: :func:`generate_world`, :func:`load_world`, :class:`World`, :func:`load_tokenizer`,
:func:`image_to_tensor`, :func:`encode_text`, :class:`PairDataset`, :func:`mask_tokens`,
:func:`whole_word_mask`, :func:`patch_codes`.
"""

from __future__ import annotations

from vlmerge_core.data.layout import SPLITS, STYLES, WORLD_FORMAT
from vlmerge_core.data.loaders import (
    MLM_IGNORE_INDEX,
    PairDataset,
    continuation_pieces,
    encode_text,
    image_to_tensor,
    mask_tokens,
    patch_codes,
    patchify,
    whole_word_mask,
)
from vlmerge_core.data.tokenizer import SPECIAL_TOKENS, load_tokenizer
from vlmerge_core.data.world import World, ensure_world, generate_world, load_world

__all__ = [
    "MLM_IGNORE_INDEX",
    "SPECIAL_TOKENS",
    "SPLITS",
    "STYLES",
    "WORLD_FORMAT",
    "PairDataset",
    "World",
    "continuation_pieces",
    "encode_text",
    "ensure_world",
    "generate_world",
    "image_to_tensor",
    "load_tokenizer",
    "load_world",
    "mask_tokens",
    "patch_codes",
    "patchify",
    "whole_word_mask",
]
