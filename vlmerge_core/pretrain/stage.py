"""The pre-training stage as one call (what ``notebooks/02_pretrain.ipynb`` and DVC run)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from vlmerge_core.config import Params, stage_params
from vlmerge_core.data.real_source import open_source
from vlmerge_core.io import write_json
from vlmerge_core.paths import resolve
from vlmerge_core.pretrain.loop import run_pretrain, stage_configs
from vlmerge_core.study.launch import is_rank_zero, launch_call  # config, io, paths only: no cycle

__all__ = [
    "checkpoints_table",
    "clear_run",
    "curve_path",
    "curve_records",
    "pretrain_run",
    "run_pretrain_stage",
    "summary_table",
]

log = logging.getLogger(__name__)


def run_pretrain_stage(
    stage: str = "seed", *, profile: str = "smoke", params_file: str = "", **kwargs: Any
) -> dict:
    """Entry point (notebook 02, DVC): parse the params once, then :func:`pretrain_run`.

    Args:
        stage: ``"init"``, ``"seed"`` or ``"ms"``.
        profile: parameter preset used when ``params_file`` is empty.
        params_file: params file relative to the repo root (e.g. ``params.yaml``).
        **kwargs: the arguments of :func:`pretrain_run`.

    With ``study.launcher: torchrun`` the run is one ``torchrun`` job of ``study.nproc_per_node``
    processes (rank 0's metrics come back), as the study's pre-training units.
    """
    params = stage_params(params_file, profile)
    return launch_call(pretrain_run, params.study, params, stage, **kwargs)


def pretrain_run(
    params: Params,
    stage: str = "seed",
    *,
    variant: str = "",
    init: str = "",
    world_dir: str = "",
    out_dir: str = "scratch/nb02",
    metrics_out: str = "",
    steps: int = 0,
    resume: bool = True,
    rng_seed: int = -1,
    lr_mult: float = 1.0,
    threads: int = 0,
) -> dict:
    """Open (or generate) the world and run one pre-training stage of ``params``.

    Args:
        params: the study's parameters.
        stage: ``"init"``, ``"seed"`` or ``"ms"``.
        variant: MS variant (``all``, ``attn``, ``ffn``, ``ln``) for ``stage="ms"``.
        init: checkpoint to start from (relative to the repo root); empty = random (init/seed only).
        world_dir: micro-world folder; empty = ``data.root`` of the parameters (generated if missing).
        out_dir: run folder (checkpoints, metrics.json, run_info.json).
        metrics_out: when non-empty, the metrics are also written there (e.g. ``metrics/pretrain/seed.json``),
            and the loss curve beside it as DVC plot records (``<metrics_out stem>_curve.json``:
            ``[{"step": s, "<loss>": value, ...}, ...]``).
        steps: when > 0, overrides the stage's number of steps.
        resume: continue from ``out_dir``'s train state if there is one; False deletes the run files
            of ``out_dir`` first (train state, checkpoints, metrics) and starts over.
        rng_seed: when >= 0, overrides the stage's ``rng_seed`` (init, data order, masking, negatives).
        lr_mult: multiplies the stage's peak learning rate.
        threads: when > 0, ``torch.set_num_threads(threads)`` first (0 keeps torch's default).

    Returns:
        The run's metrics.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    cfg, model_cfg = stage_configs(params, stage, variant)
    if steps > 0:
        keep = [s for s in getattr(cfg, "save_steps", []) if s <= steps]
        extra = {"save_steps": keep} if hasattr(cfg, "save_steps") else {}
        cfg = dataclasses.replace(cfg, steps=steps, **extra)
    if rng_seed >= 0:
        cfg = dataclasses.replace(cfg, rng_seed=rng_seed)
    if lr_mult != 1.0:
        cfg = dataclasses.replace(cfg, lr=cfg.lr * lr_mult)
    world = open_source(params.data, world_dir or None)
    if not resume:
        clear_run(resolve(out_dir))
    metrics = run_pretrain(
        cfg, model_cfg, world, resolve(out_dir), init=resolve(init) if init else None, stage=stage
    )
    if metrics_out and is_rank_zero():  # rank 0 holds the evaluated metrics
        out = resolve(metrics_out)
        write_json(out, metrics)
        write_json(curve_path(out), curve_records(metrics))
        log.info("metrics written to %s", out)
    return metrics


def curve_path(metrics_out: str | Path) -> Path:
    """Where the loss curve of ``metrics_out`` goes: ``<folder>/<stem>_curve.json``."""
    p = Path(metrics_out)
    return p.with_name(f"{p.stem}_curve.json")


def curve_records(metrics: dict) -> list[dict]:
    """The windowed loss curve as DVC plot records, one per logged step."""
    curve = metrics.get("loss_curve") or {}
    steps = curve.get("step", [])
    names = [n for n in curve if n != "step"]
    return [{"step": s, **{n: curve[n][i] for n in names}} for i, s in enumerate(steps)]


def clear_run(out_dir: Path) -> list[Path]:
    """Delete the run files of ``out_dir`` (train state, model checkpoints, metrics, run info)."""
    files = [
        out_dir / n for n in ("train_state.safetensors", "last.safetensors", "metrics.json", "run_info.json")
    ]
    files += sorted(out_dir.glob("ckpt_step*.safetensors")) + sorted(out_dir.glob("ckpt_step*.json"))
    gone = [f for f in files if f.exists()]
    for f in gone:
        f.unlink()
    if gone:
        log.info("removed %d run files from %s (resume=False)", len(gone), out_dir)
    return gone


def summary_table(metrics: dict):
    """A small DataFrame: start/end loss per objective and the zero-shot retrieval recalls vs chance."""
    import pandas as pd  # heavy, for the notebook's tables only: not loaded by every study worker

    rows = [
        {"quantity": f"loss {n}", "start": metrics["loss_start"][n], "end": metrics["loss_end"][n]}
        for n in metrics.get("loss_start") or {}
    ]
    for key in ("retrieval", "retrieval_vl"):
        r = metrics.get(key)
        if r:
            for d in ("ir", "tr"):
                for k in (1, 5, 10):
                    rows.append(
                        {
                            "quantity": f"{key} {d.upper()}@{k}",
                            "end": r[f"{d}_r{k}"],
                            "chance": r[f"chance_{d}_r{k}"],
                        }
                    )
    return pd.DataFrame(rows).set_index("quantity")


def checkpoints_table(metrics: dict):
    """One row per kept checkpoint (seed lengths): zero-shot retrieval (percent) and end losses."""
    import pandas as pd  # heavy, for the notebook's tables only: not loaded by every study worker

    rows = {int(k): rec["summary"] for k, rec in (metrics.get("checkpoints") or {}).items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("step").sort_index()


def runs_table(runs: dict[str, dict]):
    """One row per run of a study pre-training stage: steps, zero-shot val rsum, end losses."""
    import pandas as pd  # heavy, for the notebook's tables only: not loaded by every study worker

    rows = {
        rid: {"steps": m.get("steps"), "rsum": (m.get("summary") or {}).get("rsum"),
              **{f"{n} end": v for n, v in (m.get("loss_end") or {}).items()}}
        for rid, m in runs.items()
    }  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("run").round(3)
