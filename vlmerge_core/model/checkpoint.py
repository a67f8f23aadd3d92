"""Model checkpoints as safetensors with the model config in the metadata.

Metadata: ``{"model_config": <json>, "kind": "ms"|"ma", "format": FORMAT, "tokenizer": <json>, ...extra}``;
``tokenizer`` (the pre-training tokenizer's identity, :func:`~vlmerge_core.data.tokenizer.tokenizer_identity`)
travels as the model's ``tokenizer_info`` attribute and is checked when a task is built. :data:`FORMAT` is
the one checkpoint format tag of the suite and :func:`model_config_from_meta` the one reader of the
stored ``model_config``; every writer and reader of checkpoints (merge, convert) imports them.
Loading is strict: a missing, unexpected or differently shaped tensor raises an error naming the
first such tensor, so that a checkpoint of another architecture never loads silently.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlmerge_core.config import ModelConfig, section_from_dict
from vlmerge_core.io import load_safetensors, read_safetensors_metadata, save_safetensors
from vlmerge_core.model.multiway import MultiwayTransformer

__all__ = [
    "FORMAT",
    "CheckpointMismatchError",
    "load_model",
    "load_state",
    "load_state_strict",
    "model_config_from_meta",
    "model_config_of",
    "save_model",
    "tokenizer_from_meta",
]

FORMAT = "vlmerge-v1"  # the checkpoint format tag (safetensors metadata "format")


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model (names the first mismatching tensor)."""


def save_model(path: str | Path, model: nn.Module, extra_meta: Mapping[str, Any] | None = None) -> Path:
    """Save ``model``'s state dict and config atomically as safetensors.

    Args:
        path: target ``.safetensors`` file.
        model: a :class:`MultiwayTransformer`.
        extra_meta: more metadata (values that are not strings are JSON-encoded).
    """
    meta = {
        "model_config": json.dumps(dataclasses.asdict(model.cfg), sort_keys=True),
        "kind": model.kind,
        "format": FORMAT,
    }
    if getattr(model, "tokenizer_info", None):
        meta["tokenizer"] = json.dumps(model.tokenizer_info, sort_keys=True)
    meta.update(extra_meta or {})
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return save_safetensors(path, state, meta)


def model_config_from_meta(meta: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """The ``model_config`` mapping stored in a checkpoint's metadata (a JSON string or a mapping).

    Args:
        meta: the safetensors metadata of ``path``.
        path: the checkpoint, named in the error.

    Raises:
        CheckpointMismatchError: the metadata holds no ``model_config`` or not valid JSON.
    """
    if "model_config" not in meta:
        raise CheckpointMismatchError(
            f"{path}: no model_config in the safetensors metadata (not a vlmerge checkpoint?); "
            "convert official checkpoints with `vlmerge convert` first"
        )
    cfg = meta["model_config"]
    if not isinstance(cfg, str):
        return dict(cfg)
    try:
        return json.loads(cfg)
    except json.JSONDecodeError as exc:
        raise CheckpointMismatchError(
            f"{path}: model_config in the metadata is not valid JSON ({exc})"
        ) from None


def tokenizer_from_meta(meta: Mapping[str, Any], path: str | Path) -> dict[str, Any] | None:
    """The recorded tokenizer identity of a checkpoint, or None when it records none."""
    raw = meta.get("tokenizer")
    if not raw:
        return None
    try:
        return json.loads(raw) if isinstance(raw, str) else dict(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointMismatchError(
            f"{path}: tokenizer in the metadata is not valid JSON ({exc})"
        ) from None


def model_config_of(path: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` stored in a checkpoint's metadata (checked as ``params.yaml`` is)."""
    cfg = model_config_from_meta(read_safetensors_metadata(path), path)
    return section_from_dict(ModelConfig, cfg, src=str(path), prefix="model")


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a checkpoint (errors name the file)."""
    return load_safetensors(path)


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], src: str = "<state>") -> None:
    """``model.load_state_dict(state)`` with an error naming the first mismatching tensor."""
    own = model.state_dict()
    for name, t in own.items():
        if name not in state:
            raise CheckpointMismatchError(
                f"{src}: missing tensor {name!r} {tuple(t.shape)} (checkpoint of another architecture?)"
            )
        if tuple(state[name].shape) != tuple(t.shape):
            raise CheckpointMismatchError(
                f"{src}: tensor {name!r} has shape {tuple(state[name].shape)}, "
                f"the model expects {tuple(t.shape)}"
            )
    extra = [n for n in state if n not in own]
    if extra:
        raise CheckpointMismatchError(
            f"{src}: unexpected tensor {extra[0]!r} ({len(extra)} unexpected; "
            "checkpoint of another architecture?)"
        )
    model.load_state_dict(dict(state), strict=True)


def load_model(path: str | Path, cfg_override: ModelConfig | None = None) -> nn.Module:
    """Build a :class:`MultiwayTransformer` from a checkpoint.

    Args:
        path: a checkpoint written by :func:`save_model` (or a merged checkpoint with its metadata).
        cfg_override: build this architecture instead of the stored one; the tensors must fit it.

    Raises:
        CheckpointMismatchError: the tensors do not fit the architecture (names the first one).
    """

    cfg = cfg_override if cfg_override is not None else model_config_of(path)
    model = MultiwayTransformer(cfg)
    state, meta = load_state(path)
    load_state_strict(model, state, src=str(path))
    model.tokenizer_info = tokenizer_from_meta(meta, path)
    return model
