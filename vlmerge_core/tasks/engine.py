"""The shared fine-tuning loop of every downstream task.

The recipe of the official vl-merging code (``vilt_utils.set_schedule``), scaled by
:class:`~vlmerge_core.config.FinetuneConfig`: AdamW (betas from the config, eps 1e-8), weight decay
but on the official no-decay list (:func:`~vlmerge_core.pretrain.optim.no_decay`), task heads at
``lr * head_lr_mult`` (``lr_mult`` of the official code, x10 for VQA), optional layer-wise LR decay
(BEiT, Bao et al. 2022: block ``i`` of ``L`` gets ``lr * decay^(L - i)``, embeddings
``decay^(L + 1)``), drop-path and text dropout (``drop_path``, ``text_dropout``), the train image
transform ``augment``, or a linear probe (``freeze_backbone``: the head alone is trained, the backbone
stays in eval mode), linear warm-up over ``warmup_frac`` of the
steps then linear decay to 0 (``get_polynomial_decay_schedule_with_warmup`` with power 1). The
model is evaluated on ``val`` before training (epoch 0, for the curve), after every ``val_every``-th
epoch and after the last one (the official code validates every epoch: ``val_every`` 1); the
backbone and head with the best selection metric over the validated trained epochs (epoch 0 when
``epochs`` is 0) are kept in memory and evaluated on ``test``, keeping the per-example outcomes for
the bootstrap.
Data order comes from a generator seeded with ``rng_seed``; evaluation runs in ``eval()`` mode under
``torch.no_grad()``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from typing import Any, Protocol

import torch
from torch import nn

from vlmerge_core.config import FinetuneConfig, ParamsError, section_from_dict
from vlmerge_core.pretrain.distributed import repeatable
from vlmerge_core.pretrain.optim import adamw, no_decay
from vlmerge_core.tasks.metrics import Outcomes

log = logging.getLogger(__name__)

# FinetuneConfig fields a task may not override (they are the study's plumbing, not the recipe)
_NOT_OVERRIDABLE = {"tasks", "overrides", "real_paths"}
# parameters outside the blocks that count as layer 0 (embeddings) in layer-wise LR decay
_EMBED_PREFIXES = (
    "patch_embed",
    "cls_token",
    "pos_embed",
    "mask_token",
    "text_embed",
    "token_type_embed",
    "rel_pos_bias",
)


class FinetuneTask(Protocol):
    """What a task gives the loop (see :mod:`vlmerge_core.tasks.base`)."""

    name: str
    select_metric: str  # val metric used for best-checkpoint selection (higher is better)
    head: nn.Module  # the new task parameters (may be empty)

    @property
    def n_train(self) -> int: ...

    def train_loss(self, model: nn.Module, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...

    def outcomes(self, model: nn.Module, split: str) -> Outcomes: ...


def task_config(cfg: FinetuneConfig, task: str) -> FinetuneConfig:
    """``cfg`` with ``cfg.overrides[task]`` applied, validated like params.yaml (unknown key = error)."""
    over = dict(cfg.overrides.get(task, {}))
    bad = sorted(set(over) & _NOT_OVERRIDABLE)
    if bad:
        raise ParamsError(f"finetune.overrides.{task}: {', '.join(bad)} cannot be overridden per task")
    if not over:
        return cfg
    base = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    merged = section_from_dict(
        FinetuneConfig, {**base, **over}, src="finetune.overrides", prefix=f"finetune.overrides.{task}"
    )
    return merged


def _layer_id(name: str, depth: int) -> int:
    if name.startswith(_EMBED_PREFIXES):
        return 0
    m = re.match(r"blocks\.(\d+)\.", name)
    return int(m.group(1)) + 1 if m else depth + 1


def param_groups(model: nn.Module, head: nn.Module, cfg: FinetuneConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups: (layer, decay / no decay) for the backbone, then the head at ``head_lr_mult``."""
    depth = len(getattr(model, "blocks", []))
    groups: dict[tuple, dict[str, Any]] = {}
    named = [("model", n, p) for n, p in model.named_parameters()]
    named += [("head", n, p) for n, p in head.named_parameters()]
    for owner, name, p in named:
        if not p.requires_grad or (owner == "model" and cfg.freeze_backbone):
            continue
        nd = no_decay(name)
        if owner == "head":
            key, scale = ("head", nd), cfg.head_lr_mult
        else:
            lid = _layer_id(name, depth)
            key, scale = ("layer", lid, nd), cfg.layer_decay ** (depth + 1 - lid)
        g = groups.setdefault(
            key, {"params": [], "lr_scale": scale, "weight_decay": 0.0 if nd else cfg.weight_decay}
        )
        g["params"].append(p)
    return [groups[k] for k in sorted(groups, key=str)]


