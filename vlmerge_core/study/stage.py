"""The study's DVC stages as one call each (what notebooks 05-08 run; ``dvc.yaml`` wires them).

- :func:`run_study_pretrain_stage`: every MA run (``group="ma"``: seeds, MA baseline, compute-matched
  MA) or every MS run (``group="ms"``) of the grid (:mod:`vlmerge_core.study.plan`);
- :func:`run_merge_grid_stage`: Gram matrices, every merge and the expert distances of every MS run;
- :func:`run_evaluate_stage`: fine-tune and evaluate ``"testbed"`` (E0) or ``"evaluate"`` (every MS run
  and merge);
- :func:`run_collect_stage`: the tidy CSV tables of ``metrics/study/`` and the study design.

Each entry point parses the params once (:func:`study_params`), builds the smoke inputs it lacks when
``demo_inputs`` is on (:func:`prepare_demo`), and passes the parsed params on to the functions of
:mod:`vlmerge_core.study.execute` that do the work. The merge stage fans its units out itself, so that
the path from notebook 06 to a merge method is five calls: this entry, ``execute.merge_ms_run`` (one
MS run, in a worker), ``merge.stream.merge_checkpoint``, ``merge.unify.iter_unified``, the method.

**Smoke inputs.** The study notebooks' parameters default to a smoke run in a scratch folder
(``pytest --nbmake``): with ``demo_inputs=True`` a stage first builds, under its ``runs_dir``, whatever
upstream artefact it needs and does not find (init, MA runs, MS runs, merge records), each by its own
stage function on the same parameters, so a notebook runs alone in seconds. DVC stages pass
``demo_inputs=False``: there a missing input is an error that names the file.
"""

from __future__ import annotations

import logging

from vlmerge_core.config import Params, stage_params
from vlmerge_core.io import write_json
from vlmerge_core.paths import resolve
from vlmerge_core.pretrain.stage import pretrain_run
from vlmerge_core.study import plan
from vlmerge_core.study.execute import (
    EVALUATIONS,
    GROUPS,
    check_choice,
    collect_study,
    evaluate,
    merge_ms_run,
    need,
    pretrain_group,
)
from vlmerge_core.study.workers import run_units

__all__ = [
    "prepare_demo",
    "run_collect_stage",
    "run_evaluate_stage",
    "run_merge_grid_stage",
    "run_study_pretrain_stage",
    "study_params",
]

log = logging.getLogger(__name__)

# the stages in pipeline order, and what each needs before it
ORDER = ("init", "pretrain_ma", "testbed", "pretrain_ms", "merge", "evaluate")
NEEDS = {
    "pretrain_ma": ("init",),
    "testbed": ("init", "pretrain_ma"),
    "pretrain_ms": ("init", "pretrain_ma"),
    "merge": ("init", "pretrain_ma", "pretrain_ms"),
    "evaluate": ("init", "pretrain_ma", "pretrain_ms", "merge"),
}


def study_params(path: str = "", profile: str = "smoke") -> Params:
    """The study's parameters (:func:`~vlmerge_core.config.stage_params`), checked against the
    registry and the grid (:func:`vlmerge_core.study.plan.check`)."""
    params = stage_params(path, profile)
    plan.check(params)
    return params


def demo_records_dir(runs_dir: str) -> str:
    """Where the smoke inputs keep the merge records (the pipeline uses ``metrics/merge/``)."""
    return f"{runs_dir}/records/merge"


def prepare_demo(params: Params, runs_dir: str, *, upto: str) -> None:
    """Build the missing upstream artefacts of stage ``upto`` (one of :data:`ORDER`) under ``runs_dir``."""
    if upto not in NEEDS:
        raise KeyError(f"demo: unknown stage {upto!r}; expected one of {list(NEEDS)}")
    needs = NEEDS[upto]
    if "init" in needs and not resolve(plan.init_ckpt(runs_dir)).exists():
        log.info("demo: init -> %s", plan.init_ckpt(runs_dir))
        pretrain_run(params, "init", out_dir=f"{runs_dir}/init", resume=False)
    for group in ("ma", "ms"):
        runs = plan.ma_runs(params) if group == "ma" else plan.ms_runs(params)
        if f"pretrain_{group}" in needs and any(
            not resolve(r.ckpt(runs_dir)).exists() for r in runs.values()
        ):
            pretrain_group(params, group, runs_dir=runs_dir)
    out = demo_records_dir(runs_dir)
    if "merge" in needs and any(not resolve(f"{out}/{i}.json").exists() for i in plan.ms_runs(params)):
        distances = f"{runs_dir}/records/distance"
        run_merge_grid_stage(params=params, runs_dir=runs_dir, merge_dir=out, distance_dir=distances)


