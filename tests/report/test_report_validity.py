"""E0 validity: issue 11's four checks per task, each pass / fail / not run, computed from the rows; the
converged check covers the best pre-trained backbone and every claim row."""

from __future__ import annotations

import pytest
from conftest import DESIGN, frame, row, study_rows

from vlmerge_core.report.load import Study
from vlmerge_core.report.validity import e0_validity


def _replace(rows, model_prefix, task, value, metric=None):
    """Rows with every replicate / seed of ``model_prefix`` on ``task`` (and ``metric``) set to ``value``."""
    return [{**r, "value": value} if r["model_id"].startswith(model_prefix) and r["task"] == task
            and (metric is None and r["is_main"] or r["metric"] == metric) else r for r in rows]  # fmt: skip


def _validity(rows, chance, design=DESIGN):
    return e0_validity(Study(results=frame(rows), chance=chance, design=design))


def test_valid_task_shows_every_check(chance):
    v = _validity(study_rows(), chance)["vqa"]
    assert v.status == "valid" and set(v.checks.values()) == {"pass"}
    assert v.best_pretrained == "MA K=300" and v.best_pretrained_cell.n == 3  # units: replicates
    assert v.gap.mean == pytest.approx(63.8333 - 41.0, abs=1e-3)
    assert (
        "MA baseline (paper's) 0.20" in v.details["converged"]
        and "MS (unmerged, no seed) 0.30" in v.details["converged"]
    )


@pytest.mark.parametrize(
    "prefix, value, metric, check",
    [
        ("untrained", 40.0, None, "chance"),  # far above chance
        ("random", 63.0, None, "pretraining"),  # pre-training within noise of random init
        ("ma300", 96.0, None, "ceiling"),
        ("ma300", 4.0, "val_last_gain", "converged"),  # the best backbone still climbing
    ],
)
def test_each_check_can_fail(chance, prefix, value, metric, check):
    rows = _replace(study_rows(), prefix, "vqa", value, metric)
    if prefix == "random":  # keep a spread
        rows = [{**r, "value": r["value"] + r["ft_seed"]} if r["model_id"] == "random" and r["task"] == "vqa" else r
                for r in rows]  # fmt: skip
    val = _validity(rows, chance)
    assert val["vqa"].checks[check] == "fail" and val["vqa"].status == "invalid"
    assert val["nlvr2"].status == "valid"


def test_converged_covers_the_claim_rows(chance):
    """The best backbone converged, but the naive merge was still climbing: not converged, and said."""
    rows = study_rows()
    for r in range(3):
        kw = dict(k=0, variant="all", pt_seed=r, pt_steps=200, ms_seed=r, lr_mult=1.0, method="interpolation",
                  knob="ratio", kv=0.5, exps="E1;E4;E5", split="val", metric="val_last_gain")  # fmt: skip
        rows.append(row(f"merged_all_s0_r{r}_interpolation_ratio0.5", "merged", "vqa", 2.5, **kw))
    v = _validity(rows, chance)["vqa"]
    assert v.checks["converged"] == "fail" and v.not_converged == ["naive merge"]
    assert "above the bar: naive merge" in v.details["converged"]
    assert _validity(rows, chance, design=None)["vqa"].checks["converged"] == "pass"  # roles unknown


def test_single_seed_cannot_show_pretraining_matters(chance):
    rows = [
        r for r in study_rows() if not (r["model_id"] == "random" and r["ft_seed"] > 0 and r["task"] == "vqa")
    ]
    v = _validity(rows, chance)["vqa"]
    assert v.checks["pretraining"] == "not run" and v.status == "incomplete"


def test_missing_chance_and_e0(chance):
    v = e0_validity(Study(results=frame(study_rows()), design=DESIGN))["vqa"]
    assert v.checks["chance"] == "not run" and v.status == "incomplete"
    rows = [r for r in study_rows() if r["experiments"] != "E0" or r["task"] != "nlvr2"]
    rows = [
        r if r["task"] != "nlvr2" else {**r, "experiments": r["experiments"].replace("E0;", "")} for r in rows
    ]
    assert _validity(rows, chance)["nlvr2"].status == "not run"
    assert e0_validity(Study()) == {}


def test_chance_check_is_one_sided(chance):
    """Chance is the majority-class predictor: below it passes (a random head), above it fails."""
    below = _validity(_replace(study_rows(), "untrained", "vqa", 10.0), chance)["vqa"]
    assert below.checks["chance"] == "pass" and "-15.0" in below.details["chance"]
    above = _validity(_replace(study_rows(), "untrained", "vqa", 40.0), chance)["vqa"]
    assert above.checks["chance"] == "fail"


def test_a_saturated_task_does_not_discriminate(chance):
    """Every pre-trained model and claim row on one value: checks 1-4 can pass, check 5 fails."""
    rows = study_rows()
    pretrained = ("init", "ma", "merged", "ms")
    rows = [{**r, "value": 80.0} if r["task"] == "vqa" and r["is_main"] and r["kind"] in pretrained else r
            for r in rows]  # fmt: skip
    v = _validity(rows, chance)["vqa"]
    assert v.checks["discriminates"] == "fail" and v.status == "invalid"
    assert "claim rows span 80.0-80.0" in v.details["discriminates"]
    assert _validity(study_rows(), chance)["vqa"].checks["discriminates"] == "pass"
