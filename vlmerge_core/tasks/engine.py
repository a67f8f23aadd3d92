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

Where it runs (:mod:`~vlmerge_core.tasks.parallel`): ``device`` (``auto`` = cuda when available; bf16
autocast of the forward passes with ``amp`` on cuda), one process or N under ``torchrun``. Each step
the task draws the global batch's inputs once (:meth:`train_batch`: data order and augmentation as
one process draws them), each rank takes its contiguous share, in ``grad_accum`` micro-batches, and
DDP averages the gradients; a mean loss is weighted by its share of the batch's terms, so the step is
the global batch's (up to float rounding; dropout and drop-path masks are drawn per rank). Retrieval's
contrastive loss is over the embeddings of all ranks, all-gathered with gradients; evaluation
all-gathers per-example results in rank order. Step losses stay on the device and are read once per
epoch (one sync), where a non-finite one is an error naming its step. With ``run_dir`` the train state
is written after every epoch and a run started again continues from it
(:mod:`~vlmerge_core.tasks.trainstate`).
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
from torch.nn.parallel import DistributedDataParallel

from vlmerge_core.config import FinetuneConfig, ParamsError, section_from_dict
from vlmerge_core.pretrain.distributed import repeatable
from vlmerge_core.pretrain.optim import adamw, no_decay
from vlmerge_core.tasks.base import take
from vlmerge_core.tasks.metrics import Outcomes
from vlmerge_core.tasks.parallel import Runtime, all_mean, micro_rows, no_sync, resolve_device, task_runtime
from vlmerge_core.tasks.trainstate import load_state, recipe, rng_state, save_state, set_rng_state, state_path

log = logging.getLogger(__name__)

# FinetuneConfig fields a task may not override (they are the study's plumbing, not the recipe)
_NOT_OVERRIDABLE = {"tasks", "overrides", "real_paths", "run_dir"}
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
    global_loss: bool  # batch_loss is the global batch's loss on every rank (no share weighting)
    runtime: Runtime  # device and ranks, set by the engine

    @property
    def n_train(self) -> int: ...

    def train_batch(self, idx: torch.Tensor, generator: torch.Generator) -> dict[str, Any]: ...

    def batch_loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor: ...

    def loss_weight(self, batch: dict[str, Any]) -> int: ...

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


class _LossOf(nn.Module):
    """The task's loss as a module's ``forward``, so that DDP sees the model and head run."""

    def __init__(self, model: nn.Module, task: FinetuneTask) -> None:
        super().__init__()
        self.model, self.head, self._task = model, task.head, task

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self._task.batch_loss(self.model, batch)


@dataclasses.dataclass
class _Loop:
    """One fine-tuning in progress: its parts, where it stands, and the best validated state so far."""

    model: nn.Module
    task: FinetuneTask
    cfg: FinetuneConfig
    rt: Runtime
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    gen: torch.Generator
    ddp: nn.Module | None
    steps_per_epoch: int
    curve: dict[str, list] = dataclasses.field(
        default_factory=lambda: {"step": [], "loss": [], "val_epoch": [], "val_step": [], "val_select": []}
    )
    epoch: int = 0
    step: int = 0
    best_val: dict[str, float] | None = None
    best_state: tuple[dict, dict] | None = None
    best_epoch: int = 0
    losses: list[torch.Tensor] = dataclasses.field(default_factory=list)  # logged losses, not yet read