def run_study_pretrain_stage(
    params_file: str = "",
    *,
    profile: str = "smoke",
    group: str = "ma",
    runs_dir: str = plan.RUNS,
    demo_inputs: bool = False,
    **kwargs,
) -> dict[str, dict]:
    """Every MA run (``group="ma"``) or every MS run (``"ms"``) of the grid: :func:`execute.pretrain_group`
    (``kwargs``: ``world_dir``, ``metrics_dir``, ``curves_dir``)."""
    check_choice("group", group, GROUPS)
    params = study_params(params_file, profile)
    if demo_inputs:
        prepare_demo(params, runs_dir, upto=f"pretrain_{group}")
    return pretrain_group(params, group, runs_dir=runs_dir, **kwargs)


def run_merge_grid_stage(
    params_file: str = "",
    *,
    profile: str = "smoke",
    params: Params | None = None,
    runs_dir: str = plan.RUNS,
    world_dir: str = "",
    merge_dir: str = "",
    distance_dir: str = "",
    demo_inputs: bool = False,
) -> dict[str, dict]:
    """Gram matrices (where a merge needs them), every merge and the expert distances around the seed
    of every MS run, one :func:`execute.merge_ms_run` unit per MS run on ``study.workers`` processes.

    Writes ``<merge_dir>/<ms id>.json`` (the merge records: method, knob, option, task group, tasks,
    path, seconds) and ``<distance_dir>/<ms id>.json`` (total, per block, per parameter). ``params``:
    already parsed parameters (the smoke inputs of the evaluate stage), else ``params_file`` is parsed.
    """
    params = params if params is not None else study_params(params_file, profile)
    if demo_inputs:
        prepare_demo(params, runs_dir, upto="merge")
    runs = plan.ms_runs(params)
    for ms_id, run in runs.items():
        need(run.ckpt(runs_dir), f"MS checkpoint of {ms_id}")
        need(run.central_ckpt(runs_dir), f"central (seed) checkpoint of {ms_id}")
    units = [{"params": params, "ms_id": i, "runs_dir": runs_dir, "world_dir": world_dir} for i in runs]
    costs = [len(plan.study_merges(params, i)) for i in runs]
    done = dict(zip(runs, run_units(merge_ms_run, units, params.study.workers, costs)))
    for ms_id, res in done.items():
        if merge_dir:
            write_json(resolve(merge_dir) / f"{ms_id}.json", res["merges"])
        if distance_dir:
            write_json(resolve(distance_dir) / f"{ms_id}.json", res["distance"])
    return done


def run_evaluate_stage(
    params_file: str = "",
    *,
    profile: str = "smoke",
    which: str = "testbed",
    runs_dir: str = plan.RUNS,
    merge_dir: str = "",
    demo_inputs: bool = False,
    **kwargs,
) -> list[dict]:
    """Fine-tune and evaluate ``which="testbed"`` (E0) or ``"evaluate"`` (every MS run and merge):
    :func:`execute.evaluate` (``kwargs``: ``world_dir``, ``metrics_out``, ``use_cache``)."""
    check_choice("which", which, EVALUATIONS)
    params = study_params(params_file, profile)
    if demo_inputs:
        prepare_demo(params, runs_dir, upto=which)
        merge_dir = merge_dir or demo_records_dir(runs_dir)
    return evaluate(params, which, runs_dir=runs_dir, merge_dir=merge_dir, **kwargs)


def run_collect_stage(
    params_file: str = "",
    *,
    profile: str = "smoke",
    metrics_dir: str = "metrics",
    out_dir: str = "metrics/study",
) -> dict:
    """Collect every metrics file of the study into ``out_dir``'s CSV tables and ``design.json``
    (:func:`execute.collect_study`); returns row counts."""
    return collect_study(study_params(params_file, profile), metrics_dir=metrics_dir, out_dir=out_dir)
