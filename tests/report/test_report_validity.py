"""E0 validity: issue 11's four checks per task, each pass / fail / not run, computed from the rows."""

from __future__ import annotations

import pytest
from conftest import frame, runs, study_rows

from vlmerge_core.report.load import Study
from vlmerge_core.report.validity import e0_validity


def _replace(rows, model_id, task, values, metric=None):
    out = [
        r
        for r in rows
        if not (r["model_id"] == model_id and r["task"] == task and (metric is None or r["metric"] == metric))
    ]
    kind = next(r for r in rows if r["model_id"] == model_id)["kind"]
    return out + runs(model_id, kind, task, values, exps="E0;E1;E2;E3;E5" if kind == "ma_baseline" else "E0",
                      metric=metric, ci=(values[0] - 2, values[0] + 2) if kind == "untrained" else (float("nan"),) * 2)  # fmt: skip


def _validity(rows, chance):
    return e0_validity(Study(results=frame(rows), chance=chance))


def test_valid_task_shows_every_check(chance):
    v = _validity(study_rows(), chance)["vqa"]
    assert v.status == "valid" and set(v.checks.values()) == {"pass"}
    assert v.best_pretrained == "MA baseline" and v.gap.mean == pytest.approx(21.0)
    assert v.pooled_sd == pytest.approx(1.0) and "3 sd = 3.0" in v.details["pretraining"]


@pytest.mark.parametrize(
    "model_id, values, metric, check",
    [
        ("untrained", [40.0], None, "chance"),  # far above chance
        ("random", [60.0, 62.0, 64.0], None, "pretraining"),  # pre-training within noise of random init
        ("ma_baseline", [96.0, 97.0, 98.0], None, "ceiling"),
        ("ma_baseline", [4.0, 5.0, 6.0], "val_last_gain", "converged"),  # still climbing
    ],
)
def test_each_check_can_fail(chance, model_id, values, metric, check):
    val = _validity(_replace(study_rows(), model_id, "vqa", values, metric), chance)
    assert val["vqa"].checks[check] == "fail" and val["vqa"].status == "invalid"
    assert val["nlvr2"].status == "valid"


def test_single_seed_cannot_show_pretraining_matters(chance):
    v = _validity(_replace(study_rows(), "random", "vqa", [41.0]), chance)["vqa"]
    assert v.checks["pretraining"] == "not run" and v.status == "incomplete"


def test_missing_chance_and_e0(chance):
    v = e0_validity(Study(results=frame(study_rows())))["vqa"]
    assert v.checks["chance"] == "not run" and v.status == "incomplete"
    rows = [r for r in study_rows() if r["experiments"] != "E0" or r["task"] != "nlvr2"]
    rows = [
        r if r["task"] != "nlvr2" else {**r, "experiments": r["experiments"].replace("E0;", "")} for r in rows
    ]
    assert _validity(rows, chance)["nlvr2"].status == "not run"
    assert e0_validity(Study()) == {}


def test_chance_check_is_one_sided(chance):
    """Chance is the majority-class predictor: below it passes (a random head), above it fails."""
    below = _validity(_replace(study_rows(), "untrained", "vqa", [10.0]), chance)["vqa"]
    assert below.checks["chance"] == "pass" and "-15.0" in below.details["chance"]
    above = _validity(_replace(study_rows(), "untrained", "vqa", [40.0]), chance)["vqa"]
    assert above.checks["chance"] == "fail"
