"""Smoke inputs of the study stages: a later stage builds what it lacks, the merges included."""

from __future__ import annotations

import pytest

from vlmerge_core.io import read_json
from vlmerge_core.study import plan
from vlmerge_core.study.stage import demo_records_dir, prepare_demo, study_params


def test_evaluate_demo_builds_every_upstream_artefact(tmp_path):
    params = study_params("", "smoke")
    runs = str(tmp_path / "runs")
    prepare_demo(params, runs, upto="evaluate")
    assert (tmp_path / "runs" / "init").is_dir()
    for run in plan.ms_runs(params).values():
        records = read_json(f"{demo_records_dir(runs)}/{run.id}.json")
        assert records["records"] and all(r["path"] for r in records["records"])
        assert read_json(f"{runs}/records/distance/{run.id}.json")["model"]["model_id"] == run.model_id
    with pytest.raises(KeyError, match="unknown stage"):
        prepare_demo(params, runs, upto="paper")
