"""The pre-training loop: init (MIM or BEiT weights), seed (MA) and MS stages.

``run_pretrain`` trains one model with AdamW, warm-up + decay, gradient accumulation and clipping,
bf16 autocast on GPU, DDP under ``torchrun``; it checkpoints atomically, resumes exactly after a
kill (model, optimizer, step, RNG; the data order is a pure function of the step), stops on a
non-finite loss naming the step and component, and writes ``metrics.json`` and ``run_info.json``.
It reads as its steps: ``_start`` (model, optimizer), ``_resume``, then per step ``_train_step``
(``_micro_step`` x ``grad_accum``, ``_check_finite``, ``_clip_gradients``, AdamW) and
``_maybe_checkpoint``, and ``_finish``; what the loop carries is a ``_Run``.

Files in ``out_dir``: ``train_state.safetensors`` (everything needed to resume, :mod:`.train_state`,
written every ``ckpt_every`` steps), ``last.safetensors`` (the model), ``ckpt_step{K}.safetensors``
(the model at each ``save_steps`` K of the seed stage and at the end) with ``ckpt_step{K}.json``
(its zero-shot retrieval and end losses, written when it is saved, so a resumed run keeps them),
``metrics.json`` (``checkpoints`` holds every ``ckpt_step{K}.json``; ``summary`` the flat metrics of
the final model: ``ir_r1 … tr_r10``, ``rsum``, ``loss_<name>_end``), ``run_info.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from vlmerge_core.config import InitPretrainConfig, ModelConfig, PretrainConfig
from vlmerge_core.io import read_json, write_json, write_run_info
from vlmerge_core.model import (
    MS_VARIANTS,
    MultiwayTransformer,
    init_ms_from_ma,
    load_state,
    load_timm_into_v,
    save_model,
)
from vlmerge_core.paths import resolve
from vlmerge_core.pretrain import objectives
from vlmerge_core.pretrain.batches import (
    PretrainData,
    build_pretrain_data,
    check_vocab,
    global_micro_batch,
    make_global_batch,
)
from vlmerge_core.pretrain.distributed import DistInfo, all_reduce_sum, init_distributed, repeatable
from vlmerge_core.pretrain.evaluate import evaluate_retrieval
from vlmerge_core.pretrain.optim import make_optimizer, set_lr
from vlmerge_core.pretrain.stream import LoaderStream
from vlmerge_core.pretrain.train_state import STATE_FILE, load_train_state, save_train_state, state_meta

__all__ = [
    "NonFiniteLossError",
    "STAGES",
    "build_stage_model",
    "checkpoint_metrics",
    "run_pretrain",
    "stage_configs",
]

log = logging.getLogger(__name__)
STAGES = ("init", "seed", "ms")


class NonFiniteLossError(FloatingPointError):
    """A loss component (or the gradient norm) became NaN/inf; the last good checkpoint is kept."""


def build_stage_model(model_cfg: ModelConfig, stage: str, init: str | Path | None) -> MultiwayTransformer:
    """The model a stage starts from: MA for init/seed, MS for ms; ``init`` (an MA checkpoint) copied in."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if stage in ("init", "seed") and model_cfg.ms_components:
        raise ValueError(
            f"stage {stage!r} trains the MA model; model.ms_components must be empty, "
            f"got {model_cfg.ms_components}"
        )
    if stage == "ms" and not model_cfg.ms_components:
        raise ValueError("stage 'ms' needs model.ms_components (e.g. MS_VARIANTS['all'])")
    if stage == "ms" and not init:
        raise ValueError("stage 'ms' needs init= (a seed checkpoint, or the init checkpoint for 'no seed')")
    model = MultiwayTransformer(model_cfg)
    if init:
        state, meta = load_state(init)
        if meta.get("kind", "ma") != "ma":
            raise ValueError(
                f"{init}: stage {stage!r} starts from an MA checkpoint, this one is {meta['kind']!r}"
            )
        try:
            init_ms_from_ma(model, state)
        except (KeyError, ValueError) as exc:
            raise type(exc)(f"{init}: {exc}") from None
    return model


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _curve(history: dict[str, list[float]], every: int) -> dict[str, list[float]]:
    n = len(next(iter(history.values()), []))
    ends = list(range(every, n + 1, every)) + ([n] if n % every else [])
    out = {"step": ends}
    for name, vals in history.items():
        out[name] = [sum(vals[max(e - every, 0) : e]) / len(vals[max(e - every, 0) : e]) for e in ends]
    return out


