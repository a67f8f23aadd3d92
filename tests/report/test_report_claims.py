"""Claim verdicts on constructed cases: holds, fails, within noise, mixed, missing metrics."""

from __future__ import annotations

import pytest
from conftest import distance_rows, frame, study_rows

from vlmerge_core.report.claims import combine, combine_parts, judge_claims
from vlmerge_core.report.load import Study
from vlmerge_core.report.validity import e0_validity


def _judge(rows, chance=None, distances=None, **kw):
    study = Study(results=frame(rows) if rows else None, chance=chance, distances=distances)
    return judge_claims(study, e0_validity(study), {"vqa": 3.0}, n_bootstrap=200, **kw)


def test_combine_rules():
    assert combine(["holds", "holds"]) == "reproduced"
    assert combine(["holds", "within noise"]) == "mixed"
    assert combine(["within noise", "fails"]) == "not reproduced"
    assert combine(["not run", "holds"]) == "reproduced"
    assert combine([]) == combine(["not run"]) == "not run"
    assert combine_parts({"a": "reproduced", "b": "not run"}) == "mixed"
    assert combine_parts({"a": "not reproduced", "b": "not run"}) == "not reproduced"
    assert combine_parts({"a": "not run", "b": "not run"}) == "not run"


def test_c1_holds(chance):
    v = _judge(study_rows(), chance)["C1"]
    assert v.verdict == "reproduced" and v.verdict_valid == "reproduced"
    row = v.rows[0]
    assert row["gain (ours)"] == "+10.0 ± 1.4" and row["gain (paper)"] == "+3 (points or %)"
    assert v.rows[1]["gain (paper)"] == "not found" and v.numbers["vqa.gain"] == "+10.0 ± 1.4"


def test_c1_fails(chance):
    v = _judge(study_rows(recipe=(50, 51, 52), naive=(60, 61, 62)), chance)["C1"]
    assert v.verdict == "not reproduced" and {r["outcome"] for r in v.rows} == {"fails"}


def test_c1_within_noise_is_not_reproduced(chance):
    v = _judge(study_rows(recipe=(50, 53, 56), naive=(51, 52, 53)), chance)["C1"]
    assert {r["outcome"] for r in v.rows} == {"within noise"} and v.verdict == "not reproduced"


def test_c1_mixed(chance):
    rows = study_rows(tasks=("vqa",)) + study_rows(recipe=(50, 51, 52), naive=(60, 61, 62), tasks=("nlvr2",))
    assert _judge(rows, chance)["C1"].verdict == "mixed"


def test_missing_metrics_are_never_reproduced(chance):
    for v in _judge([]).values():
        assert v.verdict == v.verdict_valid == "not run"
    no_merges = [r for r in study_rows() if r["kind"] != "merged"]
    verdicts = _judge(no_merges, chance)
    for cid in ("C1", "C2", "C3", "C4"):
        assert verdicts[cid].verdict == "not run", cid
    assert verdicts["C5"].verdict == "not run"


def test_invalid_task_is_said(chance):
    rows = [r if not (r["model_id"] == "untrained" and r["task"] == "vqa") else {**r, "value": 40.0}
            for r in study_rows()]  # fmt: skip
    v = _judge(rows, chance)["C1"]
    assert v.invalid_tasks == ["vqa"] and any("VQA (invalid)" in n for n in v.notes)
    assert v.verdict == "reproduced" and v.verdict_valid == "reproduced"  # judged on NLVR2 alone
    assert any("VQA (incomplete)" in n for n in _judge(study_rows())["C1"].notes)  # no chance file
    no_e0 = [
        {**r, "experiments": r["experiments"].replace("E0;", "")}
        for r in study_rows()
        if r["experiments"] != "E0"
    ]
    v = _judge(no_e0, chance)["C1"]
    assert any("E0 was not run" in n for n in v.notes) and v.verdict_valid == "not run"


@pytest.mark.parametrize("margin, verdict", [(1.0, "not reproduced"), (3.0, "reproduced")])
def test_c2_margin(chance, margin, verdict):
    v = _judge(study_rows(), chance, c2_margin=margin)["C2"]  # recipe - MA = -1.0 ± 1.4
    assert v.verdict == verdict and f"at most {margin:g} points" in v.criterion


def test_c3_distances(chance, distances):
    assert _judge(study_rows(), chance, distances)["C3"].verdict == "reproduced"
    flipped = distance_rows({(0, "all"): 1.0, (100, "all"): 3.0, (300, "all"): 6.0, (300, "ln"): 9.0})
    assert _judge(study_rows(), chance, flipped)["C3"].verdict == "not reproduced"
    assert _judge(study_rows(), chance, None)["C3"].verdict == "not run"


def test_c4_seed_length(chance):
    assert _judge(study_rows(), chance)["C4"].verdict == "reproduced"
    flat = study_rows(recipe=(50, 51, 52), naive=(50, 51, 52))
    assert _judge(flat, chance)["C4"].verdict == "not reproduced"
    two_lengths = [r for r in study_rows() if r["model_id"] != "m_s100"]
    assert _judge(two_lengths, chance)["C4"].verdict == "not run"


def test_c5_parts(chance):
    v = _judge(study_rows(), chance)["C5"]
    assert v.verdict == "reproduced" and v.rows[0]["methods, paper"] == "not found"
    assert v.rows[0]["methods, measured"].startswith("interpolation > arithmetic")
    no_e3 = [r for r in study_rows() if r["experiments"] != "E3;E4" and r["model_id"] != "ms_ln_s300"]
    v = _judge(no_e3, chance)["C5"]
    assert v.numbers["architecture.verdict"] == "not run" and v.verdict == "mixed"
