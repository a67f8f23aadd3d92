"""The study's stages on parsed parameters: every run of a group, every merge, every fine-tune.

The entry points of :mod:`vlmerge_core.study.stage` parse the params once and call these functions
with the :class:`~vlmerge_core.config.Params` object, which travels on to the worker processes inside
each unit (a pickled dataclass, not a file name to read again). Units are independent and run on
``study.workers`` processes (:mod:`vlmerge_core.study.workers`); each function writes its metrics
atomically, and re-running it gives the same metrics for the same inputs (but for wall times).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from vlmerge_core.analysis.stage import expert_distances
from vlmerge_core.config import Params, ParamsError
from vlmerge_core.io import read_json, write_json
from vlmerge_core.merge.grid import MergeJob, check_inputs, merge_jobs
from vlmerge_core.merge.methods import get_method
from vlmerge_core.merge.stage import job_kwargs, job_record, record_for_task, write_grams
from vlmerge_core.merge.stream import merge_checkpoint
from vlmerge_core.paths import resolve
from vlmerge_core.pretrain.stage import curve_records, pretrain_run
from vlmerge_core.study import plan
from vlmerge_core.study.collect import collect
from vlmerge_core.study.workers import cached, run_units, unit_key
from vlmerge_core.tasks.engine import task_config
from vlmerge_core.tasks.registry import gram_inputs
from vlmerge_core.tasks.stage import finetune_models

__all__ = ["checkpoints_for", "collect_study", "evaluate", "merge_ms_run", "pretrain_group"]

log = logging.getLogger(__name__)

GROUPS = ("ma", "ms")
EVALUATIONS = ("testbed", "evaluate")


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """Refuse ``value`` outside ``allowed``, naming the argument."""
    if value not in allowed:
        raise ParamsError(f"{name}: {value!r} is not one of {list(allowed)}")


def need(path: str, what: str) -> Path:
    """``path`` from the repo root, which must exist (``what`` names it in the error)."""
    p = resolve(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: {what} not found (run its DVC stage first)")
    return p


# ---------------------------------------------------------------------------------------- pretraining
def _pretrain_unit(args: dict[str, Any]) -> dict:
    """One pre-training run (in a worker); resumes a finished or interrupted run of the same config."""
    try:
        return pretrain_run(**args)
    except ValueError as exc:  # a run folder of another config: start it over
        if "cannot resume" not in str(exc):
            raise
        log.warning("%s; starting %s over", exc, args["out_dir"])
        return pretrain_run(**{**args, "resume": False})


def _pretrain_units(params: Params, group: str, world_dir: str, runs: str) -> tuple[list, list]:
    common = {"params": params, "world_dir": world_dir, "resume": True}
    units, infos = [], []
    if group == "ma":
        for run in plan.ma_runs(params).values():
            units.append({**common, "stage": "seed", "init": plan.init_ckpt(runs), "out_dir": run.dir(runs),
                          "steps": run.steps, "rng_seed": run.pt_seed})  # fmt: skip
            infos.append({"model_id": run.model_id, **run.info()})
    else:
        for run in plan.ms_runs(params).values():
            units.append({**common, "stage": "ms", "variant": run.variant, "init": run.init_ckpt(runs),
                          "out_dir": run.dir(runs), "steps": run.ms_steps, "rng_seed": run.ms_seed,
                          "lr_mult": run.lr_mult})  # fmt: skip
            infos.append({"model_id": run.model_id, **run.info()})
    return units, infos


def pretrain_group(
    params: Params,
    group: str = "ma",
    *,
    world_dir: str = "",
    runs_dir: str = plan.RUNS,
    metrics_dir: str = "",
    curves_dir: str = "",
) -> dict[str, dict]:
    """Every MA run (``group="ma"``) or every MS run (``"ms"``) of the grid, side by side on workers.

    Writes ``<runs_dir>/{ma,ms}/<id>/``; with ``metrics_dir``, ``<metrics_dir>/<id>.json`` (the run's
    metrics with a ``study`` block: model id, kind, RNG seed, steps, variant); with ``curves_dir``,
    ``<curves_dir>/<id>.json`` (the loss curve as DVC plot records).
    """
    check_choice("group", group, GROUPS)
    need(plan.init_ckpt(runs_dir), "init checkpoint")
    if group == "ms":
        for run in plan.ms_runs(params).values():
            need(run.init_ckpt(runs_dir), f"seed checkpoint of {run.id}")
    units, infos = _pretrain_units(params, group, world_dir, runs_dir)
    results = run_units(
        _pretrain_unit, units, params.study.workers, [u["steps"] for u in units], params.study
    )
    out = {}
    for info, metrics in zip(infos, results):
        metrics = {**metrics, "study": info}
        out[info["model_id"]] = metrics
        if metrics_dir:
            write_json(resolve(metrics_dir) / f"{info['model_id']}.json", metrics)
        if curves_dir:
            write_json(resolve(curves_dir) / f"{info['model_id']}.json", curve_records(metrics))
    return out


# -------------------------------------------------------------------------------------------- merging
def _grams(
    params: Params, run: plan.MSRun, jobs: list[MergeJob], ms_path: Path, args: dict
) -> dict[bool, Path]:
    """The Gram files the merges of ``run`` need, by ``exclude_padding`` (collected once each)."""
    grams: dict[bool, Path] = {}
    for job in jobs:
        nopad = job.option == plan.OPTION_GRAM_NOPAD
        if get_method(job.method).needs_grams and nopad not in grams:
            path = plan.gram_path(run.id, nopad, args["runs_dir"])
            source = gram_inputs(params, args["world_dir"])  # merge.gram_source
            write_grams(
                params,
                ms_ckpt=str(ms_path),
                world_dir=args["world_dir"],
                out=path,
                exclude_padding=nopad,
                **source,
            )
            grams[nopad] = resolve(path)
    return grams


def merge_ms_run(args: dict[str, Any]) -> dict:
    """Gram matrices, every merge (its checkpoints, one per task group) and the distances of one MS run
    (a unit of :func:`~vlmerge_core.study.stage.run_merge_grid_stage`, in a worker; ``args``: params,
    ms_id, runs_dir, world_dir). A merge's records carry its option and experiments; ``seconds`` is its
    mean time."""
    params, runs = args["params"], args["runs_dir"]
    run, cfg = plan.ms_runs(params)[args["ms_id"]], params.merge
    jobs = plan.study_merges(params, run.id)
    ms_path, central = resolve(run.ckpt(runs)), resolve(run.central_ckpt(runs))
    grams = _grams(params, run, jobs, ms_path, args)
    records = []
    for job in jobs:
        t0 = time.perf_counter()
        used = job.option == plan.OPTION_USED_EXPERTS or cfg.only_used_experts
        split = merge_jobs([(job.method, job.params)], tasks=job.tasks, only_used_experts=used,
                           unimodal_paths=cfg.unimodal_paths)  # fmt: skip
        common = {"central_path": central, "gram_path": grams.get(job.option == plan.OPTION_GRAM_NOPAD),
                  "only_used_experts": used, "unimodal_paths": cfg.unimodal_paths,
                  "drop_gramless": cfg.gram_source == "coco_retrieval"}  # fmt: skip
        check_inputs([one.method for one in split], central=True, grams=common["gram_path"] is not None)
        out_dir, recs = resolve(plan.merge_dir(run.id, runs)) / (job.option or "default"), []
        for one in split:  # one checkpoint per task group
            path, t1 = out_dir / f"{one.stem}.safetensors", time.perf_counter()
            merge_checkpoint(ms_path, path, one.method, **job_kwargs(one, **common))
            recs.append(job_record(one, path, time.perf_counter() - t1))
        seconds = (time.perf_counter() - t0) / max(len(recs), 1)
        extra = {"option": job.option, "experiments": list(job.experiments), "seconds": seconds}
        records += [{**rec, **extra} for rec in recs]
    info = {"model_id": run.model_id, **run.info()}
    dist = expert_distances(params, ms_ckpt=str(ms_path), central_ckpt=str(central))
    return {"merges": {"model": info, "records": records}, "distance": {**dist, "model": info}}


# ----------------------------------------------------------------------------------------- fine-tuning
def checkpoints_for(records: list[dict], run: str, option: str, tasks: tuple[str, ...]) -> dict[str, str]:
    """Task -> merged checkpoint (as recorded, from the repo root) of one merge and option."""
    mine = [r for r in records if r.get("option", "") == option]
    return {task: record_for_task(mine, run, task)["path"] for task in tasks}


def _finetune_unit(u: dict[str, Any]) -> dict:
    """One (model, fine-tuning seed, task) unit, cached by its inputs."""
    params = u["params"]

    def compute() -> dict:
        return finetune_models(
            params, checkpoint=u["checkpoint"], tasks=[u["task"]], ft_seeds=[u["ft_seed"]],
            world_dir=u["world_dir"], epochs=u["epochs"], model_info=u["info"],
        )  # fmt: skip

    spec = {k: u[k] for k in ("task", "ft_seed", "epochs", "info")}
    spec["params"] = {
        k: dataclasses.asdict(getattr(params, k)) for k in ("model", "finetune", "data", "report")
    }
    files = [u["checkpoint"], f"{params.data.root if not u['world_dir'] else u['world_dir']}/stats.json"]
    return cached("finetune", unit_key("finetune", spec, files), compute, u["use_cache"])


def _unit_cost(params: Params, task: str, epochs: int | None) -> float:
    """A unit's relative cost for scheduling (epochs x training-set cap); never changes a result."""
    cfg = task_config(params.finetune, task)
    n = cfg.train_subsample or 10**6
    return float((cfg.epochs if epochs is None else epochs) * n) + 1.0


