"""The VLMo-style multiway transformer (MS and MA), its experts, heads, initialisation and checkpoints.

Names are imported on first use (PEP 562): ``vlmerge_core.model.experts`` (pure Python) can be read
by :mod:`vlmerge_core.config` without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "COMPONENTS": "experts",
    "EXPERTS": "experts",
    "EXPERT_KEY": "experts",
    "experts_for_block": "experts",
    "strip_expert": "experts",
    "MS_VARIANTS": "block",
    "MultiwayBlock": "block",
    "FORMAT": "checkpoint",
    "CheckpointMismatchError": "checkpoint",
    "load_model": "checkpoint",
    "load_state": "checkpoint",
    "load_state_strict": "checkpoint",
    "model_config_from_meta": "checkpoint",
    "model_config_of": "checkpoint",
    "save_model": "checkpoint",
    "init_ms_from_ma": "init",
    "init_multiway_weights": "init",
    "load_timm_into_v": "init",
    "rescale_residual_": "init",
    "MultiwayTransformer": "multiway",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"vlmerge_core.model.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vlmerge_core.model' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(_LAZY)