def _progress(total: int, initial: int, enabled: bool):
    disable = (not enabled) or os.environ.get("VLMERGE_NO_TQDM", "") not in ("", "0") or None
    return tqdm(total=total, initial=initial, desc="pretrain", disable=disable, dynamic_ncols=True)


def _init_from_beit(
    cfg: InitPretrainConfig, model_cfg: ModelConfig, out_dir: Path, info: DistInfo, world
) -> dict:
    """The init from a BEiT file: its weights in the ``v`` path, the study's tokenizer recorded."""
    model = build_stage_model(model_cfg, "init", None)
    done = load_timm_into_v(model, resolve(cfg.beit_checkpoint))
    model.tokenizer_info = getattr(world, "tokenizer_identity", None)  # checked when a task is built
    metrics = {
        "stage": "init",
        "kind": "ma",
        "source": str(cfg.beit_checkpoint),
        "tensors_loaded": len(done),
        "steps": 0,
        "world_size": info.world_size,
        "data_format": "timm_beit",  # what the stage read: a BEiT checkpoint, no pre-training data
    }
    if info.is_main:
        save_model(out_dir / "last.safetensors", model, {"stage": "init", "step": 0})
        write_json(out_dir / "metrics.json", metrics)
        write_run_info(
            out_dir / "run_info.json", cfg, model_config=dataclasses.asdict(model_cfg), stage="init"
        )
    return metrics


def checkpoint_metrics(
    model: nn.Module,
    world,
    cfg: PretrainConfig,
    losses: dict[str, float],
    history: dict[str, list[float]],
    step: int,
    device,
) -> dict:
    """Zero-shot retrieval (val split) and end losses of the model at ``step``.

    Returns:
        ``{"step", "retrieval", "retrieval_vl" (when ITC-vl is trained), "loss_end", "summary"}``;
        ``summary`` is flat: ``ir_r1 … tr_r10`` and ``rsum`` of the ITC (v/l) head, and
        ``loss_<name>_end``, the mean of each loss over the last ``log_every`` steps.
    """
    out: dict = {"step": step}
    out["retrieval"] = evaluate_retrieval(
        model, world, "val", cfg.caption_style, batch_size=cfg.eval_batch_size, device=device
    )
    if "itc_vl" in losses:
        out["retrieval_vl"] = evaluate_retrieval(
            model,
            world,
            "val",
            cfg.caption_style,
            head="itc_vl",
            batch_size=cfg.eval_batch_size,
            device=device,
        )
    out["loss_end"] = {n: _mean(v[-cfg.log_every :]) for n, v in history.items()}
    r = out["retrieval"]
    summary = {f"{d}_r{k}": r[f"{d}_r{k}"] for d in ("ir", "tr") for k in (1, 5, 10)}
    summary["rsum"] = r["rsum"]
    summary.update({f"loss_{n}_end": v for n, v in out["loss_end"].items()})
    out["summary"] = summary
    return out


@dataclasses.dataclass
class _Run:
    """What the loop carries from step to step: the run's fixed parts and its progress."""

    cfg: PretrainConfig  # the stage's section
    stage: str  # "init", "seed" or "ms"
    out_dir: Path  # run folder
    info: DistInfo  # rank, world size, device
    losses: dict[str, float]  # objective -> weight (weights > 0 only)
    shard: objectives.Shard  # this rank's rows of the global micro-batch (size: the global micro-batch)
    model: MultiwayTransformer  # the model trained (what is saved)
    opt: torch.optim.Optimizer  # AdamW over the model's parameters
    meta: dict  # configs and stage: stored with the train state, checked on resume
    step: int = 0  # optimizer steps done
    history: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # loss name -> per step
    resumed_from: int = 0  # the step this process resumed from (0: a fresh start)
    n_samples: int = 0  # samples trained on since this process entered the loop
    data_info: dict = dataclasses.field(default_factory=dict)  # what the run reads (data_format, ...)

    @property
    def state_path(self) -> Path:
        return self.out_dir / STATE_FILE

    @property
    def save_steps(self) -> set[int]:
        """Steps whose model is kept as ``ckpt_step{K}`` (the seed stage's ``save_steps``)."""
        return set(getattr(self.cfg, "save_steps", []))

    @property
    def cuda(self) -> bool:
        return str(self.info.device).startswith("cuda")