def _job_checkpoints(job: plan.FinetuneJob, merge_dir: str, records: dict[str, list[dict]]) -> dict[str, str]:
    """Task -> checkpoint of a fine-tuning job (a merge: from its MS run's merge records, read once)."""
    if job.kind == "merged":
        ms_id = job.info["ms_id"]
        if ms_id not in records:
            records[ms_id] = read_json(need(f"{merge_dir}/{ms_id}.json", "merge records"))["records"]
        return checkpoints_for(records[ms_id], job.info["run"], job.info.get("option", ""), job.tasks)
    if not job.info["checkpoint"].startswith("random:"):
        need(job.info["checkpoint"], f"checkpoint of {job.model_id}")
    return dict.fromkeys(job.tasks, job.info["checkpoint"])


def _finetune_units(params: Params, jobs: list, merge_dir: str, world_dir: str, use_cache: bool) -> tuple:
    """One unit per (job, fine-tuning seed, task), and the index of the job that owns each."""
    records: dict[str, list[dict]] = {}
    units, owners = [], []
    for k, job in enumerate(jobs):
        ckpts = _job_checkpoints(job, merge_dir, records)
        hidden = ("checkpoint", "ms_id", "run")
        # the job's kind last: a merged job's info is its MS run's, whose own kind is "ms"
        info = {"model_id": job.model_id, **{a: b for a, b in job.info.items() if a not in hidden},
                "kind": job.kind, "experiments": list(job.experiments)}  # fmt: skip
        for seed in job.ft_seeds:
            for task in job.tasks:
                units.append({"params": params, "checkpoint": ckpts[task], "task": task, "ft_seed": seed,
                              "world_dir": world_dir, "info": info,
                              "epochs": 0 if job.kind == "untrained" else None, "use_cache": use_cache})  # fmt: skip
                owners.append(k)
    return units, owners


