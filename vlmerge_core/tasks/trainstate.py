"""The resumable state of a fine-tuning: written after every epoch, read back to resume exactly.

``<finetune.run_dir>/<task>_train_state.pt`` holds the model and head, the optimizer and scheduler,
every RNG the loop draws from (the data-order / augmentation generator, the global CPU RNG of
drop-path and dropout, the CUDA RNGs), the epoch and step reached, the loss curve, and the best
validated model so far with its val metrics. It is written atomically by rank 0
(:func:`~vlmerge_core.io.atomic_path`); a run started with a state file present continues after its
epoch, so an interrupted run gives the same result as an uninterrupted one. The config the state
was written under is recorded: resuming under another recipe is an error naming the keys.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from vlmerge_core.config import FinetuneConfig
from vlmerge_core.io import atomic_path
from vlmerge_core.paths import resolve

FORMAT = "vlmerge-train-state-1"  # format tag of the train-state file
# fields that do not change what is computed: a run may resume with other values of these
_EXECUTION_ONLY = {"run_dir", "device", "eval_batch_size", "grad_accum", "overrides", "tasks"}


def state_path(cfg: FinetuneConfig, task: str) -> Path | None:
    """The train-state file of ``task`` (None without ``cfg.run_dir``)."""
    return resolve(cfg.run_dir) / f"{task}_train_state.pt" if cfg.run_dir else None


def recipe(cfg: FinetuneConfig, task: str) -> dict[str, Any]:
    """What a train state must agree on to be resumed: the task and the resolved recipe."""
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in _EXECUTION_ONLY}
    return {"task": task, **fields}


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, lists, dicts) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load_state(path: Path, expected: dict[str, Any]) -> dict[str, Any] | None:
    """The state in ``path`` (None when there is none), checked against the recipe ``expected``.

    Raises:
        ValueError: not a train-state file, or one written under another recipe (names the keys).
    """
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a train-state file (expected format {FORMAT!r})")
    got = state.get("recipe", {})
    bad = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
    if bad:
        raise ValueError(
            f"{path}: written for another run; differs in {', '.join(bad)} (remove it or change run_dir)"
        )
    return state


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG state the loop draws from."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"generator": generator.get_state(), "cpu": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(generator: torch.Generator, state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` recorded."""
    generator.set_state(state["generator"])
    torch.set_rng_state(state["cpu"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