@repeatable()
def run_pretrain(
    cfg: PretrainConfig,
    model_cfg: ModelConfig,
    world,
    out_dir: str | Path,
    init: str | Path | None = None,
    stage: str = "seed",
    *,
    device: str | None = None,
    stop_at: int | None = None,
) -> dict:
    """Pre-train one model; resume from ``out_dir`` if it holds a train state.

    Args:
        cfg: the stage's section (``InitPretrainConfig``/``SeedPretrainConfig``/``MSPretrainConfig``).
        model_cfg: the architecture (MA for init/seed; MS with ``ms_components`` for ms).
        world: the micro-world (:func:`vlmerge_core.data.load_world`).
        out_dir: run folder (checkpoints, metrics).
        init: MA checkpoint to start from (init checkpoint for seed; seed or init checkpoint for ms).
        stage: ``"init"``, ``"seed"`` or ``"ms"``.
        device: ``"cpu"``/``"cuda"``; default: CUDA when available.
        stop_at: stop after this step without finishing (simulates a kill; for tests).

    Returns:
        The metrics (also written to ``out_dir/metrics.json`` on rank 0). A run on several CPU
        threads repeats bitwise (:func:`~vlmerge_core.pretrain.distributed.repeatable_on_cpu`).
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    info = init_distributed(device)
    if stage == "init" and getattr(cfg, "beit_checkpoint", ""):
        return _init_from_beit(cfg, model_cfg, out_dir, info, world)
    run = _start(cfg, model_cfg, world, out_dir, init, stage, info)
    resumed = _resume(run)
    if resumed and run.step >= cfg.steps and (out_dir / "metrics.json").exists():
        return read_json(out_dir / "metrics.json")  # finished earlier: the metrics it wrote
    data = _pretrain_data(run, world, model_cfg)
    module = _loss_module(run)
    run.model.train()
    t_loop = time.perf_counter()
    bar = _progress(cfg.steps, run.step, info.is_main)
    while run.step < cfg.steps:
        _train_step(run, module, data)
        _show_progress(bar, run, t_loop)
        _maybe_checkpoint(run, world)
        if stop_at is not None and stop_at <= run.step < cfg.steps:
            bar.close()
            return {"stage": stage, "stopped_at": run.step}
    bar.close()
    return _finish(run, world, model_cfg, init, t_start, time.perf_counter() - t_loop)


def _start(cfg, model_cfg: ModelConfig, world, out_dir: Path, init, stage: str, info: DistInfo) -> _Run:
    """Check the losses and the batch arithmetic, seed the RNG, build the model and its optimizer."""
    losses = {k: float(w) for k, w in cfg.losses.items() if w > 0}
    if not losses:
        raise ValueError(f"{stage}: no loss has a weight > 0 in losses={cfg.losses}")
    W, G = info.world_size, global_micro_batch(cfg, info.world_size)
    shard = objectives.Shard(lo=info.rank * G // W, hi=(info.rank + 1) * G // W, size=G)
    torch.manual_seed(cfg.rng_seed)  # the model's init (a resume then overwrites weights and RNG)
    model = build_stage_model(model_cfg, stage, init).to(info.device)
    model.tokenizer_info = getattr(world, "tokenizer_identity", None)  # checked when a task is built
    return _Run(
        cfg=cfg,
        stage=stage,
        out_dir=out_dir,
        info=info,
        losses=losses,
        shard=shard,
        model=model,
        opt=make_optimizer(model, cfg),
        meta=state_meta(cfg, model_cfg, stage),
        history={k: [] for k in losses},
    )


def _resume(run: _Run) -> bool:
    """Continue from the run folder's train state when there is one; True if it did.

    What a resume restores is all that the next step depends on: the weights, AdamW's moments and
    step counts, the global torch RNG state (stochastic depth draws from it), the step and the loss
    history. The batches need nothing: order, augmentation, masks and ITM negatives come from
    generators seeded by ``(rng_seed, step, micro-step)``. The state also holds the configs, and a
    folder trained with other ones is refused. Steps after the state's are redone bit for bit, so a
    ``ckpt_step{K}`` they had written is written again, equal.
    """
    if not run.state_path.exists():
        if run.info.is_main:  # a fresh start: the checkpoint metrics of an earlier run in this
            for stale in run.out_dir.glob("ckpt_step*.json"):  # folder must not join this run's
                stale.unlink()
        return False
    run.step, run.history = load_train_state(run.state_path, run.model, run.opt, run.meta)
    run.resumed_from = run.step
    log.info("resumed %s from step %d", run.state_path, run.step)
    return True


def _pretrain_data(run: _Run, world, model_cfg: ModelConfig) -> PretrainData | LoaderStream:
    """The source's training data: the micro-world's tensors, or a per-rank DataLoader of real pairs."""
    fmt = getattr(world, "data_format", "micro")
    if fmt == "micro":
        run.data_info = {"data_format": fmt}
        return build_pretrain_data(world, model_cfg, run.losses, run.cfg.caption_style)
    check_vocab(world.tokenizer(), model_cfg)
    pairs = world.pairs(model_cfg.max_text_len, model_cfg.image_size, run.cfg.augment)
    stream = LoaderStream(pairs, run.cfg, run.info.rank, run.info.world_size, world.config.num_workers)
    run.data_info = stream.describe()
    return stream


def _loss_module(run: _Run) -> nn.Module:
    """The model and its objectives as one module, wrapped in DDP when there are several processes."""
    module = objectives.LossModule(
        run.model, run.losses, run.shard, run.info.device, run.cfg.itm_negatives, itc_grad=run.cfg.itc_grad
    )
    if not run.info.distributed:
        return module
    # find_unused_parameters: some parameters get no gradient from a stage's objectives (the text
    # and fusion experts under the image-only init objectives, for one)
    return DistributedDataParallel(
        module, device_ids=[run.info.local_rank] if run.cuda else None, find_unused_parameters=True
    )


def _train_step(run: _Run, module: nn.Module, data: PretrainData) -> None:
    """One optimizer step: ``grad_accum`` micro-steps, clipping, AdamW, the step's losses recorded."""
    cfg, A = run.cfg, run.cfg.grad_accum
    set_lr(run.opt, run.step, cfg)  # a schedule of the step alone: a resume needs nothing more
    step_losses = torch.zeros(len(run.losses), dtype=torch.float64)
    for k in range(A):
        if isinstance(data, LoaderStream):
            batch = data.global_batch(run.step, k, set(run.losses))
        else:
            batch = make_global_batch(
                data, cfg, run.step, k, run.shard.size, run.model.num_patches, set(run.losses)
            )
        step_losses += _micro_step(run, module, batch, last=k == A - 1) / A
    _clip_gradients(run)
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    for n, v in zip(run.losses, step_losses.tolist()):
        run.history[n].append(v)
    run.step += 1
    run.n_samples += cfg.batch_size


