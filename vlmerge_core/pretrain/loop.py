"""The pre-training loop: init (MIM or BEiT weights), seed (MA) and MS stages.

``run_pretrain`` trains one model with AdamW, warm-up + decay, gradient accumulation and clipping,
bf16 autocast on GPU, DDP under ``torchrun``; it checkpoints atomically, resumes exactly after a
kill (model, optimizer, step, RNG; the data order is a pure function of the step), stops on a
non-finite loss naming the step and component, and writes ``metrics.json`` and ``run_info.json``.

Files in ``out_dir``: ``train_state.safetensors`` (everything needed to resume, written every
``ckpt_every`` steps), ``last.safetensors`` (the model), ``ckpt_step{K}.safetensors`` (the model at
each ``save_steps`` K of the seed stage and at the end) with ``ckpt_step{K}.json`` (its zero-shot
retrieval and end losses, written when it is saved, so a resumed run keeps them), ``metrics.json``
(``checkpoints`` holds every ``ckpt_step{K}.json``; ``summary`` the flat metrics of the final model:
``ir_r1 … tr_r10``, ``rsum``, ``loss_<name>_end``), ``run_info.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import torch
from torch import nn

from vlmerge_core.config import InitPretrainConfig, ModelConfig, PretrainConfig
from vlmerge_core.io import load_safetensors, read_json, save_safetensors, write_json, write_run_info
from vlmerge_core.model import (
    MultiwayTransformer,
    init_ms_from_ma,
    load_state,
    load_state_strict,
    load_timm_into_v,
    save_model,
)
from vlmerge_core.pretrain import objectives
from vlmerge_core.pretrain.batches import build_pretrain_data, make_global_batch
from vlmerge_core.pretrain.distributed import DistInfo, all_reduce_sum, init_distributed, repeatable
from vlmerge_core.pretrain.evaluate import evaluate_retrieval
from vlmerge_core.pretrain.optim import load_optimizer_state, make_optimizer, optimizer_state_tensors, set_lr

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
STATE_FILE = "train_state.safetensors"


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


def _state_meta(cfg: PretrainConfig, model_cfg: ModelConfig, stage: str) -> dict:
    return {
        "pretrain_config": dataclasses.asdict(cfg),
        "model_config": dataclasses.asdict(model_cfg),
        "stage": stage,
    }


def _save_state(path: Path, model: nn.Module, opt, step: int, history: dict, meta: dict) -> None:
    tensors = {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = optimizer_state_tensors(opt)
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_safetensors(path, tensors, {**meta, "step": step, "history": history, "optimizer": opt_meta})


def _load_state(path: Path, model: nn.Module, opt, meta_expected: dict) -> tuple[int, dict]:
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
    from tqdm.auto import tqdm

    disable = (not enabled) or os.environ.get("VLMERGE_NO_TQDM", "") not in ("", "0") or None
    return tqdm(total=total, initial=initial, desc="pretrain", disable=disable, dynamic_ncols=True)


def _init_from_beit(cfg: InitPretrainConfig, model_cfg: ModelConfig, out_dir: Path, info: DistInfo) -> dict:
    from vlmerge_core.paths import resolve

    model = build_stage_model(model_cfg, "init", None)
    done = load_timm_into_v(model, resolve(cfg.beit_checkpoint))
    metrics = {
        "stage": "init",
        "kind": "ma",
        "source": str(cfg.beit_checkpoint),
        "tensors_loaded": len(done),
        "steps": 0,
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
        return _init_from_beit(cfg, model_cfg, out_dir, info)
    losses = {k: float(w) for k, w in cfg.losses.items() if w > 0}
    if not losses:
        raise ValueError(f"{stage}: no loss has a weight > 0 in losses={cfg.losses}")
    A, W = cfg.grad_accum, info.world_size
    if cfg.batch_size % (A * W):
        raise ValueError(
            f"batch_size {cfg.batch_size} must be divisible by grad_accum ({A}) x world size ({W})"
        )
    G = cfg.batch_size // A  # global micro-batch
    shard = objectives.Shard(lo=info.rank * G // W, hi=(info.rank + 1) * G // W, size=G)

    torch.manual_seed(cfg.rng_seed)
    model = build_stage_model(model_cfg, stage, init).to(info.device)
    model.tokenizer_info = getattr(world, "tokenizer_identity", None)  # checked when a task is built
    opt = make_optimizer(model, cfg)
    meta = _state_meta(cfg, model_cfg, stage)
    step, history = 0, {k: [] for k in losses}
    state_path = out_dir / STATE_FILE
    if state_path.exists():
        step, history = _load_state(state_path, model, opt, meta)
        log.info("resumed %s from step %d", state_path, step)
        if step >= cfg.steps and (out_dir / "metrics.json").exists():
            return read_json(out_dir / "metrics.json")
    elif info.is_main:
        for stale in out_dir.glob("ckpt_step*.json"):  # metrics of an earlier run in this folder
            stale.unlink()
    resumed_from = step
    data = build_pretrain_data(world, model_cfg, losses, cfg.caption_style)
    cuda = str(info.device).startswith("cuda")
    module = objectives.LossModule(model, losses, shard, info.device, cfg.itm_negatives)
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel

        module = DistributedDataParallel(
            module, device_ids=[info.local_rank] if cuda else None, find_unused_parameters=True
        )
    model.train()
    names = list(losses)
    save_steps = set(getattr(cfg, "save_steps", []))
    t_loop, n_samples = time.perf_counter(), 0
    bar = _progress(cfg.steps, step, info.is_main)
    while step < cfg.steps:
        set_lr(opt, step, cfg)
        step_losses = torch.zeros(len(names), dtype=torch.float64)
        for k in range(A):
            batch = make_global_batch(data, cfg, step, k, G, model.num_patches, set(names))
            sync = contextlib.nullcontext() if (k == A - 1 or not info.distributed) else module.no_sync()
            with sync:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and cfg.amp):
                    parts = module(batch)
                values = all_reduce_sum(torch.stack([parts[n].detach().double() for n in names])).cpu()
                bad = [(n, v) for n, v in zip(names, values.tolist()) if not torch.isfinite(torch.tensor(v))]
                if bad:
                    raise NonFiniteLossError(
                        f"step {step}: loss component {bad[0][0]!r} is {bad[0][1]} "
                        f"(last good checkpoint kept in {out_dir})"
                    )
                total = sum(losses[n] * parts[n] for n in names) * (W / A)
                total.backward()
            step_losses += values / A
        if cfg.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if not torch.isfinite(gnorm):
                raise NonFiniteLossError(
                    f"step {step}: gradient norm is {gnorm.item()} (last good checkpoint kept in {out_dir})"
                )
        opt.step()
        opt.zero_grad(set_to_none=True)
        for n, v in zip(names, step_losses.tolist()):
            history[n].append(v)
        step += 1
        n_samples += cfg.batch_size
        rate = n_samples / max(time.perf_counter() - t_loop, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[n] * history[n][-1] for n in names):.3f}", sps=f"{rate:.0f}")
        if info.is_main:
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                _save_state(state_path, model, opt, step, history, meta)
            if step in save_steps or step == cfg.steps:
                save_model(out_dir / f"ckpt_step{step}.safetensors", model, {"stage": stage, "step": step})
                write_json(
                    out_dir / f"ckpt_step{step}.json",
                    checkpoint_metrics(model, world, cfg, losses, history, step, info.device),
                )
        if stop_at is not None and step >= stop_at and step < cfg.steps:
            bar.close()
            return {"stage": stage, "stopped_at": step}
    bar.close()
    loop_s = time.perf_counter() - t_loop
    metrics = {
        "stage": stage,
        "kind": model.kind,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "world_size": W,
        "losses": losses,
        "resumed_from_step": resumed_from,
        "loss_curve": _curve(history, cfg.log_every),
        "loss_start": {n: _mean(v[: cfg.log_every]) for n, v in history.items()},
        "loss_end": {n: _mean(v[-cfg.log_every :]) for n, v in history.items()},
        "wall_time_s": time.perf_counter() - t_start,
        "samples_per_s": n_samples / loop_s if loop_s > 0 else None,
    }
    if info.is_main:
        save_model(out_dir / "last.safetensors", model, {"stage": stage, "step": step})
        last = out_dir / f"ckpt_step{step}.json"
        final = (
            read_json(last)
            if last.exists()
            else checkpoint_metrics(model, world, cfg, losses, history, step, info.device)
        )
        metrics.update({k: final[k] for k in ("retrieval", "retrieval_vl", "summary") if k in final})
        metrics["checkpoints"] = {
            str(k): read_json(out_dir / f"ckpt_step{k}.json")
            for k in sorted({*save_steps, step})
            if k <= step and (out_dir / f"ckpt_step{k}.json").exists()
        }
        metrics["wall_time_s"] = time.perf_counter() - t_start
        write_json(out_dir / "metrics.json", metrics)
        write_run_info(
            out_dir / "run_info.json",
            cfg,
            model_config=dataclasses.asdict(model_cfg),
            stage=stage,
            init=str(init) if init else None,
            world=str(getattr(world, "root", "")),
            world_size=W,
            device=str(info.device),
        )
    return metrics


def stage_configs(params, stage: str, variant: str = "") -> tuple[PretrainConfig, ModelConfig]:
    """The (pre-training section, model config) of a stage from resolved :class:`Params`.

    Args:
        params: resolved parameters (``load_params``/``profile_params``).
        stage: ``"init"``, ``"seed"`` or ``"ms"``.
        variant: for ``ms``, a key of ``MS_VARIANTS`` (empty: ``params.model.ms_components``).
    """
    from vlmerge_core.model import MS_VARIANTS

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
