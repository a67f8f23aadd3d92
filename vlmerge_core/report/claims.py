"""Verdicts on the claims C1-C5 of PAPER.md §8, computed from the metrics by the rules of :mod:`.outcomes`.

The roles of the runs come from ``design.json`` (:mod:`.design`); without it every claim is "not run".
C1 and C2 compare claim rows paired by pre-training replicate (this module); C3 and C4 are rank
correlations over pre-trained models (:mod:`.claims_rank`); C5 compares methods and architecture
variants (:mod:`.claims_c5`). The rule the report states is :func:`.outcomes.rule_markdown`.
"""

from __future__ import annotations

import pandas as pd

from vlmerge_core.report.claims_c5 import judge_c5
from vlmerge_core.report.claims_rank import judge_c3, judge_c4
from vlmerge_core.report.design import ROLE_NAMES, Design, role_rows
from vlmerge_core.report.e1 import drop_from_merging, fmt_n
from vlmerge_core.report.load import Study, empty_results
from vlmerge_core.report.outcomes import TaskTest
from vlmerge_core.report.schema import DESIGN_FILE, NOT_FOUND, TASK_NAMES
from vlmerge_core.report.select import main_metrics, unit_values
from vlmerge_core.report.stats import Paired, cell_of, fmt_p, paired
from vlmerge_core.report.validity import TaskValidity
from vlmerge_core.report.verdict import Verdict, decide, not_run, task_outcomes

__all__ = ["Verdict", "judge_c1", "judge_c2", "judge_claims"]


def diff_test(task: str, p: Paired, margin: float = 0.0, part: str = "", direction: int = 1) -> TaskTest:
    """The :class:`TaskTest` of a paired difference against ``margin``."""
    return TaskTest(task, part, p.n, p.mean, p.p, margin, direction, lo=p.lo, hi=p.hi)


def _p_adj(v: Verdict, task: str, part: str = "") -> str:
    t = v.test(task, part)
    return "—" if t is None else fmt_p(t.p_adj)


def _summary(v: Verdict, what: str, diffs: dict[str, Paired], part: str = "") -> str:
    out = task_outcomes(v, part)
    held = sum(o == "holds" for o in out.values())
    measured = sum(o != "not run" for o in out.values())
    per = ", ".join(f"{TASK_NAMES.get(t, t)} {p.fmt()}" for t, p in diffs.items() if p.measured)
    return f"holds on {held} of {measured} tasks; {what}: {per or 'not measured'}"


def judge_c1(
    results: pd.DataFrame, d: Design, validity: dict[str, TaskValidity], published: dict[str, float]
) -> Verdict:
    """C1, seed pre-training makes merging work: recipe merge - naive merge > 0, paired by replicate."""
    v = Verdict("C1", "Seed pre-training makes merging work",
                f"On every task, the recipe merge (seed of K_seed = {d.recipe_seed} steps, then K_VL = {d.k_vl} MS "
                "steps) beats the naive merge (the same merge of an MS model pre-trained from the init without "
                "seed) by more than 0 points: the mean of recipe - naive over the pre-training replicates, paired "
                "by `pt_seed`, is tested against 0. The recipe had K_seed more pre-training steps than the naive "
                "merge, so the drop from merging (MS - merged, per replicate) is shown beside the gain: it is the "
                "part that belongs to merging.")  # fmt: skip
    recipe, naive = role_rows(results, d, "recipe"), role_rows(results, d, "naive")
    tests, diffs = [], {}
    for t in main_metrics(results):
        diffs[t] = paired(unit_values(recipe, t), unit_values(naive, t))
        tests.append(diff_test(t, diffs[t]))
    decide(v, tests, validity)
    outcomes = task_outcomes(v, "")
    for t, metric in main_metrics(results).items():
        paper = f"+{published[t]:g} (points or %)" if t in published else NOT_FOUND
        v.rows.append({"task": TASK_NAMES.get(t, t), "metric": metric, "replicates": str(diffs[t].n),
                       "recipe merge": fmt_n(cell_of(unit_values(recipe, t))),
                       "naive merge": fmt_n(cell_of(unit_values(naive, t))),
                       "gain (recipe - naive) [95 % t]": diffs[t].fmt(), "p (Holm)": _p_adj(v, t),
                       "gain (paper)": paper,
                       "drop from merging, recipe": drop_from_merging(results, d, d.recipe_seed, t).fmt(),
                       "drop from merging, naive": drop_from_merging(results, d, 0, t).fmt(),
                       "outcome": outcomes.get(t, "not run")})  # fmt: skip
        v.numbers[f"{t}.gain"] = diffs[t].fmt()
    v.summary = _summary(v, "recipe - naive", diffs)
    return v