def _micro_step(run: _Run, module: nn.Module, batch: dict[str, torch.Tensor], last: bool) -> torch.Tensor:
    """Forward and backward of one micro-batch; returns its losses summed over ranks [n_losses]."""
    names, W, A = list(run.losses), run.info.world_size, run.cfg.grad_accum
    # DDP all-reduces gradients inside backward. Under accumulation the micro-batches' gradients add
    # up in each rank's .grad, so one all-reduce on the last micro-step gives the same sum as one per
    # micro-step: all other micro-steps run under no_sync, forward included (DDP prepares the
    # reduction in forward). A single process has nothing to sync.
    sync = nullcontext() if (last or not run.info.distributed) else module.no_sync()
    with sync:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=run.cuda and run.cfg.amp):
            parts = module(batch)
        values = all_reduce_sum(torch.stack([parts[n].detach().double() for n in names])).cpu()
        # The NaN guard sits after the all-reduce and before backward: every rank checks the same
        # summed values, so all stop at the same micro-step (none is left waiting in a collective),
        # and a non-finite loss never reaches the gradients, AdamW's moments or a train state.
        _check_finite(run, names, values)
        # each rank's loss is its share of the global mean (objectives); DDP averages gradients over
        # the W ranks and the A micro-steps add up: W / A makes them those of the global batch mean
        total = sum(run.losses[n] * parts[n] for n in names) * (W / A)
        total.backward()
    return values


def _check_finite(run: _Run, names: list[str], values: torch.Tensor) -> None:
    """Raise :class:`NonFiniteLossError` naming the step and the first non-finite loss component."""
    bad = [(n, v) for n, v in zip(names, values.tolist()) if not torch.isfinite(torch.tensor(v))]
    if bad:
        raise NonFiniteLossError(
            f"step {run.step}: loss component {bad[0][0]!r} is {bad[0][1]} "
            f"(last good checkpoint kept in {run.out_dir})"
        )


def _clip_gradients(run: _Run) -> None:
    """Clip the gradient norm to ``grad_clip`` (0: off, as the official code)."""
    if run.cfg.grad_clip > 0:
        gnorm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.grad_clip)
        if not torch.isfinite(gnorm):  # before AdamW's step, which a non-finite gradient would poison
            raise NonFiniteLossError(
                f"step {run.step}: gradient norm is {gnorm.item()} "
                f"(last good checkpoint kept in {run.out_dir})"
            )


