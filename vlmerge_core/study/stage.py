"""The study's DVC stages as one call each (what notebooks 05-07 run; ``dvc.yaml`` wires them).

- :func:`run_study_pretrain_stage`: every MA run (``group="ma"``: seeds, MA baseline, compute-matched
  MA) or every MS run (``group="ms"``) of the grid (:mod:`vlmerge_core.study.plan`);
- :func:`run_merge_grid_stage`: Gram matrices, every merge and the expert distances of every MS run;
- :func:`run_evaluate_stage`: fine-tune and evaluate ``"testbed"`` (E0) or ``"evaluate"`` (every MS run
  and merge);
- :func:`run_collect_stage`: the tidy CSV tables of ``metrics/study/`` and the study design.

Runs of a stage are independent units on ``study.workers`` processes (:mod:`vlmerge_core.study.workers`).
Each stage writes its metrics atomically; re-running it gives the same metrics for the same inputs
(but for wall times).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from vlmerge_core.config import Params, ParamsError, load_params
from vlmerge_core.io import read_json, write_json
from vlmerge_core.paths import resolve
from vlmerge_core.study import demo, plan
from vlmerge_core.study.workers import cached, run_units, unit_key

log = logging.getLogger(__name__)

GROUPS = ("ma", "ms")
EVALUATIONS = ("testbed", "evaluate")


def _params(params_file: str, profile: str) -> Params:
    params = load_params(params_file) if params_file else load_params(profile=profile)
    plan.check(params)
    return params


def _need(path: str, what: str) -> Path:
    p = resolve(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: {what} not found (run its DVC stage first)")
    return p


# ---------------------------------------------------------------------------------------- pretraining
def _pretrain_unit(args: dict[str, Any]) -> dict:
    """One pre-training run (in a worker); resumes a finished or interrupted run of the same config."""
    from vlmerge_core.pretrain.stage import run_pretrain_stage

    try:
        return run_pretrain_stage(**args)
    except ValueError as exc:  # a run folder of another config: start it over
        if "cannot resume" not in str(exc):
            raise
        log.warning("%s; starting %s over", exc, args["out_dir"])
        return run_pretrain_stage(**{**args, "resume": False})


def _pretrain_units(params: Params, group: str, params_file: str, profile: str, world_dir: str, runs: str):
    common = {"params_file": params_file, "profile": profile, "world_dir": world_dir, "resume": True}
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


def run_study_pretrain_stage(
    params_file: str = "",
    *,
    profile: str = "smoke",
    group: str = "ma",
    world_dir: str = "",
    runs_dir: str = plan.RUNS,
    metrics_dir: str = "",
    curves_dir: str = "",
    demo_inputs: bool = False,
) -> dict[str, dict]:
    """Every MA run (``group="ma"``) or every MS run (``"ms"``) of the grid, side by side on workers.

    Writes ``<runs_dir>/{ma,ms}/<id>/``; with ``metrics_dir``, ``<metrics_dir>/<id>.json`` (the run's
    metrics with a ``study`` block: model id, kind, RNG seed, steps, variant); with ``curves_dir``,
    ``<curves_dir>/<id>.json`` (the loss curve as DVC plot records).
    """
    from vlmerge_core.pretrain.stage import curve_records

    if group not in GROUPS:
        raise ParamsError(f"group: {group!r} is not one of {list(GROUPS)}")
    params = _params(params_file, profile)
    if demo_inputs:
        demo.prepare(params_file, profile, runs_dir, upto=f"pretrain_{group}")
    _need(plan.init_ckpt(runs_dir), "init checkpoint")
    if group == "ms":
        for run in plan.ms_runs(params).values():
            _need(run.init_ckpt(runs_dir), f"seed checkpoint of {run.id}")
    units, infos = _pretrain_units(params, group, params_file, profile, world_dir, runs_dir)
    results = run_units(_pretrain_unit, units, params.study.workers, [u["steps"] for u in units])
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
def _merge_unit(args: dict[str, Any]) -> dict:
    """Gram matrices, every merge and the distances of one MS run (in a worker)."""
    from vlmerge_core.analysis.stage import run_distance_stage
    from vlmerge_core.merge.methods import get_method
    from vlmerge_core.merge.stage import merge_all, run_gram_stage

    params = load_params(args["params_file"]) if args["params_file"] else load_params(profile=args["profile"])
    run, runs = plan.ms_runs(params)[args["ms_id"]], args["runs_dir"]
    common = {"params_file": args["params_file"], "profile": args["profile"]}
    ms_path, central = resolve(run.ckpt(runs)), resolve(run.central_ckpt(runs))
    jobs = plan.merge_jobs(params, run.id)
    grams: dict[bool, Path] = {}
    for job in jobs:
        nopad = job.option == plan.OPTION_GRAM_NOPAD
        if get_method(job.method).needs_grams and nopad not in grams:
            path = plan.gram_path(run.id, nopad, runs)
            run_gram_stage(
                **common, ms_ckpt=str(ms_path), world_dir=args["world_dir"], out=path, exclude_padding=nopad
            )
            grams[nopad] = resolve(path)
    root, records = resolve("."), []
    for job in jobs:
        t0 = time.perf_counter()
        needs_grams = get_method(job.method).needs_grams
        recs = merge_all(
            ms_path,
            resolve(plan.merge_dir(run.id, runs)) / (job.option or "default"),
            [(job.method, job.params)],
            central_path=central,
            gram_path=grams.get(job.option == plan.OPTION_GRAM_NOPAD) if needs_grams else None,
            only_used_experts=job.option == plan.OPTION_USED_EXPERTS or params.merge.only_used_experts,
            unimodal_paths=params.merge.unimodal_paths,
            tasks=job.tasks,
        )
        seconds = (time.perf_counter() - t0) / max(len(recs), 1)
        for rec in recs:
            path = Path(rec["path"])
            rel = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
            rec.update(
                {"option": job.option, "experiments": list(job.experiments), "seconds": seconds, "path": rel}
            )
        records += recs
    info = {"model_id": run.model_id, **run.info()}
    dist = run_distance_stage(**common, ms_ckpt=str(ms_path), central_ckpt=str(central))
    return {"merges": {"model": info, "records": records}, "distance": {**dist, "model": info}}


def run_merge_grid_stage(
    params_file: str = "",
    *,
    profile: str = "smoke",
    world_dir: str = "",
    runs_dir: str = plan.RUNS,
    merge_dir: str = "",
    distance_dir: str = "",
    demo_inputs: bool = False,
) -> dict[str, dict]:
    """Gram matrices (where a merge needs them), every merge and the expert distances around the seed
    of every MS run. Writes ``<merge_dir>/<ms id>.json`` (the merge records: method, knob, option, task
    group, tasks, path, seconds) and ``<distance_dir>/<ms id>.json`` (total, per block, per parameter)."""
    params = _params(params_file, profile)
    if demo_inputs:
        demo.prepare(params_file, profile, runs_dir, upto="merge")
    runs = plan.ms_runs(params)
    ids = list(runs)
    for ms_id, run in runs.items():
        _need(run.ckpt(runs_dir), f"MS checkpoint of {ms_id}")
        _need(run.central_ckpt(runs_dir), f"central (seed) checkpoint of {ms_id}")
    units = [{"params_file": params_file, "profile": profile, "ms_id": i, "runs_dir": runs_dir,
              "world_dir": world_dir} for i in ids]  # fmt: skip
    costs = [len(plan.merge_jobs(params, i)) for i in ids]
    done = run_units(_merge_unit, units, params.study.workers, costs)
    for ms_id, res in zip(ids, done):
        if merge_dir:
            write_json(resolve(merge_dir) / f"{ms_id}.json", res["merges"])
        if distance_dir:
            write_json(resolve(distance_dir) / f"{ms_id}.json", res["distance"])
    return dict(zip(ids, done))


# ----------------------------------------------------------------------------------------- fine-tuning
def checkpoints_for(records: list[dict], run: str, option: str, tasks: tuple[str, ...]) -> dict[str, str]:
    """Task -> merged checkpoint (as recorded, from the repo root) of one merge and option."""
    from vlmerge_core.merge.stage import record_for_task

    mine = [r for r in records if r.get("option", "") == option]
    return {task: record_for_task(mine, run, task)["path"] for task in tasks}


def _finetune_unit(u: dict[str, Any]) -> dict:
    """One (model, fine-tuning seed, task) unit, cached by its inputs."""
    from vlmerge_core.tasks.stage import run_finetune_stage

    def compute() -> dict:
        return run_finetune_stage(
            u["params_file"], profile=u["profile"], checkpoint=u["checkpoint"], tasks=[u["task"]],
            ft_seeds=[u["ft_seed"]], world_dir=u["world_dir"], epochs=u["epochs"], model_info=u["info"],
        )  # fmt: skip

    params = load_params(u["params_file"]) if u["params_file"] else load_params(profile=u["profile"])
    spec = {k: u[k] for k in ("task", "ft_seed", "epochs", "info")}
    spec["params"] = {
        k: dataclasses.asdict(getattr(params, k)) for k in ("model", "finetune", "data", "report")
    }
    files = [u["checkpoint"], f"{params.data.root if not u['world_dir'] else u['world_dir']}/meta.json"]
    return cached("finetune", unit_key("finetune", spec, files), compute, u["use_cache"])


def _unit_cost(params: Params, task: str, epochs: int | None) -> float:
    """A unit's relative cost for scheduling (epochs x training-set cap); never changes a result."""
    from vlmerge_core.tasks.engine import task_config

    cfg = task_config(params.finetune, task)
    n = cfg.train_subsample or 10**6
    return float((cfg.epochs if epochs is None else epochs) * n) + 1.0


