"""The study's DVC stages as one call each (what notebooks 05-08 run; ``dvc.yaml`` wires them).

- :func:`run_study_pretrain_stage`: every MA run (``group="ma"``: seeds, MA baseline, compute-matched
  MA) or every MS run (``group="ms"``) of the grid (:mod:`vlmerge_core.study.plan`);
- :func:`run_merge_grid_stage`: Gram matrices, every merge and the expert distances of every MS run;
- :func:`run_evaluate_stage`: fine-tune and evaluate ``"testbed"`` (E0) or ``"evaluate"`` (every MS run
  and merge);
- :func:`run_collect_stage`: the tidy CSV tables of ``metrics/study/`` and the study design.

Each entry point parses the params once (:func:`study_params`), builds the smoke inputs it lacks when
``demo_inputs`` is on (:mod:`vlmerge_core.study.demo`), and passes the parsed params to the function of
:mod:`vlmerge_core.study.execute` that does the work.
"""

from __future__ import annotations

from vlmerge_core.config import Params, stage_params
from vlmerge_core.study import demo, plan
from vlmerge_core.study.execute import (
    EVALUATIONS,
    GROUPS,
    check_choice,
    collect_study,
    evaluate,
    merge_grid,
    pretrain_group,
)

__all__ = [
    "run_collect_stage",
    "run_evaluate_stage",
    "run_merge_grid_stage",
    "run_study_pretrain_stage",
    "study_params",
]


def study_params(path: str = "", profile: str = "smoke") -> Params:
    """The study's parameters (:func:`~vlmerge_core.config.stage_params`), checked against the
    registry and the grid (:func:`vlmerge_core.study.plan.check`)."""
    params = stage_params(path, profile)
    plan.check(params)
    return params


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
        demo.prepare(params, runs_dir, upto=f"pretrain_{group}")
    return pretrain_group(params, group, runs_dir=runs_dir, **kwargs)


def run_merge_grid_stage(
    params_file: str = "",
    *,
    profile: str = "smoke",
    runs_dir: str = plan.RUNS,
    demo_inputs: bool = False,
    **kwargs,
) -> dict[str, dict]:
    """Gram matrices, every merge and the distances of every MS run: :func:`execute.merge_grid`
    (``kwargs``: ``world_dir``, ``merge_dir``, ``distance_dir``)."""
    params = study_params(params_file, profile)
    if demo_inputs:
        demo.prepare(params, runs_dir, upto="merge")
    return merge_grid(params, runs_dir=runs_dir, **kwargs)


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
        demo.prepare(params, runs_dir, upto=which)
        merge_dir = merge_dir or demo.records_dir(runs_dir)
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
