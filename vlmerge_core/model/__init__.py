"""The VLMo-style multiway transformer (MS and MA), its heads, initialisation and checkpoints."""

from __future__ import annotations

from vlmerge_core.model.block import COMPONENTS, MS_VARIANTS, MultiwayBlock, experts_for_block
from vlmerge_core.model.checkpoint import (
    CheckpointMismatchError,
    load_model,
    load_state,
    load_state_strict,
    model_config_of,
    save_model,
)
from vlmerge_core.model.init import init_ms_from_ma, init_weights, load_timm_into_v, strip_expert
from vlmerge_core.model.multiway import MultiwayTransformer

__all__ = [
    "COMPONENTS",
    "MS_VARIANTS",
    "CheckpointMismatchError",
    "MultiwayBlock",
    "MultiwayTransformer",
    "experts_for_block",
    "init_ms_from_ma",
    "init_weights",
    "load_model",
    "load_state",
    "load_state_strict",
    "load_timm_into_v",
    "model_config_of",
    "save_model",
    "strip_expert",
]
