"""The fine-tune-and-evaluate stage as one call (what ``notebooks/04_finetune_eval.ipynb`` and DVC run).

:func:`run_finetune_stage` fine-tunes one model (or one checkpoint per task group of a merge) on each
task and each fine-tuning seed, evaluates it with bootstrap confidence intervals over the test
examples, and writes one JSON file::

    {"model": model_info,
     "records": [{"task", "ft_seed", "metrics": {name: value}, "ci": {name: [low, high]},
                  "main_metric", "select_metric", "val_last_gain", "seconds", "n_train", "best_epoch",
                  "epochs", "steps", "checkpoint", "val": {name: value},
                  "curve": {"step", "loss", "val_epoch", "val_step", "val_select"}}]}

``metrics`` holds the test metrics under the paper's names (PAPER.md section 6; retrieval adds the
``*_pessimistic`` tie counts), values 0-100; ``ci`` the 95 % percentile bootstrap interval of each
(``report.n_bootstrap`` resamples seeded by ``report.rng_seed``; NaN, written as null, when 0).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from vlmerge_core.config import ModelConfig, Params, ParamsError, stage_params
from vlmerge_core.data.real_source import task_world
from vlmerge_core.io import write_json
from vlmerge_core.model import CheckpointMismatchError, model_config_of
from vlmerge_core.model.experts import TASKS
from vlmerge_core.paths import resolve
from vlmerge_core.study.launch import is_rank_zero, launch_call  # config, io, paths only: no cycle
from vlmerge_core.tasks.registry import RANDOM_PREFIX, TaskRun, predictions, run_task

__all__ = ["check_architecture", "finetune_models", "records_table", "run_finetune_stage", "stage_params"]

log = logging.getLogger(__name__)

# model fields a checkpoint must share with params.model to be fine-tuned in this study's pipeline
ARCH_FIELDS = ("width", "depth", "heads", "mlp_ratio", "vl_start", "image_size", "patch_size")
ARCH_FIELDS += ("vocab_size", "max_text_len")


def check_architecture(checkpoint: str | Path, model_cfg: ModelConfig) -> None:
    """Raise when the checkpoint's architecture differs from ``model_cfg`` (the file and key named).

    Only the fields of :data:`ARCH_FIELDS` are compared: MS components, layer scale, drop path and
    init may differ (MS, merged and MA checkpoints of one study all fit).
    """
    stored = model_config_of(checkpoint)
    for name in ARCH_FIELDS:
        if getattr(stored, name) != getattr(model_cfg, name):
            raise CheckpointMismatchError(
                f"{checkpoint}: model.{name} is {getattr(stored, name)!r} in the checkpoint but "
                f"{getattr(model_cfg, name)!r} in the params (architecture mismatch)"
            )


def _backbones(
    tasks: list[str], checkpoint: str, checkpoints: dict[str, str], model_cfg: ModelConfig
) -> dict[str, str]:
    """Task -> backbone spec (checked: known tasks, existing files, matching architecture)."""
    extra = sorted(set(checkpoints) - set(TASKS))
    if extra:
        raise ParamsError(f"checkpoints: unknown task key(s) {extra}; expected a subset of {list(TASKS)}")
    out: dict[str, str] = {}
    for task in tasks:
        spec = checkpoints.get(task, checkpoint)
        if not spec:
            raise ParamsError(f"checkpoints: no checkpoint for task {task!r} and no default checkpoint")
        if not spec.startswith(RANDOM_PREFIX):
            path = resolve(spec)
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint for task {task!r} not found: {path}")
            check_architecture(path, model_cfg)
        out[task] = spec
    return out


def _record(task: str, ft_seed: int, spec: str, run: TaskRun) -> dict[str, Any]:
    """The stage's record of one fine-tuning."""
    m = run.metrics
    return {
        "task": task,
        "ft_seed": ft_seed,
        "checkpoint": spec,
        "metrics": dict(run.test),
        "ci": m["ci"],
        "val": dict(run.val),
        **{k: m[k] for k in ("main_metric", "select_metric", "val_last_gain", "seconds", "n_train")},
        **{k: m[k] for k in ("world_size", "data_format")},
        **{k: m[k] for k in ("best_epoch", "epochs", "steps", "curve")},
    }