def _ddp(model: nn.Module, task: FinetuneTask, rt: Runtime) -> nn.Module | None:
    """The model and head under DDP (gradients averaged over ranks); None for one process."""
    module = _LossOf(model, task)
    if not rt.distributed or not any(p.requires_grad for p in module.parameters()):
        return None
    ids = [rt.device.index] if rt.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def _setup(model: nn.Module, task: FinetuneTask, cfg: FinetuneConfig) -> _Loop:
    """Runtime, device placement, optimizer, schedule and data-order generator of a fine-tuning."""
    if task.global_loss and cfg.grad_accum > 1:
        raise ValueError(
            f"{task.name}: finetune.grad_accum {cfg.grad_accum} > 1 would cut the contrastive loss's "
            "negatives to a micro-batch; use 1 (more processes split the global batch exactly)"
        )
    rt = task_runtime(cfg.device, cfg.amp)
    task.runtime = rt
    if cfg.freeze_backbone:
        model.requires_grad_(False)  # a linear probe: no backbone gradients at all
    model.to(rt.device)
    task.head.to(rt.device)
    n = task.n_train
    steps_per_epoch = math.ceil(n / cfg.batch_size) if n else 0
    total = steps_per_epoch * cfg.epochs
    groups = param_groups(model, task.head, cfg)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    opt = adamw(groups, cfg.lr, tuple(cfg.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_linear(total, int(cfg.warmup_frac * total)))
    gen = torch.Generator().manual_seed(cfg.rng_seed)
    return _Loop(model, task, cfg, rt, opt, sched, gen, _ddp(model, task, rt), steps_per_epoch)


def _pieces(loop: _Loop, batch: dict[str, Any], n: int) -> list[tuple[dict[str, Any], float | None]]:
    """This rank's micro-batches of a global batch of ``n`` rows with the factor of each one's loss
    (None: used as is), so that DDP's mean over ranks of the summed pieces is the global batch's loss.

    A mean loss over ``w`` of the batch's ``W_total`` terms is scaled by ``w * world_size / W_total``;
    a global loss (every rank's is the whole batch's) by nothing. An empty piece (``n`` smaller than
    ranks x micro-batches) runs row 0 at factor 0, so that every rank takes part in every step.
    """
    rt, accum = loop.rt, loop.cfg.grad_accum
    if not rt.distributed and accum == 1:
        return [(batch, None)]
    total = loop.task.loss_weight(batch)
    out: list[tuple[dict[str, Any], float | None]] = []
    for ranks in micro_rows(n, rt, accum):
        rows = ranks[rt.rank]
        sub = take(batch, rows if len(rows) else torch.zeros(1, dtype=torch.long))
        if rt.distributed:
            sub["rank_rows"] = [len(r) for r in ranks]
        weight = loop.task.loss_weight(sub) if len(rows) else 0
        scale = None if loop.task.global_loss else (weight * rt.world_size / total if total else 0.0)
        out.append((sub, scale))
    return out


def _train_step(loop: _Loop, idx: torch.Tensor) -> None:
    """One optimizer step on the global batch ``idx`` (this rank's share, in ``grad_accum`` pieces)."""
    batch = loop.task.train_batch(idx, loop.gen)  # every random draw of the step, as one process
    loop.opt.zero_grad(set_to_none=True)
    pieces = _pieces(loop, batch, len(idx))
    logged = None
    for k, (sub, scale) in enumerate(pieces):
        with no_sync(loop.ddp, k < len(pieces) - 1):
            with loop.rt.autocast():
                loss = loop.ddp(sub) if loop.ddp is not None else loop.task.batch_loss(loop.model, sub)
            if scale is not None:
                loss = loss * scale
            loss.backward()
        logged = loss.detach() if logged is None else logged + loss.detach()
    loop.opt.step()
    loop.sched.step()
    loop.step += 1
    loop.curve["step"].append(loop.step)
    loop.losses.append(logged)  # read at the end of the epoch: no device sync per step


def _flush_losses(loop: _Loop) -> None:
    """The epoch's logged losses into the curve (mean over ranks: the global batch's loss), checked."""
    if not loop.losses:
        return
    values = all_mean(torch.stack(loop.losses), loop.rt).tolist()
    first = loop.step - len(values)
    loop.losses = []
    for k, v in enumerate(values):
        if not math.isfinite(v):
            raise FloatingPointError(f"{loop.task.name}: non-finite loss {v} at step {first + k}")
    loop.curve["loss"].extend(values)


def _train_epoch(loop: _Loop) -> None:
    loop.epoch += 1
    loop.model.train(not loop.cfg.freeze_backbone)  # a linear probe keeps the backbone in eval mode
    loop.task.head.train()
    perm = torch.randperm(loop.task.n_train, generator=loop.gen)
    B = loop.cfg.batch_size
    for b in range(loop.steps_per_epoch):
        _train_step(loop, perm[b * B : (b + 1) * B])
    _flush_losses(loop)


def _validate(loop: _Loop, epoch: int) -> dict[str, float]:
    """Val metrics after ``epoch``, recorded on the curve."""
    val = evaluate(loop.task, loop.model, "val")
    loop.curve["val_epoch"].append(epoch)
    loop.curve["val_step"].append(loop.step)
    loop.curve["val_select"].append(val[loop.task.select_metric])
    return val


def _validate_epoch(loop: _Loop) -> None:
    """Validate after every ``val_every``-th epoch and the last; keep the best validated state."""
    epoch, metric = loop.epoch, loop.task.select_metric
    if epoch % loop.cfg.val_every and epoch != loop.cfg.epochs:
        return
    val = _validate(loop, epoch)
    log.info("%s epoch %d: val %s = %.3f", loop.task.name, epoch, metric, val[metric])
    if loop.best_val is None or val[metric] > loop.best_val[metric]:
        loop.best_val, loop.best_state, loop.best_epoch = val, _snapshot(loop.model, loop.task.head), epoch


def _save(loop: _Loop) -> None:
    """The train state after an epoch (:mod:`~vlmerge_core.tasks.trainstate`), written by rank 0."""
    path = state_path(loop.cfg, loop.task.name)
    if path is None or not loop.rt.is_main:
        return
    best = loop.best_state or ({}, {})
    state = {
        "recipe": recipe(loop.cfg, loop.task.name),
        **{"epoch": loop.epoch, "step": loop.step, "curve": loop.curve, "rng": rng_state(loop.gen)},
        **{"model": loop.model.state_dict(), "head": loop.task.head.state_dict()},
        **{"optimizer": loop.opt.state_dict(), "scheduler": loop.sched.state_dict()},
        **{
            "best_val": loop.best_val,
            "best_epoch": loop.best_epoch,
            "best_model": best[0],
            "best_head": best[1],
        },
    }
    save_state(path, state)


def _resume(loop: _Loop) -> bool:
    """Continue from the train-state file if there is one (False: none, start afresh)."""
    path = state_path(loop.cfg, loop.task.name)
    state = None if path is None else load_state(path, recipe(loop.cfg, loop.task.name))
    if state is None:
        return False
    loop.model.load_state_dict(state["model"])
    loop.task.head.load_state_dict(state["head"])
    loop.opt.load_state_dict(state["optimizer"])
    loop.sched.load_state_dict(state["scheduler"])
    set_rng_state(loop.gen, state["rng"])
    loop.epoch, loop.step, loop.curve = state["epoch"], state["step"], state["curve"]
    loop.best_val, loop.best_epoch = state["best_val"], state["best_epoch"]
    loop.best_state = (state["best_model"], state["best_head"]) if state["best_val"] is not None else None
    log.info("%s: resumed from %s after epoch %d", loop.task.name, path, loop.epoch)
    return True


def _start(loop: _Loop) -> None:
    """Validate the model before fine-tuning (epoch 0); kept as the best when there are no epochs."""
    val0 = _validate(loop, 0)
    if loop.cfg.epochs == 0:
        loop.best_val, loop.best_state, loop.best_epoch = val0, _snapshot(loop.model, loop.task.head), 0


def _finish(loop: _Loop, t0: float) -> dict[str, Any]:
    """Load the best validated state, evaluate it on test, and gather the results."""
    assert loop.best_state is not None and loop.best_val is not None  # epoch 0 or a trained epoch was kept
    loop.model.load_state_dict(loop.best_state[0])
    loop.task.head.load_state_dict(loop.best_state[1])
    test = evaluate_outcomes(loop.task, loop.model, "test")
    return {
        "val": loop.best_val,
        "test": test.metrics(),
        "test_outcomes": test,
        "best_epoch": loop.best_epoch,
        "val_last_gain": last_gain(loop.curve["val_select"], loop.curve["val_epoch"]),
        "curve": loop.curve,
        "steps": loop.step,
        "world_size": loop.rt.world_size,
        "train_seconds": time.perf_counter() - t0,
    }


@repeatable(lambda model, task, cfg, *_, **__: resolve_device(cfg.device))
def run_finetune(model: nn.Module, task: FinetuneTask, cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune ``model`` (in place) and ``task.head``; return val/test metrics of the best epoch.

    Runs on ``cfg.device`` (bf16 autocast with ``cfg.amp`` on cuda), on this process or, under
    ``torchrun``, on every rank's share of each global batch with DDP
    (:mod:`~vlmerge_core.tasks.parallel`); ``cfg.grad_accum`` micro-batches per step; with
    ``cfg.run_dir`` the train state is written after every epoch and a rerun resumes from it. On
    several CPU threads the run repeats bitwise
    (:func:`~vlmerge_core.pretrain.distributed.repeatable_on_cpu`; one thread does anyway).

    Returns:
        ``{"val": {...}, "test": {...}, "test_outcomes": Outcomes, "best_epoch": e, "val_last_gain":
        g, "curve": {"step", "loss", "val_epoch", "val_step", "val_select"}, "steps": n,
        "train_seconds": t}``. The curve's val points start at epoch 0 (before fine-tuning);
        ``best_epoch`` 0 is the model before any fine-tuning (used when ``epochs`` is 0);
        ``val_last_gain`` is the val selection metric's gain per epoch over the last validation
        interval (NaN for 0 epochs).
    """
    t0 = time.perf_counter()
    loop = _setup(model, task, cfg)
    if not _resume(loop):
        _start(loop)
    while loop.epoch < cfg.epochs:
        _train_epoch(loop)
        _validate_epoch(loop)
        _save(loop)
    return _finish(loop, t0)