def _show_progress(bar, run: _Run, t_loop: float) -> None:
    rate = run.n_samples / max(time.perf_counter() - t_loop, 1e-9)
    bar.update(1)
    loss = sum(run.losses[n] * run.history[n][-1] for n in run.losses)
    bar.set_postfix(loss=f"{loss:.3f}", sps=f"{rate:.0f}")


def _maybe_checkpoint(run: _Run, world) -> None:
    """On rank 0: the train state every ``ckpt_every`` steps, the model at each save step and the end."""
    cfg, step = run.cfg, run.step
    if not run.info.is_main:
        return
    if step % cfg.ckpt_every == 0 or step == cfg.steps:
        save_train_state(run.state_path, run.model, run.opt, step, run.history, run.meta)
    if step in run.save_steps or step == cfg.steps:
        save_model(
            run.out_dir / f"ckpt_step{step}.safetensors", run.model, {"stage": run.stage, "step": step}
        )
        # its metrics are written now, beside it: a run resumed later still reports them
        write_json(
            run.out_dir / f"ckpt_step{step}.json",
            checkpoint_metrics(run.model, world, cfg, run.losses, run.history, step, run.info.device),
        )


def _finish(run: _Run, world, model_cfg: ModelConfig, init, t_start: float, loop_s: float) -> dict:
    """The run's metrics; rank 0 also saves the model and writes ``metrics.json`` and ``run_info.json``."""
    cfg, info = run.cfg, run.info
    metrics = {
        "stage": run.stage,
        "kind": run.model.kind,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "world_size": info.world_size,
        "data_format": run.data_info.get("data_format", "micro"),
        "losses": run.losses,
        "resumed_from_step": run.resumed_from,
        "loss_curve": _curve(run.history, cfg.log_every),
        "loss_start": {n: _mean(v[: cfg.log_every]) for n, v in run.history.items()},
        "loss_end": {n: _mean(v[-cfg.log_every :]) for n, v in run.history.items()},
        "wall_time_s": time.perf_counter() - t_start,
        "samples_per_s": run.n_samples / loop_s if loop_s > 0 else None,
    }
    if not info.is_main:
        return metrics
    save_model(run.out_dir / "last.safetensors", run.model, {"stage": run.stage, "step": run.step})
    metrics.update(_final_evaluation(run, world))
    metrics["wall_time_s"] = time.perf_counter() - t_start
    write_json(run.out_dir / "metrics.json", metrics)
    write_run_info(
        run.out_dir / "run_info.json",
        cfg,
        model_config=dataclasses.asdict(model_cfg),
        stage=run.stage,
        init=str(init) if init else None,
        world=str(getattr(world, "root", "")),
        world_size=info.world_size,
        device=str(info.device),
    )
    return metrics


def _final_evaluation(run: _Run, world) -> dict:
    """Zero-shot retrieval and summary of the final model, and the metrics of every kept checkpoint."""
    step, out_dir = run.step, run.out_dir
    last = out_dir / f"ckpt_step{step}.json"
    # written at the last step, unless the run had no step, or was killed between its last train
    # state and that file
    final = (
        read_json(last)
        if last.exists()
        else checkpoint_metrics(run.model, world, run.cfg, run.losses, run.history, step, run.info.device)
    )
    out = {k: final[k] for k in ("retrieval", "retrieval_vl", "summary") if k in final}
    out["checkpoints"] = {
        str(k): read_json(out_dir / f"ckpt_step{k}.json")
        for k in sorted({*run.save_steps, step})
        if k <= step and (out_dir / f"ckpt_step{k}.json").exists()
    }
    return out


def stage_configs(params, stage: str, variant: str = "") -> tuple[PretrainConfig, ModelConfig]:
    """The (pre-training section, model config) of a stage from resolved :class:`Params`.

    Args:
        params: resolved parameters (``load_params``/``profile_params``).
        stage: ``"init"``, ``"seed"`` or ``"ms"``.
        variant: for ``ms``, a key of ``MS_VARIANTS`` (empty: ``params.model.ms_components``).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    cfg = {"init": params.init_pretrain, "seed": params.seed_pretrain, "ms": params.ms_pretrain}[stage]
    model_cfg = params.model
    if stage == "ms":
        if variant and variant not in MS_VARIANTS:
            raise KeyError(f"unknown MS variant {variant!r}; expected one of {sorted(MS_VARIANTS)}")
        comps = MS_VARIANTS[variant] if variant else (model_cfg.ms_components or MS_VARIANTS["all"])
        model_cfg = dataclasses.replace(model_cfg, ms_components=list(comps))
    else:
        model_cfg = dataclasses.replace(model_cfg, ms_components=[])
    return cfg, model_cfg