def evaluate(
    params: Params,
    which: str = "testbed",
    *,
    world_dir: str = "",
    runs_dir: str = plan.RUNS,
    merge_dir: str = "",
    metrics_out: str = "",
    use_cache: bool = True,
) -> list[dict]:
    """Fine-tune and evaluate ``which="testbed"`` (E0: untrained, random init, init, the recipe seed, the
    MA baseline and the compute-matched MA) or ``"evaluate"`` (every MS run and merge of the grid).

    Args:
        merge_dir: the merge stage's records (``<ms id>.json``: where the merged checkpoints are).
        use_cache: reuse units already computed for the same inputs (``runs/cache/finetune/``).

    Returns:
        One ``{"model": info, "records": [...]}`` document per job (also written to ``metrics_out``).
    """
    check_choice("which", which, EVALUATIONS)
    jobs = plan.testbed_jobs(params, runs_dir) if which == "testbed" else plan.evaluate_jobs(params, runs_dir)
    units, owners = _finetune_units(params, jobs, merge_dir, world_dir, use_cache)
    costs = [_unit_cost(params, u["task"], u["epochs"]) for u in units]
    done = run_units(_finetune_unit, units, params.study.workers, costs, params.study)
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


# ------------------------------------------------------------------------------------------ collection
def collect_study(params: Params, *, metrics_dir: str = "metrics", out_dir: str = "metrics/study") -> dict:
    """Collect every metrics file of the study into ``out_dir``'s CSV tables and ``design.json``;
    returns row counts."""
    frames = collect(resolve(metrics_dir), resolve(out_dir))
    write_json(resolve(out_dir) / "design.json", plan.design(params).as_dict())
    return {name: len(df) for name, df in frames.items()}
