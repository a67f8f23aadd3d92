"""Claim verdicts on hand-made frames: the paired differences of C1 and C2 (both MA controls), the rank
correlations of C3 and C4 (permutation p-values, n >= 10 for C3), C5's parts, and the E0-valid verdict."""

from __future__ import annotations

import pytest
from conftest import DESIGN, distance_rows, frame, merged, ms, study_rows

from vlmerge_core.report.claims import judge_claims
from vlmerge_core.report.load import Study
from vlmerge_core.report.validity import e0_validity


def _judge(rows, chance=None, distances=None, design=DESIGN, **kw):
    study = Study(results=frame(rows) if rows else None, chance=chance, distances=distances, design=design)
    return judge_claims(study, e0_validity(study), {"vqa": 3.0}, n_bootstrap=0, **kw)


def test_c1_gain_beside_the_drop_from_merging(chance):
    v = _judge(study_rows(), chance)["C1"]
    assert v.verdict == v.verdict_valid == "reproduced"
    row = v.rows[0]
    assert row["gain (recipe - naive) [95 % t]"] == "+10.2 [+8.3, +12.1]" and row["replicates"] == "3"
    assert row["gain (paper)"] == "+3 (points or %)" and v.rows[1]["gain (paper)"] == "not found"
    # MS - merged per replicate: recipe (66, 66.5, 67) - (60, 61.5, 62); naive (64, 65, 66) - (50, 52, 51)
    assert row["drop from merging, recipe"].startswith("+5.3 [") and row[
        "drop from merging, naive"
    ].startswith("+14.0")
    assert v.numbers["vqa.gain"] == "+10.2 [+8.3, +12.1]" and "K_seed = 100" in v.criterion


def test_c1_pairs_by_replicate():
    """A replicate missing on one side drops out of the pairs; the order of rows does not matter."""
    rows = [r for r in study_rows() if not (r["model_id"] == "merged_all_s0_r2_interpolation_ratio0.5")]
    v = _judge(rows[::-1])["C1"]
    assert v.rows[0]["replicates"] == "2" and v.verdict == "inconclusive"


@pytest.mark.parametrize("margin, base, matched", [(1.0, "inconclusive", "inconclusive"), (3.0, "holds", "inconclusive"),
                                                   (6.0, "holds", "holds")])  # fmt: skip
def test_c2_is_judged_against_both_ma_controls(chance, margin, base, matched):
    # recipe - MA baseline = -0.7 [-1.4, +0.1]; recipe - compute-matched MA = -2.7 [-4.1, -1.2]
    v = _judge(study_rows(), chance, c2_margin=margin)["C2"]
    row = v.rows[0]
    assert row["outcome, MA baseline"] == base and row["outcome, matched MA"] == matched
    assert set(v.parts) == {"vs MA baseline (paper's)", "vs compute-matched MA"}
    assert f"at most {margin:g} points" in v.criterion and "ma_200k_vlpt" in v.criterion
    assert "The paper compared with the MA baseline (200 steps" in v.notes[0]
    assert (
        row["MA baseline (200 steps)"] == "61.8 ± 0.8 (3)"
        and row["matched MA (300 steps)"] == "63.8 ± 0.8 (3)"
    )


def test_c2_fails_when_far_below(chance):
    v = _judge(study_rows(baseline=(70.0, 71.5, 71.0), matched=(70.0, 71.5, 71.0)), chance)["C2"]
    assert v.verdict == "not reproduced" and {r["outcome, MA baseline"] for r in v.rows} == {"fails"}


def test_c3_on_the_e4_grid(chance):
    v = _judge(study_rows(), chance, distance_rows())["C3"]
    assert v.verdict == "reproduced"
    rows = [r for r in v.rows if r["distance"].startswith("l2_rms")]
    assert {r["n"] for r in rows} == {"10"}  # 3 recipe replicates + 7 grid runs
    assert all("exact (all 3628800 permutations)" in r["p"] for r in rows)  # n = 10: every pairing
    assert all(r["outcome"] == "shown only" for r in v.rows if r["distance"] in ("l2", "cosine"))
    assert "within strata" in rows[0]["p (partial)"]


