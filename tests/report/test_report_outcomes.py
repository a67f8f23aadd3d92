"""The verdict rules: each outcome built from hand-made frames, and the stated rule saying the same.

The report's rule text is generated from the rule tuples the code applies (``outcomes.rule_markdown``);
these tests build every claim verdict (reproduced, not reproduced, mixed, inconclusive, not run) from
hand-made result frames and check that the rule that gave it is, word for word, in the stated rule,
under the outcome's name, and in the generated verdict table of ``paper/generated/verdicts.md``.
"""

from __future__ import annotations

import math

import pytest
from conftest import DESIGN, distance_rows, frame, study_rows

from vlmerge_core.report.claims import judge_claims
from vlmerge_core.report.generated import verdict_table
from vlmerge_core.report.load import Study
from vlmerge_core.report.outcomes import (
    CLAIM_RULES,
    PAIR_RULES,
    PART_RULES,
    TASK_RULES,
    TaskTest,
    combine,
    combine_parts,
    judge,
    pair_outcome,
    rule_markdown,
)
from vlmerge_core.report.tableio import to_markdown
from vlmerge_core.report.validity import e0_validity

RULE = rule_markdown()


def _judge(rows, *, design=DESIGN, distances=None, **kw):
    study = Study(results=frame(rows) if rows else None, distances=distances, design=design)
    return judge_claims(study, e0_validity(study), {"vqa": 3.0}, n_bootstrap=0, **kw)


def _stated(rules, outcome: str, text: str) -> None:
    """``text`` is the definition of ``outcome`` in ``rules`` and the report states it under that name."""
    assert any(r.outcome == outcome and r.text == text for r in rules), (outcome, text)
    assert f"**{outcome}**: {text}" in RULE


# C1 per task: recipe - naive over three replicates; by hand: a clear gain, a clear loss, noise
GAIN = dict(recipe=(60.0, 61.5, 62.0), naive=(50.0, 52.0, 51.0))  # +10.2 [+8.3, +12.1]
LOSS = dict(recipe=(50.0, 52.0, 51.0), naive=(60.0, 61.5, 62.0))
NOISE = dict(recipe=(50.0, 53.0, 51.0), naive=(51.0, 52.0, 52.5))  # -0.5, 95 % t-interval spans 0
CASES = {
    "reproduced": study_rows(**GAIN),
    "not reproduced": study_rows(**LOSS),
    "mixed": study_rows(**GAIN, tasks=("vqa",)) + study_rows(**NOISE, tasks=("nlvr2",)),
    "inconclusive": study_rows(**NOISE),
    "not run": [r for r in study_rows() if r["kind"] != "merged"],
}


@pytest.mark.parametrize("outcome", list(CASES))
def test_each_claim_outcome_matches_the_stated_rule(outcome):
    v = _judge(CASES[outcome])["C1"]
    assert v.verdict == outcome
    _stated(CLAIM_RULES, outcome, v.rule)
    table = to_markdown(verdict_table({"C1": v}))
    assert f"| {outcome} " in table and (v.summary.split(";")[0] in table)


def test_task_outcomes_follow_the_rule_in_order():
    v = _judge(CASES["mixed"])["C1"]
    assert [r["outcome"] for r in v.rows] == ["holds", "inconclusive"]
    assert [t.outcome for t in v.tests] == ["holds", "inconclusive"]
    loss = _judge(CASES["not reproduced"])["C1"]
    assert {r["outcome"] for r in loss.rows} == {"fails"}


def test_too_few_replicates_are_inconclusive_not_a_verdict():
    two = [r for r in study_rows(**GAIN) if r["pt_seed"] in (None, 0, 1)]
    v = _judge(two)["C1"]
    assert {t.n for t in v.tests} == {2} and v.verdict == "inconclusive"
    _stated(TASK_RULES, "inconclusive", TASK_RULES[1].text)
    assert (
        "fewer than 3 replicates" in TASK_RULES[1].text
        and "fewer than 5 pre-trained models" in TASK_RULES[1].text
    )


def test_not_run_without_design():
    v = _judge(study_rows(), design=None)["C1"]
    assert v.verdict == v.verdict_valid == "not run" and "design.json is missing" in v.notes[0]


