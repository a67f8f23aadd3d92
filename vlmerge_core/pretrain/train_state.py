"""The train state: all that a pre-training run needs to resume exactly, in one safetensors file.

It holds the weights (``model.*``), AdamW's state (``opt.*``), the torch (and CUDA) RNG states
(``rng.*``), and as metadata the step, the loss history, the optimizer's hyperparameters and the
run's configs and stage, which a resume checks against its own.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from vlmerge_core.config import ModelConfig, PretrainConfig
from vlmerge_core.io import load_safetensors, save_safetensors
from vlmerge_core.model import load_state_strict
from vlmerge_core.pretrain.optim import load_optimizer_state, optimizer_state_tensors

__all__ = ["STATE_FILE", "load_train_state", "save_train_state", "state_meta"]

STATE_FILE = "train_state.safetensors"  # its name in a run folder


def state_meta(cfg: PretrainConfig, model_cfg: ModelConfig, stage: str) -> dict:
    """What a train state must match to be resumed: the configs and the stage."""
    return {
        "pretrain_config": dataclasses.asdict(cfg),
        "model_config": dataclasses.asdict(model_cfg),
        "stage": stage,
    }


def save_train_state(
    path: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int, history: dict, meta: dict
) -> None:
    """Write the train state after ``step`` steps, atomically."""
    tensors = {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = optimizer_state_tensors(opt)
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_safetensors(path, tensors, {**meta, "step": step, "history": history, "optimizer": opt_meta})


def load_train_state(
    path: Path, model: nn.Module, opt: torch.optim.Optimizer, meta_expected: dict
) -> tuple[int, dict]:
    """Restore model, optimizer and RNG from ``path``; returns ``(step, history)``.

    Raises:
        ValueError: the state was written by a run with other configs or another stage (naming
            the differing fields), or its tensors do not fit the model.
    """
    tensors, meta = load_safetensors(path)
    for key in ("pretrain_config", "model_config", "stage"):
        saved = json.loads(meta[key]) if key != "stage" else meta[key]
        if saved != meta_expected[key]:
            diff = (
                [k for k in saved if saved[k] != meta_expected[key].get(k)]
                if isinstance(saved, dict)
                else [key]
            )
            raise ValueError(
                f"{path}: cannot resume, {key} differs from this run ({diff}); use a fresh out_dir"
            )
    load_state_strict(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, src=str(path))
    load_optimizer_state(opt, tensors, json.loads(meta["optimizer"]))
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return int(meta["step"]), json.loads(meta["history"])
