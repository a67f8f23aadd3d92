"""Smoke inputs for the study notebooks: the upstream artefacts a stage needs, built at smoke scale.

The study notebooks' parameters default to a smoke run in a scratch folder (``pytest --nbmake``):
with ``demo=True`` a stage first builds, under its ``runs_dir``, whatever upstream checkpoint or record
it needs and does not find (world, init, seed, MA baseline, MS models, merges), each by its own stage
function on the smoke profile, so a notebook runs alone in seconds. DVC stages pass ``demo=False``:
there a missing input is an error that names the file.
"""

from __future__ import annotations

import logging

from vlmerge_core.paths import resolve
from vlmerge_core.study import plan

log = logging.getLogger(__name__)


def merge_records_path(model_id: str, runs_dir: str) -> str:
    """Where a demo keeps the merge records of an MS model (the pipeline uses ``metrics/merge/``)."""
    return f"{runs_dir}/records/merge_{model_id}.json"


def prepare(
    params_file: str,
    profile: str,
    runs_dir: str,
    *,
    seeds: bool = True,
    ma: bool = False,
    ms: tuple[str, ...] = (),
    merges: tuple[str, ...] = (),
) -> None:
    """Build the missing upstream artefacts under ``runs_dir``: init and seed checkpoints (``seeds``),
    the MA baseline (``ma``), the MS models ``ms`` and the merges of the MS models ``merges``."""
    from vlmerge_core.pretrain.stage import run_pretrain_stage
    from vlmerge_core.study.stage import run_merge_grid_stage, run_study_pretrain_stage

    common = {"params_file": params_file, "profile": profile}
    if seeds or ma or ms or merges:
        if not resolve(plan.init_ckpt(runs_dir)).exists():
            log.info("demo: init -> %s", plan.init_ckpt(runs_dir))
            run_pretrain_stage("init", out_dir=f"{runs_dir}/init", resume=False, **common)
        if not resolve(f"{runs_dir}/seed/last.safetensors").exists():
            log.info("demo: seed -> %s/seed", runs_dir)
            run_pretrain_stage(
                "seed", init=plan.init_ckpt(runs_dir), out_dir=f"{runs_dir}/seed", resume=False, **common
            )
    if ma and not resolve(plan.ma_ckpt(runs_dir)).exists():
        run_study_pretrain_stage(run="ma_baseline", runs_dir=runs_dir, **common)
    for model_id in dict.fromkeys(ms + merges):
        if not resolve(plan.ms_ckpt(model_id, runs_dir)).exists():
            run_study_pretrain_stage(run=model_id, runs_dir=runs_dir, **common)
    for model_id in merges:
        out = merge_records_path(model_id, runs_dir)
        if not resolve(out).exists():
            run_merge_grid_stage(model_id=model_id, runs_dir=runs_dir, metrics_out=out, **common)