def test_task_rules_on_tests():
    t = lambda **kw: judge([TaskTest("vqa", **kw)])[0].outcome  # noqa: E731
    assert t(n=0) == "not run"
    assert t(n=2, estimate=5.0, p=0.001) == "inconclusive"  # too few units
    assert t(n=3, estimate=5.0, p=0.001) == "holds"
    assert t(n=3, estimate=-5.0, p=0.001) == "fails"
    assert t(n=3, estimate=5.0, p=0.2) == "inconclusive"
    assert t(n=5, estimate=-0.9, p=0.001, direction=-1, min_n=5) == "holds"  # a negative correlation claimed
    assert t(n=3, estimate=-0.5, p=0.01, null=-1.0) == "holds"  # C2: within the margin of -1
    # Holm: two tests at p 0.03 each fail the 0.05 bar together (0.03 x 2), pass alone
    two = judge([TaskTest("a", n=3, estimate=1.0, p=0.03), TaskTest("b", n=3, estimate=1.0, p=0.03)])
    assert [x.p_adj for x in two] == [0.06, 0.06] and {x.outcome for x in two} == {"inconclusive"}
    assert judge([TaskTest("a", n=3, estimate=1.0, p=0.03)])[0].outcome == "holds"


def test_claim_and_part_rules():
    assert combine(["holds", "holds", "not run"])[0] == "reproduced"
    assert combine(["holds", "fails"])[0] == "mixed"
    assert combine(["holds", "inconclusive"])[0] == "mixed"
    assert combine(["fails", "inconclusive"])[0] == "not reproduced"
    assert combine(["inconclusive", "inconclusive"])[0] == "inconclusive"
    assert combine([])[0] == combine(["not run"])[0] == "not run"
    with pytest.raises(ValueError, match="task outcomes"):
        combine(["maybe"])
    for parts, want in ((["reproduced", "reproduced"], "reproduced"), (["reproduced", "not reproduced"], "mixed"),
                        (["not reproduced", "not reproduced"], "not reproduced"),
                        (["inconclusive", "not run"], "inconclusive"), (["reproduced", "not run"], "mixed"),
                        (["not run", "not run"], "not run"), (["reproduced", "inconclusive"], "mixed")):  # fmt: skip
        verdict, rule = combine_parts(parts)
        assert verdict == want, parts
        _stated(PART_RULES, want, rule.text)


def test_pair_rules():
    def mk(p, lo, hi, n=3):
        return TaskTest("coco", "methods", n, (lo + hi) / 2, p, lo=lo, hi=hi, equivalence=1.0)

    assert pair_outcome(judge([mk(0.001, 2.0, 3.0), mk(0.5, -0.2, 0.3)])) == "holds"
    assert pair_outcome(judge([mk(0.5, -0.5, 0.5), mk(0.6, -0.2, 0.3)])) == "fails"  # equivalent within 1
    assert pair_outcome(judge([mk(0.5, -2.0, 2.0)])) == "inconclusive"
    assert pair_outcome(judge([mk(0.001, 2.0, 3.0, n=1)])) == "inconclusive"
    assert pair_outcome([TaskTest("coco", "methods", 0)]) == "not run"
    assert all(f"**{r.outcome}**: {r.text}" in RULE for r in PAIR_RULES)


def test_c3_parts_are_combined_by_the_stated_rule():
    rows = study_rows()
    v = _judge(rows, distances=distance_rows())["C3"]
    assert v.verdict == "reproduced" and v.parts["l2_rms"]["verdict"] == "reproduced"
    flipped = _judge(rows, distances=distance_rows({"tssd": -1.0}))["C3"]  # TSSD rises with the score
    assert {p: s["verdict"] for p, s in flipped.parts.items()} == {
        "l2_rms": "reproduced",
        "tssd": "not reproduced",
    }
    assert flipped.verdict == "mixed"  # not "not reproduced": the rule as stated
    _stated(PART_RULES, "mixed", flipped.rule)


def test_rule_text_has_every_threshold_from_the_code():
    from vlmerge_core.analysis.correlation import MIN_BOOTSTRAP_POINTS, N_PERMUTATIONS
    from vlmerge_core.report.outcomes import ALPHA, MIN_POINTS, MIN_UNITS

    for value in (f"{ALPHA:g}", f"fewer than {MIN_UNITS}", f"fewer than {MIN_POINTS}", str(N_PERMUTATIONS),
                  f"fewer than {MIN_BOOTSTRAP_POINTS} points"):  # fmt: skip
        assert value in RULE, value
    assert all(f"**{r.outcome}**: {r.text}" in RULE for r in (*TASK_RULES, *CLAIM_RULES, *PART_RULES))
    assert not math.isnan(ALPHA)
