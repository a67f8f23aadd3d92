"""The merge steps on parsed params (the study's workers, ``analysis.merge_tool`` for notebook 03, the CLI).

- :func:`write_grams`: RegMean's Gram matrices of an MS checkpoint on micro-world image-text pairs.
- :func:`write_merges`: every method and knob of ``params.merge`` on one MS checkpoint, one merged
  checkpoint per task group for a task-dependent merge (:mod:`vlmerge_core.merge.grid`), written as
  ``<out_dir>/<run_name>[__<group>].safetensors`` with an index ``<out_dir>/merges.json``.
- :func:`job_kwargs` / :func:`job_record`: the arguments of ``merge_checkpoint`` for one
  :class:`~vlmerge_core.merge.grid.MergeJob` and the record of its checkpoint (the study's merges too).
- :func:`record_for_task` / :func:`checkpoint_for_task`: which of those checkpoints a task is
  evaluated with.
- :func:`make_demo_checkpoints`: a pico central (MA) model, a noisy MS copy and its Gram matrices, so
  that the notebook runs without any training (smoke default).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from vlmerge_core.config import Params, profile_params
from vlmerge_core.data import ensure_world
from vlmerge_core.io import read_json, write_json
from vlmerge_core.merge.gram import collect_grams, save_grams
from vlmerge_core.merge.grid import MergeJob, check_inputs, merge_jobs, method_grid, run_name
from vlmerge_core.merge.methods import MergeError, get_method
from vlmerge_core.merge.stream import merge_checkpoint
from vlmerge_core.model import MultiwayTransformer, init_ms_from_ma, load_model, save_model
from vlmerge_core.model.experts import COMPONENTS, EXPERTS, TASKS
from vlmerge_core.paths import repo_root, resolve
from vlmerge_core.pretrain.distributed import resolve_device

__all__ = [
    "checkpoint_for_task",
    "job_kwargs",
    "job_record",
    "make_demo_checkpoints",
    "method_grid",
    "random_batches",
    "record_for_task",
    "run_name",
    "write_grams",
    "write_merges",
]

log = logging.getLogger(__name__)
INDEX = "merges.json"  # the records of write_merges, beside the checkpoints


def _shown(path: Path) -> str:
    """``path`` relative to the repo root when inside it (stable across machines), else absolute."""
    try:
        return path.resolve().relative_to(repo_root()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def write_grams(
    params: Params,
    *,
    ms_ckpt: str,
    world_dir: str = "",
    out: str,
    exclude_padding: bool = False,
    metrics_out: str = "",
    batches: Iterable[dict[str, torch.Tensor]] | None = None,
    passes: Sequence[str] = ("image", "text", "fused"),
) -> dict:
    """Collect RegMean's Gram matrices of ``ms_ckpt`` on the micro-world's training pairs (or on
    ``batches``, e.g. COCO retrieval's: :func:`~vlmerge_core.tasks.retrieval.gram_batches`), on
    ``merge.gram_device``.

    Args:
        params: the study's parameters (``merge.gram_batches``, ``merge.gram_batch_size``, ``data``).
        ms_ckpt: the MS checkpoint.
        world_dir: micro-world folder; empty = ``data.root`` of the params (generated if missing).
        out: output ``.safetensors`` (float64, keyed by module name).
        exclude_padding: sum over real tokens only (ours); default every token, as the official code.
        metrics_out: when non-empty, the summary JSON is written there too.
        batches: image-caption batches to use instead of the world's pairs.
        passes: the image-only (``v``), text-only (``l``) and fused (``vl``) passes to run.

    Returns:
        ``{"out", "ms_ckpt", "batches", "batch_size", "exclude_padding", "matrices"}``.
    """
    cfg = params.merge
    if batches is None and params.data.pretrain_format != "micro":
        raise MergeError(
            f"merge.gram_source 'pairs' reads the micro-world's pairs, but data.pretrain_format is "
            f"{params.data.pretrain_format!r}: use merge.gram_source 'coco_retrieval' with real data"
        )
    source = (
        batches
        if batches is not None
        else ensure_world(params.data, resolve(world_dir) if world_dir else None)
    )
    model = load_model(resolve(ms_ckpt))
    if model.kind != "ms":
        raise MergeError(f"{ms_ckpt}: Gram matrices need a modality-specific (MS) checkpoint")
    device = resolve_device(cfg.gram_device, "merge.gram_device")
    grams = collect_grams(
        model, source, cfg.gram_batches, batch_size=cfg.gram_batch_size, exclude_padding=exclude_padding,
        passes=tuple(passes), device=device,
    )  # fmt: skip
    meta = {
        "source": Path(ms_ckpt).name,
        "batches": cfg.gram_batches,
        "batch_size": cfg.gram_batch_size,
        "exclude_padding": exclude_padding,
    }
    path = save_grams(resolve(out), grams, meta)
    result = {"out": _shown(path), "ms_ckpt": Path(ms_ckpt).name, "matrices": len(grams), **meta}
    result.pop("source")
    if metrics_out:
        write_json(resolve(metrics_out), result)
    return result


def job_kwargs(
    job: MergeJob,
    *,
    central_path: str | Path | None = None,
    gram_path: str | Path | None = None,
    only_used_experts: bool = False,
    unimodal_paths: bool = False,
    drop_gramless: bool = False,
) -> dict[str, Any]:
    """The keyword arguments of :func:`~vlmerge_core.merge.stream.merge_checkpoint` for one
    :class:`~vlmerge_core.merge.grid.MergeJob` (the central checkpoint and the Grams only where its
    method needs them). ``drop_gramless``: see :func:`~vlmerge_core.merge.unify.iter_unified`
    (``merge.gram_source``)."""
    method = get_method(job.method)
    return {
        "central_path": central_path if method.needs_central else None,
        "gram_path": gram_path if method.needs_grams else None,
        "task": job.task,
        "only_used_experts": only_used_experts,
        "unimodal_paths": unimodal_paths,
        "extra_info": {"group": job.group, "tasks": list(job.tasks), "run": job.run_name},
        "drop_gramless": drop_gramless and method.needs_grams,
        **job.params,
    }


def job_record(job: MergeJob, path: Path, seconds: float) -> dict[str, Any]:
    """The record of one merged checkpoint: ``{method, run, knob, knob_value, params, group, tasks,
    path, seconds}`` (``run`` the run name, e.g. ``regmean_alpha1``; ``path`` relative to the repo
    root when inside it); logs the merge."""
    log.info("merged %s (%s) -> %s", job.run_name, job.group, path)
    return {
        "method": job.method,
        "run": job.run_name,
        "knob": job.knob,
        "knob_value": job.knob_value,
        "params": job.params,
        "group": job.group,
        "tasks": list(job.tasks),
        "path": _shown(path),
        "seconds": seconds,
    }


def write_merges(
    params: Params,
    *,
    ms_ckpt: str,
    central_ckpt: str = "",
    gram_path: str = "",
    out_dir: str,
    methods: list[str] | None = None,
    only_used_experts: bool | None = None,
    metrics_out: str = "",
) -> dict:
    """Merge ``ms_ckpt`` by every method and knob of ``params.merge`` (or ``methods``).

    A task-dependent merge (RegMean always; every method with ``only_used_experts`` or
    ``merge.unimodal_paths``) gives one checkpoint per task group of ``finetune.tasks``.

    Args:
        params: the study's parameters (``merge``, ``finetune.tasks``).
        ms_ckpt: the MS checkpoint.
        central_ckpt: the seed (MA) checkpoint, for methods that need it.
        gram_path: Gram matrices (:func:`write_grams`), for methods that need them.
        out_dir: folder of the merged checkpoints and of their index ``merges.json``.
        methods: method names; default ``merge.methods``.
        only_used_experts: overrides ``merge.only_used_experts``.
        metrics_out: when non-empty, the records JSON is written there too.

    Returns:
        ``{"ms_ckpt", "central_ckpt", "only_used_experts", "unimodal_paths", "merges": [records]}``,
        each record ``{method, run, knob, knob_value, params, group, tasks, path, seconds}``.
    """
    cfg = params.merge
    used = cfg.only_used_experts if only_used_experts is None else bool(only_used_experts)
    grid = method_grid(cfg, methods)
    check_inputs(dict(grid), central=bool(central_ckpt), grams=bool(gram_path))
    tasks = [t for t in params.finetune.tasks if t in TASKS] or list(TASKS)
    jobs = merge_jobs(grid, tasks=tasks, only_used_experts=used, unimodal_paths=cfg.unimodal_paths)
    out, ms_path = resolve(out_dir), resolve(ms_ckpt)
    common = {
        "central_path": resolve(central_ckpt) if central_ckpt else None,
        "gram_path": resolve(gram_path) if gram_path else None,
        "only_used_experts": used,
        "unimodal_paths": cfg.unimodal_paths,
        "drop_gramless": cfg.gram_source == "coco_retrieval",
    }
    records = []
    for job in jobs:
        path, t0 = out / f"{job.stem}.safetensors", time.perf_counter()
        merge_checkpoint(ms_path, path, job.method, **job_kwargs(job, **common))
        records.append(job_record(job, path, time.perf_counter() - t0))
    result = {
        "ms_ckpt": Path(ms_ckpt).name,
        "central_ckpt": Path(central_ckpt).name if central_ckpt else None,
        "only_used_experts": used,
        "unimodal_paths": cfg.unimodal_paths,
        "merges": records,
    }
    write_json(out / INDEX, result)
    if metrics_out:
        write_json(resolve(metrics_out), result)
    return result


def record_for_task(records: Sequence[Mapping[str, Any]], run_name: str, task: str) -> Mapping[str, Any]:
    """The merge record of ``run_name`` whose checkpoint ``task`` is evaluated with (the record of its
    task group for a task-dependent merge, the single record otherwise).

    Raises:
        MergeError: no record of ``run_name`` covers ``task`` (names both).
    """
    runs = [r for r in records if r["run"] == run_name]
    if not runs:
        known = sorted({r["run"] for r in records})
        raise MergeError(f"no merge named {run_name!r}; merged: {', '.join(known)}")
    for r in runs:
        if task in r["tasks"]:
            return r
    raise MergeError(
        f"{run_name}: no merged checkpoint for task {task!r} (groups: {[r['group'] for r in runs]})"
    )


def checkpoint_for_task(
    records_or_out_dir: Sequence[Mapping[str, Any]] | str | Path, run_name: str, task: str
) -> Path:
    """The merged checkpoint of ``run_name`` that ``task`` is evaluated with (:func:`record_for_task`).

    Args:
        records_or_out_dir: the ``merges`` records of :func:`write_merges`, or its ``out_dir``
            (whose ``merges.json`` is read).
        run_name: e.g. ``regmean_alpha1``.
        task: a downstream task.

    Raises:
        MergeError: no record of ``run_name`` covers ``task`` (names both).
    """
    if isinstance(records_or_out_dir, (str, Path)):
        records = read_json(resolve(records_or_out_dir) / INDEX)["merges"]
    else:
        records = records_or_out_dir
    return resolve(record_for_task(records, run_name, task)["path"])


def random_batches(cfg: Any, n: int, batch_size: int = 8, rng_seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Synthetic image-text batches (random pixels and tokens, some padding) for smoke Gram matrices."""
    g = torch.Generator().manual_seed(rng_seed)
    T = min(8, cfg.max_text_len)
    out = []
    for _ in range(n):
        mask = torch.arange(T)[None] < torch.randint(2, T + 1, (batch_size, 1), generator=g)
        ids = torch.randint(5, cfg.vocab_size, (batch_size, T), generator=g) * mask
        out.append(
            {
                "images": torch.randn(batch_size, 3, cfg.image_size, cfg.image_size, generator=g),
                "ids": ids,
                "mask": mask,
            }
        )
    return out


def make_demo_checkpoints(out_dir: str | Path, noise: float = 0.02, rng_seed: int = 0) -> dict[str, Path]:
    """A pico central (MA) checkpoint, an MS checkpoint = central + per-expert noise, and its Gram file."""
    out_dir = Path(out_dir)
    torch.manual_seed(rng_seed)
    cfg = dataclasses.replace(profile_params("smoke").model, layer_scale_init=0.1)
    central = MultiwayTransformer(cfg)
    ms = init_ms_from_ma(
        MultiwayTransformer(dataclasses.replace(cfg, ms_components=list(COMPONENTS))), central.state_dict()
    )
    g = torch.Generator().manual_seed(rng_seed + 1)
    with torch.no_grad():
        for name, p in ms.named_parameters():
            if any(f".{e}." in name for e in EXPERTS):
                p.add_(noise * torch.randn(p.shape, generator=g))
    paths = {
        "central": out_dir / "demo_central.safetensors",
        "ms": out_dir / "demo_ms.safetensors",
        "grams": out_dir / "demo_grams.safetensors",
    }
    save_model(paths["central"], central)
    save_model(paths["ms"], ms)
    save_grams(paths["grams"], collect_grams(ms, random_batches(cfg, 2, rng_seed=rng_seed), 2))
    return paths