def run_finetune_stage(params_file: str = "", *, profile: str = "smoke", **kwargs: Any) -> dict:
    """Entry point (notebook 04, DVC): parse the params once, then :func:`finetune_models`.

    Args:
        params_file: params file from the repo root; empty = ``profile``'s preset (both empty: the
            repo's ``params.yaml``).
        profile: parameter preset used when ``params_file`` is empty.
        **kwargs: the arguments of :func:`finetune_models`.

    With ``study.launcher: torchrun`` the fine-tunes are one ``torchrun`` job of
    ``study.nproc_per_node`` processes (rank 0's result comes back), as the study's units.
    """
    params = stage_params(params_file, profile)
    return launch_call(finetune_models, params.study, params, **kwargs)


def finetune_models(
    params: Params,
    *,
    checkpoint: str = "",
    checkpoints: dict[str, str] | None = None,
    tasks: list[str] | None = None,
    ft_seeds: list[int] | None = None,
    world_dir: str = "",
    epochs: int | None = None,
    model_info: dict | None = None,
    metrics_out: str = "",
    n_examples: int = 0,
) -> dict:
    """Fine-tune and evaluate one model on each task and fine-tuning seed; write one metrics file.

    Args:
        params: the study's parameters.
        checkpoint: the model for every task without an entry in ``checkpoints``: a checkpoint file
            (from the repo root) or ``"random:<rng_seed>"`` (a random-init model of ``params.model``).
        checkpoints: task -> checkpoint, for a merge with one checkpoint per task group.
        tasks: tasks to run (default ``params.finetune.tasks``).
        ft_seeds: fine-tuning RNG seeds (default ``[params.finetune.rng_seed]``); each seed draws the
            head init, the data order and the training subset.
        world_dir: micro-world folder; empty = ``params.data.root`` (generated there if missing).
        epochs: when given, the epochs of every task (0: evaluate without training, E0's "untrained").
        model_info: what the model is (model_id, kind, ...), written as the file's ``"model"``.
        metrics_out: the JSON file to write (from the repo root); empty = write nothing.
        n_examples: when > 0, the returned dict (not the file) also holds ``"predictions"``: task ->
            that many test predictions of the first seed's model, for figures.

    Returns:
        ``{"model": model_info, "records": [...]}`` (module docstring), plus ``"predictions"``.

    Raises:
        ParamsError: an unknown task, a negative epoch count, no checkpoint for a task.
        FileNotFoundError: a checkpoint file does not exist.
        CheckpointMismatchError: a checkpoint's architecture differs from ``params.model``.
    """
    cfg = params.finetune
    tasks = list(cfg.tasks) if tasks is None else list(tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ParamsError(f"tasks: unknown task(s) {unknown}; expected a subset of {list(TASKS)}")
    if epochs is not None and epochs < 0:
        raise ParamsError(f"epochs: must be >= 0, got {epochs}")
    seeds = [cfg.rng_seed] if ft_seeds is None else [int(s) for s in ft_seeds]
    if not seeds:
        raise ParamsError("ft_seeds: empty list of fine-tuning seeds")
    backbones = _backbones(tasks, checkpoint, dict(checkpoints or {}), params.model)
    world = task_world(params.data, world_dir or None)  # None: every task reads finetune.real_paths
    records: list[dict[str, Any]] = []
    shown: dict[str, list] = {}
    for task in tasks:
        for k, seed in enumerate(seeds):
            run = run_task(
                task,
                backbones[task],
                dataclasses.replace(cfg, rng_seed=seed),
                world,
                epochs=epochs,
                model_cfg=params.model,
                n_bootstrap=params.report.n_bootstrap,
                bootstrap_seed=params.report.rng_seed,
            )
            records.append(_record(task, seed, backbones[task], run))
            if n_examples > 0 and k == 0:
                shown[task] = predictions(run, "test", n_examples)
    result: dict[str, Any] = {"model": dict(model_info or {}), "records": records}
    if metrics_out and is_rank_zero():  # every rank holds the same metrics
        write_json(resolve(metrics_out), result)
        log.info("fine-tuning metrics written to %s", resolve(metrics_out))
    if n_examples > 0:
        result = {**result, "predictions": shown}
    return result


def records_table(records: list[dict[str, Any]]):
    """One row per fine-tuning record: the main test metric with its interval, convergence, time."""
    import pandas as pd  # heavy, for the notebook's table only: not loaded by every study worker

    rows = []
    for r in records:
        main = r["main_metric"]
        lo, hi = r["ci"][main]
        rows.append({"task": r["task"], "ft_seed": r["ft_seed"], "metric": main, "test": r["metrics"][main],
                     "ci_low": lo, "ci_high": hi, "val_last_gain": r["val_last_gain"],
                     "best_epoch": r["best_epoch"], "seconds": r["seconds"]})  # fmt: skip
    return pd.DataFrame(rows).round(2)