def warmup_linear(total: int, warmup: int):
    """LR factor of step ``s``: linear warm-up to 1 over ``warmup`` steps, then linear decay to 0."""

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return fn


def _snapshot(model: nn.Module, head: nn.Module) -> tuple[dict, dict]:
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        {k: v.detach().clone() for k, v in head.state_dict().items()},
    )


@torch.no_grad()
def evaluate_outcomes(task: FinetuneTask, model: nn.Module, split: str) -> Outcomes:
    """Deterministic per-example outcomes: ``eval()`` mode (no dropout / drop-path), no gradients."""
    was = model.training, task.head.training
    model.eval()
    task.head.eval()
    try:
        return task.outcomes(model, split)
    finally:
        model.train(was[0])
        task.head.train(was[1])


def evaluate(task: FinetuneTask, model: nn.Module, split: str) -> dict[str, float]:
    """The metrics of ``split`` (see :func:`evaluate_outcomes`)."""
    return evaluate_outcomes(task, model, split).metrics()


def last_gain(val_select: list[float], val_epoch: list[int]) -> float:
    """Points per epoch the val selection metric gained over the last validation interval (from the
    previous validation to the last; NaN without a trained epoch)."""
    if len(val_select) < 2:
        return math.nan
    return (val_select[-1] - val_select[-2]) / (val_epoch[-1] - val_epoch[-2])


@repeatable(lambda model, *_, **__: next(model.parameters()).device)
def run_finetune(model: nn.Module, task: FinetuneTask, cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune ``model`` (in place) and ``task.head``; return val/test metrics of the best epoch.
    On several CPU threads the run repeats bitwise (:func:`~vlmerge_core.pretrain.distributed.repeatable_on_cpu`;
    one thread does anyway).

    Returns:
        ``{"val": {...}, "test": {...}, "test_outcomes": Outcomes, "best_epoch": e, "val_last_gain":
        g, "curve": {"step", "loss", "val_epoch", "val_step", "val_select"}, "steps": n,
        "train_seconds": t}``. The curve's val points start at epoch 0 (before fine-tuning);
        ``best_epoch`` 0 is the model before any fine-tuning (used when ``epochs`` is 0);
        ``val_last_gain`` is the val selection metric's gain per epoch over the last validation
        interval (NaN for 0 epochs).
    """
    t0 = time.perf_counter()
    if cfg.freeze_backbone:
        model.requires_grad_(False)  # a linear probe: no backbone gradients at all
    n = task.n_train
    steps_per_epoch = math.ceil(n / cfg.batch_size) if n else 0
    total = steps_per_epoch * cfg.epochs
    groups = param_groups(model, task.head, cfg)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    opt = adamw(groups, cfg.lr, tuple(cfg.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_linear(total, int(cfg.warmup_frac * total)))
    gen = torch.Generator().manual_seed(cfg.rng_seed)
    curve: dict[str, list] = {"step": [], "loss": [], "val_epoch": [], "val_step": [], "val_select": []}

    val0 = evaluate(task, model, "val")
    curve["val_epoch"].append(0)
    curve["val_step"].append(0)
    curve["val_select"].append(val0[task.select_metric])
    best_val = val0 if cfg.epochs == 0 else None
    best_state, best_epoch = (_snapshot(model, task.head), 0) if best_val is not None else (None, 0)
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train(not cfg.freeze_backbone)  # a linear probe keeps the backbone in eval mode
        task.head.train()
        perm = torch.randperm(n, generator=gen)
        for b in range(steps_per_epoch):
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            loss = task.train_loss(model, idx, gen)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{task.name}: non-finite loss {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            curve["step"].append(step)
            curve["loss"].append(loss.item())
        if epoch % cfg.val_every and epoch != cfg.epochs:
            continue
        val = evaluate(task, model, "val")
        curve["val_epoch"].append(epoch)
        curve["val_step"].append(step)
        curve["val_select"].append(val[task.select_metric])
        log.info("%s epoch %d: val %s = %.3f", task.name, epoch, task.select_metric, val[task.select_metric])
        if best_val is None or val[task.select_metric] > best_val[task.select_metric]:
            best_val, best_state, best_epoch = val, _snapshot(model, task.head), epoch
    assert best_state is not None and best_val is not None  # epoch 0 or a trained epoch was kept
    model.load_state_dict(best_state[0])
    task.head.load_state_dict(best_state[1])
    test = evaluate_outcomes(task, model, "test")
    return {
        "val": best_val,
        "test": test.metrics(),
        "test_outcomes": test,
        "best_epoch": best_epoch,
        "val_last_gain": last_gain(curve["val_select"], curve["val_epoch"]),
        "curve": curve,
        "steps": step,
        "train_seconds": time.perf_counter() - t0,
    }