def judge_c2(results: pd.DataFrame, d: Design, validity: dict[str, TaskValidity], margin: float) -> Verdict:
    """C2, the recipe matches the MA baseline: recipe - MA > -margin, against both MA controls."""
    parts = {"ma_baseline": f"vs {ROLE_NAMES['ma_baseline']}", "ma_matched": f"vs {ROLE_NAMES['ma_matched']}"}
    v = Verdict("C2", "The recipe matches the MA baseline",
                f"On every task, the recipe merge ({d.recipe_seed} + {d.k_vl} = {d.pretrain_steps['recipe']} "
                f"pre-training steps) is at most {margin:g} points below the MA control: the mean of recipe - MA "
                f"over the replicates, paired by `pt_seed`, is tested against -{margin:g}. Judged against two "
                f"controls, each a part: the paper's MA baseline, pre-trained from the init for K_VL = "
                f"{d.ma_baseline_steps} steps (the abstract's \"pre-trained from scratch\", README run "
                f"`ma_200k_vlpt`), and the compute-matched MA, pre-trained for {d.ma_matched_steps} steps, the "
                "recipe's total. The paper's margin: not found.")  # fmt: skip
    v.numbers["margin"] = f"{margin:g}"
    recipe = role_rows(results, d, "recipe")
    tests, diffs = [], {}
    for role, part in parts.items():
        ma = role_rows(results, d, role)
        for t in main_metrics(results):
            diffs[(role, t)] = paired(unit_values(recipe, t), unit_values(ma, t), -margin)
            tests.append(diff_test(t, diffs[(role, t)], -margin, part))
    decide(v, tests, validity)
    out = {role: task_outcomes(v, part) for role, part in parts.items()}
    for t, metric in main_metrics(results).items():
        row = {
            "task": TASK_NAMES.get(t, t),
            "metric": metric,
            "recipe merge": fmt_n(cell_of(unit_values(recipe, t))),
        }
        for role, part in parts.items():
            name = "MA baseline" if role == "ma_baseline" else "matched MA"
            row[f"{name} ({d.pretrain_steps[role]} steps)"] = fmt_n(
                cell_of(unit_values(role_rows(results, d, role), t))
            )
            row[f"recipe - {name} [95 % t]"] = diffs[(role, t)].fmt()
            row[f"p (Holm), {name}"] = _p_adj(v, t, part)
            row[f"outcome, {name}"] = out[role].get(t, "not run")
            v.numbers[f"{t}.{role}.diff"] = diffs[(role, t)].fmt()
        v.rows.append(row)
    base, matched = (v.parts.get(p, {}).get("verdict", v.verdict) for p in parts.values())
    v.notes.insert(0, f"The paper compared with the MA baseline ({d.ma_baseline_steps} steps from the init): "
                      f"{base}. The compute-matched MA ({d.ma_matched_steps} steps, the recipe's own budget) "
                      f"shows: {matched}.")  # fmt: skip
    summaries = [_summary(v, f"recipe - {ROLE_NAMES[r]}", {t: diffs[(r, t)] for t in main_metrics(results)}, p)
                 for r, p in parts.items()]  # fmt: skip
    v.summary = (
        f"{parts['ma_baseline']}: {base} ({summaries[0]}); {parts['ma_matched']}: {matched} ({summaries[1]})"
    )
    return v


def judge_claims(
    study: Study,
    validity: dict[str, TaskValidity],
    published: dict[str, float],
    *,
    c2_margin: float = 1.0,
    n_bootstrap: int = 1000,
    rng_seed: int = 0,
    corr: dict | None = None,
) -> dict[str, Verdict]:
    """``{claim id: Verdict}`` for C1-C5 (every one "not run" without results or ``design.json``)."""
    results = study.results if study.has("results") else empty_results()
    d = study.design
    if d is None or len(results) == 0:
        why = f"{DESIGN_FILE} is missing: the roles of the runs are unknown" if d is None else "no results"
        titles = {"C1": "Seed pre-training makes merging work", "C2": "The recipe matches the MA baseline",
                  "C3": "Weight distances predict the merge outcome", "C4": "Longer seed pre-training merges better",
                  "C5": "Merging method and architecture change the outcome"}  # fmt: skip
        return {c: not_run(Verdict(c, t, "not run"), f"Not run: {why}.") for c, t in titles.items()}
    return {
        "C1": judge_c1(results, d, validity, published),
        "C2": judge_c2(results, d, validity, c2_margin),
        "C3": judge_c3(study, d, validity, n_bootstrap, rng_seed, corr),
        "C4": judge_c4(results, d, validity, rng_seed),
        "C5": judge_c5(results, d, validity, c2_margin),
    }