def run_evaluate_stage(
    params_file: str = "",
    *,
    profile: str = "smoke",
    which: str = "testbed",
    world_dir: str = "",
    runs_dir: str = plan.RUNS,
    merge_dir: str = "",
    metrics_out: str = "",
    demo_inputs: bool = False,
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
    if which not in EVALUATIONS:
        raise ParamsError(f"which: {which!r} is not one of {list(EVALUATIONS)}")
    params = _params(params_file, profile)
    if demo_inputs:
        demo.prepare(params_file, profile, runs_dir, upto=which)
        merge_dir = merge_dir or demo.records_dir(runs_dir)
    jobs = plan.testbed_jobs(params, runs_dir) if which == "testbed" else plan.evaluate_jobs(params, runs_dir)
    records: dict[str, list[dict]] = {}
    units, owners = [], []
    for k, job in enumerate(jobs):
        if job.kind == "merged":
            ms_id = job.info["ms_id"]
            if ms_id not in records:
                records[ms_id] = read_json(_need(f"{merge_dir}/{ms_id}.json", "merge records"))["records"]
            ckpts = checkpoints_for(records[ms_id], job.info["run"], job.info.get("option", ""), job.tasks)
        else:
            if not job.info["checkpoint"].startswith("random:"):
                _need(job.info["checkpoint"], f"checkpoint of {job.model_id}")
            ckpts = dict.fromkeys(job.tasks, job.info["checkpoint"])
        hidden = ("checkpoint", "ms_id", "run")
        # the job's kind last: a merged job's info is its MS run's, whose own kind is "ms"
        info = {"model_id": job.model_id, **{a: b for a, b in job.info.items() if a not in hidden},
                "kind": job.kind, "experiments": list(job.experiments)}  # fmt: skip
        for seed in job.ft_seeds:
            for task in job.tasks:
                units.append({"params_file": params_file, "profile": profile, "checkpoint": ckpts[task],
                              "task": task, "ft_seed": seed, "world_dir": world_dir, "info": info,
                              "epochs": 0 if job.kind == "untrained" else None, "use_cache": use_cache})  # fmt: skip
                owners.append(k)
    costs = [_unit_cost(params, u["task"], u["epochs"]) for u in units]
    done = run_units(_finetune_unit, units, params.study.workers, costs)
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
def run_collect_stage(
    params_file: str = "",
    *,
    profile: str = "smoke",
    metrics_dir: str = "metrics",
    out_dir: str = "metrics/study",
) -> dict:
    """Collect every metrics file of the study into ``out_dir``'s CSV tables and ``design.json``;
    returns row counts."""
    from vlmerge_core.study.collect import collect

    params = _params(params_file, profile)
    frames = collect(resolve(metrics_dir), resolve(out_dir))
    write_json(resolve(out_dir) / "design.json", plan.design(params).as_dict())
    return {name: len(df) for name, df in frames.items()}
