"""The study's DVC stages as one call each (what notebooks 05–07 run; ``dvc.yaml`` wires them).

- :func:`run_ms_stage`: MS pre-training of one model of ``study.ms_models`` from its seed checkpoint;
- :func:`run_merge_grid_stage`: Gram matrices and every merge of one MS model (:func:`plan.merge_jobs`);
- :func:`run_evaluate_stage`: fine-tune and evaluate one MS model and all its merges;
- :func:`run_testbed_stage`: E0, the testbed-validity experiment (untrained, random init, init, seeds,
  MA baseline; every task; ``study.ft_seeds``);
- :func:`run_collect_stage`: the tidy CSV tables of ``metrics/study/`` for the report.

Each takes ``params_file`` (relative to the repo root) or a ``profile``, and writes its metrics
atomically; re-running a stage gives the same metrics for the same inputs (but for ``seconds``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vlmerge_core.config import Params, ParamsError, load_params
from vlmerge_core.io import write_json
from vlmerge_core.paths import resolve
from vlmerge_core.study import plan
from vlmerge_core.study.demo import merge_records_path
from vlmerge_core.study.demo import prepare as demo_prepare

log = logging.getLogger(__name__)


def _params(params_file: str, profile: str) -> Params:
    return load_params(params_file) if params_file else load_params(profile=profile)


def _model(params: Params, model_id: str) -> plan.MSModel:
    models = plan.ms_models(params)
    if model_id not in models:
        raise ParamsError(f"model_id: {model_id!r} is not a key of study.ms_models ({sorted(models)})")
    return models[model_id]


def _need(path: str, what: str) -> Path:
    p = resolve(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: {what} not found (run its DVC stage first)")
    return p


def study_info(params: Params, model_id: str) -> dict[str, Any]:
    """The identity of an MS model for metrics files (``study`` block of pre-training metrics)."""
    m = _model(params, model_id)
    return {"model_id": f"ms_{model_id}", "kind": "ms", "seed_steps": m.seed_steps, "variant": m.variant}


# ---------------------------------------------------------------------------------------- pretraining
def run_study_pretrain_stage(
    params_file: str = "",
    *,
    profile: str = "smoke",
    run: str = "",
    world_dir: str = "",
    runs_dir: str = plan.RUNS,
    metrics_out: str = "",
    demo: bool = False,
) -> dict:
    """One pre-training run of the study: ``run="ma_baseline"`` or a key of ``study.ms_models``.

    The MA baseline is MA pre-trained from the init for K_VL steps with the seed stage's settings (the
    paper's MA model "from scratch"); an MS model is pre-trained for ``ms_pretrain.steps`` from the seed
    checkpoint of its ``seed_steps`` (the init for 0), every expert a copy of it. ``demo`` first builds
    missing upstream checkpoints at the params' scale (:mod:`vlmerge_core.study.demo`).
    """
    from vlmerge_core.pretrain.stage import run_pretrain_stage

    params = _params(params_file, profile)
    if demo:
        demo_prepare(params_file, profile, runs_dir)
    common = {
        "params_file": params_file,
        "profile": profile,
        "world_dir": world_dir,
        "resume": False,
        "metrics_out": metrics_out,
    }  # the metrics and the loss curve beside them (DVC plots)
    if run == "ma_baseline":
        _need(plan.init_ckpt(runs_dir), "init checkpoint")
        metrics = run_pretrain_stage(
            "seed",
            init=plan.init_ckpt(runs_dir),
            out_dir=f"{runs_dir}/ma",
            steps=plan.ma_baseline_steps(params),
            **common,
        )
        info = {"model_id": "ma_baseline", "kind": "ma_baseline", "seed_steps": None, "variant": ""}
    else:
        m = _model(params, run)
        _need(m.init_ckpt(runs_dir), f"seed checkpoint of {m.seed_steps} steps")
        metrics = run_pretrain_stage(
            "ms", variant=m.variant, init=m.init_ckpt(runs_dir), out_dir=plan.ms_dir(run, runs_dir), **common
        )
        info = study_info(params, run)
    metrics = {**metrics, "study": info}
    if metrics_out:
        write_json(resolve(metrics_out), metrics)
    return metrics


# -------------------------------------------------------------------------------------------- merging
def run_merge_grid_stage(
    params_file: str = "",
    *,
    profile: str = "smoke",
    model_id: str = "",
    world_dir: str = "",
    runs_dir: str = plan.RUNS,
    metrics_out: str = "",
    distance_out: str = "",
    demo: bool = False,
) -> dict:
    """Gram matrices (when a merge needs them), every merge of MS model ``model_id``, and the weight
    distances of its experts around its seed.

    Writes ``<runs>/gram/<id>/``, ``<runs>/merge/<id>/<option>/*.safetensors``, the merge records
    (method, knob, option, task group, tasks, path, seconds) at ``metrics_out`` and the distances
    (total and per block) at ``distance_out``.
    """
    from vlmerge_core.analysis.stage import run_distance_stage
    from vlmerge_core.merge.methods import get_method
    from vlmerge_core.merge.stage import merge_all, run_gram_stage

    params = _params(params_file, profile)
    m = _model(params, model_id)
    if demo:
        demo_prepare(params_file, profile, runs_dir, ms=(model_id,))
    ms_path = _need(plan.ms_ckpt(model_id, runs_dir), f"MS checkpoint of {model_id}")
    central = _need(m.central_ckpt(runs_dir), f"central (seed) checkpoint of {model_id}")
    resolve(plan.gram_path(model_id, runs=runs_dir)).parent.mkdir(parents=True, exist_ok=True)
    jobs = plan.merge_jobs(params, model_id)
    grams: dict[bool, Path] = {}
    for job in jobs:
        nopad = job.option == plan.OPTION_GRAM_NOPAD
        if get_method(job.method).needs_grams and nopad not in grams:
            path = plan.gram_path(model_id, nopad, runs_dir)
            run_gram_stage(
                params_file,
                profile=profile,
                ms_ckpt=str(ms_path),
                world_dir=world_dir,
                out=path,
                exclude_padding=nopad,
            )
            grams[nopad] = resolve(path)
    root = resolve(".")
    records = []
    for job in jobs:
        t0 = time.perf_counter()
        gram = grams.get(job.option == plan.OPTION_GRAM_NOPAD) if get_method(job.method).needs_grams else None
        used = job.option == plan.OPTION_USED_EXPERTS or params.merge.only_used_experts
        recs = merge_all(
            ms_path,
            resolve(plan.merge_dir(model_id, runs_dir)) / (job.option or "default"),
            [(job.method, job.params)],
            central_path=central,
            gram_path=gram,
            only_used_experts=used,
            unimodal_paths=params.merge.unimodal_paths,
        )
        seconds = (time.perf_counter() - t0) / max(len(recs), 1)
        for rec in recs:
            path = Path(rec["path"])
            rec.update(
                {
                    "option": job.option,
                    "experiments": list(job.experiments),
                    "seconds": seconds,
                    "path": str(path.relative_to(root)) if path.is_relative_to(root) else str(path),
                }
            )
        records += recs
    out = {"model": study_info(params, model_id), "records": records}
    if metrics_out:
        write_json(resolve(metrics_out), out)
    if distance_out:
        dist = run_distance_stage(
            params_file, profile=profile, ms_ckpt=str(ms_path), central_ckpt=str(central)
        )
        write_json(resolve(distance_out), {**dist, "model": study_info(params, model_id)})
    return out


def checkpoints_for(records: list[dict], run: str, option: str, tasks: Sequence[str]) -> dict[str, str]:
    """Task -> merged checkpoint (as recorded, from the repo root) of one merge and option, for each
    of ``tasks``: the lookup of :func:`~vlmerge_core.merge.stage.record_for_task`.

    Raises:
        MergeError: no record of ``run`` with ``option`` covers a task.
    """
    from vlmerge_core.merge.stage import record_for_task

    mine = [r for r in records if r.get("option", "") == option]
    return {task: record_for_task(mine, run, task)["path"] for task in tasks}


# ----------------------------------------------------------------------------------------- fine-tuning
def _finetune(
    params_file: str,
    profile: str,
    job: plan.FinetuneJob,
    world_dir: str,
    checkpoints: dict[str, str] | None = None,
    epochs: int | None = None,
) -> dict:
    from vlmerge_core.tasks.stage import run_finetune_stage

    info = {k: v for k, v in job.info.items() if k not in ("checkpoint", "ms_id", "run")}
    info = {"model_id": job.model_id, "kind": job.kind, **info, "experiments": list(job.experiments)}
    checkpoints = dict(checkpoints or {})
    checkpoint = checkpoints.pop("*", job.info.get("checkpoint", ""))
    return run_finetune_stage(
        params_file,
        profile=profile,
        checkpoint=checkpoint,
        checkpoints=checkpoints or None,
        tasks=list(job.tasks),
        ft_seeds=list(job.ft_seeds),
        world_dir=world_dir,
        epochs=epochs,
        model_info=info,
    )


def run_evaluate_stage(
    params_file: str = "",
    *,
    profile: str = "smoke",
    model_id: str = "",
    world_dir: str = "",
    runs_dir: str = plan.RUNS,
    merge_metrics: str = "",
    metrics_out: str = "",
    demo: bool = False,
) -> list[dict]:
    """Fine-tune and evaluate the models of one stage: ``model_id="testbed"`` runs E0 (untrained,
    random init, init, shortest and longest seed, MA baseline, on every task with ``study.ft_seeds``);
    a key of ``study.ms_models`` runs that MS model unmerged and every merge of it.

    Args:
        merge_metrics: the merge stage's records of this MS model (where its merged checkpoints are).
    """
    from vlmerge_core.io import read_json

    params = _params(params_file, profile)
    if demo and model_id == "testbed":
        demo_prepare(params_file, profile, runs_dir, ma=True)
    elif demo:
        demo_prepare(params_file, profile, runs_dir, merges=(model_id,))
        merge_metrics = merge_metrics or merge_records_path(model_id, runs_dir)
    if model_id == "testbed":
        jobs = plan.testbed_jobs(params, runs_dir)
        records: list[dict] = []
    else:
        _model(params, model_id)
        jobs = plan.evaluate_jobs(params, model_id, runs_dir)
        records = read_json(_need(merge_metrics, "merge records"))["records"] if merge_metrics else []
    units, owners = [], []  # one unit per (job, fine-tuning seed, task): ~10 s each, so the workers
    for k, job in enumerate(jobs):  # stay busy to the end of the stage
        ckpts = None
        if job.kind == "merged":
            ckpts = checkpoints_for(records, job.info["run"], job.info.get("option", ""), job.tasks)
        elif not job.info["checkpoint"].startswith("random:"):
            _need(job.info["checkpoint"], f"checkpoint of {job.model_id}")
        epochs = 0 if job.kind == "untrained" else None
        for seed in job.ft_seeds:
            for task in job.tasks:
                one = dataclasses.replace(job, tasks=(task,))
                units.append(
                    (params_file, profile, one, seed, world_dir, ckpts and {task: ckpts[task]}, epochs)
                )
                owners.append(k)
    done = _run_units(units, params.study.workers, [_unit_cost(params, u[2].tasks[0], u[6]) for u in units])
    docs = []
    for k, job in enumerate(jobs):  # one document per job, records in (task, seed) order
        parts = [doc for owner, doc in zip(owners, done) if owner == k]
        recs = sorted(
            (r for d in parts for r in d["records"]), key=lambda r: (job.tasks.index(r["task"]), r["ft_seed"])
        )
        docs.append({"model": parts[0]["model"], "records": recs})
    if metrics_out:
        write_json(resolve(metrics_out), docs)
    return docs


def _unit(args: tuple) -> dict:
    """One (job, fine-tuning seed, task) of a stage (the job carries the one task); in a worker
    process it uses one torch thread."""
    params_file, profile, job, seed, world_dir, ckpts, epochs = args
    return _finetune(
        params_file, profile, dataclasses.replace(job, ft_seeds=(seed,)), world_dir, ckpts, epochs
    )


def _unit_cost(params: Params, task: str, epochs: int | None) -> float:
    """A unit's relative cost for scheduling: its epochs (``finetune.overrides`` applied) times its
    training-set cap. Only the order of submission depends on it, never a result."""
    from vlmerge_core.tasks.engine import task_config

    cfg = task_config(params.finetune, task)
    n = cfg.train_subsample or 10**6  # 0: the whole training set, taken as large
    return float((cfg.epochs if epochs is None else epochs) * n) + 1.0  # + evaluation


def lpt_order(costs: Sequence[float]) -> list[int]:
    """Indices of ``costs``, costliest first; equal costs keep their order (a stable sort)."""
    return sorted(range(len(costs)), key=lambda i: -costs[i])


def _run_units(units: list[tuple], workers: int, costs: list[float] | None = None) -> list[dict]:
    """Run the units, in order or on ``workers`` spawned processes (one torch thread each), and return
    their results in the order of ``units``. On workers the costliest units go first (longest
    processing time first), so no worker is left with a long unit while the other idles at the end of
    the stage. The results are the same either way (every unit is seeded); only the wall time differs."""
    if workers <= 1 or len(units) <= 1:
        return [_unit(u) for u in units]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    order = lpt_order(costs or [1.0] * len(units))
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init
    ) as pool:
        done = dict(zip(order, pool.map(_unit, [units[i] for i in order])))
    return [done[i] for i in range(len(units))]


def _worker_init() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO)


# ------------------------------------------------------------------------------------------ collection
def run_collect_stage(
    params_file: str = "",
    *,
    profile: str = "smoke",
    metrics_dir: str = "metrics",
    out_dir: str = "metrics/study",
) -> dict:
    """Collect every metrics file of the study into ``out_dir``'s CSV tables; returns row counts."""
    from vlmerge_core.study.collect import collect

    _params(params_file, profile)  # validates the params file
    frames = collect(resolve(metrics_dir), resolve(out_dir))
    return {name: len(df) for name, df in frames.items()}
