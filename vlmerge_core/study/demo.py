"""Smoke inputs for the study notebooks: the upstream artefacts a stage needs, built at smoke scale.

The study notebooks' parameters default to a smoke run in a scratch folder (``pytest --nbmake``):
with ``demo_inputs=True`` a stage first builds, under its ``runs_dir``, whatever upstream artefact it
needs and does not find (init, MA runs, MS runs, merge records), each by its own stage function on the
same parameters, so a notebook runs alone in seconds. DVC stages pass ``demo_inputs=False``: there a
missing input is an error that names the file.
"""

from __future__ import annotations

import logging

from vlmerge_core.config import Params
from vlmerge_core.paths import resolve
from vlmerge_core.pretrain.stage import pretrain_run
from vlmerge_core.study import plan
from vlmerge_core.study.execute import merge_grid, pretrain_group

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


def records_dir(runs_dir: str) -> str:
    """Where a demo keeps the merge records (the pipeline uses ``metrics/merge/``)."""
    return f"{runs_dir}/records/merge"


def prepare(params: Params, runs_dir: str, *, upto: str) -> None:
    """Build the missing upstream artefacts of stage ``upto`` (one of :data:`ORDER`) under ``runs_dir``."""
    if upto not in NEEDS:
        raise KeyError(f"demo: unknown stage {upto!r}; expected one of {list(NEEDS)}")
    needs = NEEDS[upto]
    if "init" in needs and not resolve(plan.init_ckpt(runs_dir)).exists():
        log.info("demo: init -> %s", plan.init_ckpt(runs_dir))
        pretrain_run(params, "init", out_dir=f"{runs_dir}/init", resume=False)
    if "pretrain_ma" in needs and any(
        not resolve(r.ckpt(runs_dir)).exists() for r in plan.ma_runs(params).values()
    ):
        pretrain_group(params, "ma", runs_dir=runs_dir)
    if "pretrain_ms" in needs and any(
        not resolve(r.ckpt(runs_dir)).exists() for r in plan.ms_runs(params).values()
    ):
        pretrain_group(params, "ms", runs_dir=runs_dir)
    out = records_dir(runs_dir)
    if "merge" in needs and any(not resolve(f"{out}/{i}.json").exists() for i in plan.ms_runs(params)):
        merge_grid(params, runs_dir=runs_dir, merge_dir=out, distance_dir=f"{runs_dir}/records/distance")