def test_c3_small_grid_is_exact_and_inconclusive(chance):
    """Without the grid, the E4 set holds the three recipe replicates: exact p = 1/3 at best, inconclusive."""
    v = _judge(study_rows(grid=False), chance, distance_rows())["C3"]
    assert v.verdict == "inconclusive"
    row = next(r for r in v.rows if r["distance"].startswith("tssd"))
    assert row["n"] == "3" and "exact (all 6 permutations)" in row["p"]


def test_c3_not_run_without_distances(chance):
    assert _judge(study_rows(), chance, None)["C3"].verdict == "not run"


def test_c4_over_pretrained_models(chance):
    v = _judge(study_rows(), chance)["C4"]
    assert v.verdict == "reproduced"
    assert v.rows[0]["K_seed values"] == "0, 100, 200" and v.rows[0]["n (MS models)"] == "9"
    flat = study_rows(recipe=(51.0, 50.0, 52.0), naive=(50.0, 51.5, 51.0))
    flat = [r if not r["model_id"].startswith("merged_all_s200") else {**r, "value": 51.0 + r["pt_seed"] / 4}
            for r in flat]  # fmt: skip
    assert _judge(flat, chance)["C4"].verdict == "inconclusive"


def test_c5_methods_and_architecture(chance):
    rows = [r for r in study_rows() if not (r["variant"] in ("ln", "attn") and r["task"] == "vqa")]
    for variant, drop in (("ln", 1.0), ("attn", 3.0)):
        rows += ms(f"{variant}_s100_r0", "vqa", 60.0, "E3")
        rows += merged(f"{variant}_s100_r0", "vqa", 60.0 - drop, exps="E3;E4")
    v = _judge(rows, chance)["C5"]
    assert v.parts["methods"]["verdict"] == "reproduced"
    assert v.parts["architecture"]["verdict"] == "inconclusive" and v.verdict == "mixed"
    assert any("fewer than 3 pre-training replicates" in n for n in v.notes)
    vqa = v.rows[0]
    assert (
        vqa["architecture outcome"] == "inconclusive"
        and "Custom LN +1.0 (n = 1)" in vqa["variants: drop from merging"]
    )
    assert vqa["methods, paper"] == "not found"


def test_missing_metrics_are_never_reproduced(chance):
    for v in _judge([]).values():
        assert v.verdict == v.verdict_valid == "not run"
    verdicts = _judge([r for r in study_rows() if r["kind"] != "merged"], chance)
    assert {v.verdict for v in verdicts.values()} == {"not run"}


def test_invalid_task_is_said(chance):
    rows = [r if not (r["model_id"] == "untrained" and r["task"] == "vqa") else {**r, "value": 40.0}
            for r in study_rows()]  # fmt: skip
    v = _judge(rows, chance)["C1"]
    assert v.invalid_tasks == ["vqa"] and any("VQA (invalid)" in n for n in v.notes)
    assert v.verdict == v.verdict_valid == "reproduced"  # judged on NLVR2 alone
    assert any("VQA (incomplete)" in n for n in _judge(study_rows())["C1"].notes)  # no chance file
    no_e0 = [
        {**r, "experiments": r["experiments"].replace("E0;", "")}
        for r in study_rows()
        if r["experiments"] != "E0"
    ]
    v = _judge(no_e0, chance)["C1"]
    assert any("E0 was not run" in n for n in v.notes) and v.verdict_valid == "not run"


def test_valid_tasks_verdict_reruns_holm(chance):
    """On the E0-valid tasks only, Holm's correction runs over those tasks: fewer tests, smaller p."""
    rows = [r if not (r["model_id"] == "untrained" and r["task"] == "vqa") else {**r, "value": 40.0}
            for r in study_rows()]  # fmt: skip
    v = _judge(rows, chance)["C1"]
    assert v.test("nlvr2").p_adj == pytest.approx(2 * v.test("nlvr2").p)
