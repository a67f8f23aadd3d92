"""Verdicts on the claims C1-C5 of PAPER.md §8, computed from the measured numbers and their spread.

Each claim is judged task by task. A task's outcome is ``holds`` only when the effect clears its
margin by more than the combined spread of the numbers compared (:func:`~.stats.compare`), or when
a rank correlation's 95 % interval excludes zero in the claimed direction; ``fails`` when it is
clearly the other way; ``within noise`` otherwise; ``not run`` when a number is missing. The claim is

* **reproduced** when every measured task holds,
* **not reproduced** when none holds,
* **mixed** when some hold and some do not (or a part of the claim was not run),
* **not run** when nothing was measured; missing metrics never count as reproduced.

Each verdict is given over every measured task and again over the tasks E0 marks valid stand-ins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from vlmerge_core.report.load import Study, empty_results, rows_of
from vlmerge_core.report.schema import (
    NOT_FOUND,
    NOT_RUN,
    OURS_METHODS,
    PAPER_DISTANCE_METRICS,
    TASK_NAMES,
    VARIANT_NAMES,
)
from vlmerge_core.report.select import get, label, main_cells, main_metrics, models, recipe_models
from vlmerge_core.report.stats import Cell, compare, difference, rank_correlation
from vlmerge_core.report.tables import best_of_methods, ordering
from vlmerge_core.report.tables_main import e3_drops, e4_correlations, e4_points, fmt_corr
from vlmerge_core.report.validity import TaskValidity

VERDICTS = ("reproduced", "not reproduced", "mixed", NOT_RUN)


@dataclass
class Verdict:
    """The judgement of one claim: its criterion in words, the per-task numbers and the verdict."""

    claim: str
    title: str
    criterion: str
    verdict: str = NOT_RUN
    verdict_valid: str = NOT_RUN  # the same criterion on the tasks E0 marks valid only
    rows: list[dict[str, str]] = field(default_factory=list)  # one per task (and metric/part)
    invalid_tasks: list[str] = field(default_factory=list)  # judged tasks that E0 does not mark valid
    notes: list[str] = field(default_factory=list)
    numbers: dict[str, str] = field(default_factory=dict)  # values quoted in prose (macros)

    def table(self) -> pd.DataFrame:
        """The per-task rows as a DataFrame of strings."""
        return pd.DataFrame(self.rows).set_index(list(self.rows[0])[0]) if self.rows else pd.DataFrame()


def combine(outcomes: list[str]) -> str:
    """The claim's verdict from its per-task outcomes (see the module docstring)."""
    measured = [o for o in outcomes if o != NOT_RUN]
    if not measured:
        return NOT_RUN
    holds = sum(o == "holds" for o in measured)
    if holds == len(measured):
        return "reproduced"
    return "not reproduced" if holds == 0 else "mixed"


def _finish(v: Verdict, outcomes: dict[str, str], validity: dict[str, TaskValidity]) -> Verdict:
    v.verdict = combine(list(outcomes.values()))
    judged = [t for t, o in outcomes.items() if o != NOT_RUN]
    v.invalid_tasks = [t for t in judged if t not in validity or validity[t].status != "valid"]
    valid = [o for t, o in outcomes.items() if t in validity and validity[t].status == "valid"]
    v.verdict_valid = combine(valid)
    if all(tv.status == NOT_RUN for tv in validity.values()):
        v.notes.append("E0 was not run: whether each task is a valid stand-in is unknown.")
    elif v.invalid_tasks:
        names = ", ".join(f"{TASK_NAMES.get(t, t)} ({validity[t].status if t in validity else NOT_RUN})"
                          for t in v.invalid_tasks)  # fmt: skip
        v.notes.append(f"Judged on tasks that E0 does not mark valid stand-ins: {names}.")
    not_run = [TASK_NAMES.get(t, t) for t, o in outcomes.items() if o == NOT_RUN]
    if not_run and judged:
        v.notes.append(f"Not run on: {', '.join(not_run)}.")
    v.numbers.update({"verdict": v.verdict, "verdict_valid": v.verdict_valid})
    return v


def _model_label(results: pd.DataFrame, mid: str | None) -> str:
    if not mid:
        return NOT_RUN
    m = models(results[results["model_id"] == mid]).iloc[0]
    return f"{label(m)} (`{mid}`)"


def judge_c1(
    results: pd.DataFrame, validity: dict[str, TaskValidity], published: dict[str, float]
) -> Verdict:
    """C1, seed pre-training makes merging work: recipe merge - naive merge > its spread, every task."""
    v = Verdict("C1", "Seed pre-training makes merging work",
                "On every task, the merge with seed pre-training (the recipe merge) beats naive merging "
                "(the same merge of an MS model pre-trained without seed) by more than the combined spread "
                "of the two scores (margin 0 points).")  # fmt: skip
    pick = recipe_models(results)
    cells = main_cells(results)
    outcomes = {}
    for t, metric in main_metrics(results).items():
        a, b = get(cells, pick["recipe"], t), get(cells, pick["naive"], t)
        d = difference(a, b)
        outcomes[t] = compare(d, 0.0)
        paper = f"+{published[t]:g} (points or %)" if t in published else NOT_FOUND
        v.rows.append({"task": TASK_NAMES.get(t, t), "metric": metric, "recipe merge": a.fmt(),
                       "naive merge": b.fmt(), "gain (ours)": d.fmt(signed=True), "gain (paper)": paper,
                       "outcome": outcomes[t]})  # fmt: skip
        v.numbers[f"{t}.gain"] = d.fmt(signed=True)
    v.notes.append(f"Recipe merge: {_model_label(results, pick['recipe'])}; "
                   f"naive merge: {_model_label(results, pick['naive'])}.")  # fmt: skip
    return _finish(v, outcomes, validity)


def judge_c2(results: pd.DataFrame, validity: dict[str, TaskValidity], margin: float) -> Verdict:
    """C2, the recipe matches the MA baseline: recipe - MA >= -margin even at the pessimistic end."""
    v = Verdict("C2", "The recipe matches the MA baseline",
                f"On every task, the recipe merge is at most {margin:g} points below the MA baseline "
                f"pre-trained for the same budget, even after subtracting the combined spread: "
                f"(recipe - MA) - spread > -{margin:g}. The paper's margin: not found.")  # fmt: skip
    v.numbers["margin"] = f"{margin:g}"
    pick = recipe_models(results)
    cells = main_cells(results)
    outcomes = {}
    for t, metric in main_metrics(results).items():
        a, b = get(cells, pick["recipe"], t), get(cells, pick["ma"], t)
        d = difference(a, b)
        outcomes[t] = compare(d, -margin)
        v.rows.append({"task": TASK_NAMES.get(t, t), "metric": metric, "recipe merge": a.fmt(),
                       "MA baseline": b.fmt(), "recipe - MA": d.fmt(signed=True), "outcome": outcomes[t]})  # fmt: skip
        v.numbers[f"{t}.diff"] = d.fmt(signed=True)
    v.notes.append(f"MA baseline: {_model_label(results, pick['ma'])}.")
    return _finish(v, outcomes, validity)


def _corr_outcome(res: dict, sign: int) -> str:
    if res.get("rho") is None:
        return NOT_RUN
    if res.get("ci_low") is None:
        return "within noise"
    lo, hi = sign * res["ci_low"], sign * res["ci_high"]
    lo, hi = min(lo, hi), max(lo, hi)
    return "holds" if lo > 0 else "fails" if hi < 0 else "within noise"


def judge_c3(
    study: Study, validity: dict[str, TaskValidity], n_bootstrap: int, rng_seed: int, corr: dict | None = None
) -> Verdict:
    """C3, distances predict the outcome: Spearman rho of L2 and TSSD with the merged score < 0 (95 % CI)."""
    v = Verdict("C3", "Weight distances predict the merge outcome",
                "For each of the two proposed distances (our reading: L2 and TSSD; the paper's names and "
                "formulas: not found) and every task, the Spearman rank correlation between each MS model's "
                "total distance and the score of its merge with the recipe's method and knob (one point per "
                "MS model of the E4 grid) is negative with its 95 % bootstrap "
                f"interval ({n_bootstrap} resamples) below zero.")  # fmt: skip
    outcomes: dict[str, list[str]] = {}
    if study.has("results") and study.has("distances"):
        if corr is None:
            corr = e4_correlations(e4_points(study.results, study.distances), n_bootstrap, rng_seed)
        for (metric, t, method), res in corr.items():
            if method != "spearman" or metric not in PAPER_DISTANCE_METRICS:
                continue
            o = _corr_outcome(res, -1)
            outcomes.setdefault(t, []).append(o)
            v.rows.append({"task": TASK_NAMES.get(t, t), "distance": metric, "n": str(res["n"]),
                           "Spearman rho [95 % bootstrap CI]": fmt_corr(res), "paper": NOT_FOUND, "outcome": o})  # fmt: skip
            v.numbers[f"{t}.{metric}.rho"] = fmt_corr(res)
    flat = {t: ("holds" if all(o == "holds" for o in os) else "not run" if all(o == NOT_RUN for o in os)
                else "fails" if "fails" in os else "within noise") for t, os in outcomes.items()}  # fmt: skip
    return _finish(v, flat, validity)


def judge_c4(
    results: pd.DataFrame, validity: dict[str, TaskValidity], n_bootstrap: int, rng_seed: int
) -> Verdict:
    """C4, longer seed pre-training merges better: Spearman rho(K_seed, merged score) > 0 (95 % CI)."""
    v = Verdict("C4", "Longer seed pre-training merges better",
                "On every task, over the E1 merges of the recipe's method, knob and variant, the Spearman "
                "rank correlation between K_seed (0 = naive) and the merged score of each fine-tuning run is "
                f"positive with its 95 % bootstrap interval ({n_bootstrap} resamples) above zero; at least "
                "three K_seed values are needed. The paper's curve: not found (our reading of the seed study).")  # fmt: skip
    rows = rows_of(results, "E1")
    rows = rows[(rows["kind"] == "merged") & (rows["option"] == "") & ~rows["method"].isin(OURS_METHODS)]
    pick = recipe_models(results)
    ref = rows[rows["model_id"] == pick["recipe"]]
    if len(ref):
        r0 = ref.iloc[0]
        same = (rows["method"] == r0["method"]) & (rows["variant"] == r0["variant"])
        rows = rows[same & ((rows["knob_value"] == r0["knob_value"]) | (rows["knob"] == ""))]
    outcomes = {}
    for t, metric in main_metrics(results).items():
        p = rows[(rows["task"] == t) & (rows["metric"] == metric)]
        ks = sorted(p["seed_steps"].dropna().astype(int).unique())
        if len(ks) < 3:
            outcomes[t] = NOT_RUN
            res = {"rho": None, "n": len(p)}
        else:
            res = rank_correlation(p["seed_steps"].astype(float).to_numpy(), p["value"].to_numpy(),
                                   method="spearman", n_bootstrap=n_bootstrap, rng_seed=rng_seed)  # fmt: skip
            outcomes[t] = _corr_outcome(res, +1)
        v.rows.append({"task": TASK_NAMES.get(t, t), "metric": metric, "K_seed values": ", ".join(map(str, ks)),
                       "n runs": str(res["n"]), "Spearman rho [95 % bootstrap CI]": fmt_corr(res), "paper": NOT_FOUND,
                       "outcome": outcomes[t]})  # fmt: skip
        v.numbers[f"{t}.rho"] = fmt_corr(res)
    return _finish(v, outcomes, validity)


def _spread_outcome(cells: list[Cell]) -> str:
    cells = [c for c in cells if c.measured]
    if len(cells) < 2:
        return NOT_RUN
    hi, lo = max(cells, key=lambda c: c.mean), min(cells, key=lambda c: c.mean)
    return compare(difference(hi, lo), 0.0)


def judge_c5(results: pd.DataFrame, validity: dict[str, TaskValidity]) -> Verdict:
    """C5, method and architecture matter: best and worst differ by more than their combined spread."""
    v = Verdict("C5", "Merging method and architecture change the outcome",
                "The paper's orderings are not found, so only the existence of each effect is judged, not its "
                "direction: on every task, the best and the worst of the paper's methods (interpolation, "
                "arithmetic, RegMean; each at its best knob, E2) differ by more than their combined spread, and "
                "the largest and smallest drop from merging among the architecture variants (E3) differ by more "
                "than theirs. Both parts must hold; a part not run caps the verdict at mixed.")  # fmt: skip
    best = {n: c for n, c in best_of_methods(results).items() if not n.endswith("(ours)")}
    drops = e3_drops(results)
    parts: dict[str, dict[str, str]] = {"methods": {}, "architecture": {}}
    for t, metric in main_metrics(results).items():
        meth = [(n, cells[t][0]) for n, cells in best.items() if t in cells]
        var = [(VARIANT_NAMES.get(vr, vr), d[t]) for (vr, _), d in drops.items() if t in d]
        parts["methods"][t] = _spread_outcome([c for _, c in meth])
        parts["architecture"][t] = _spread_outcome([c for _, c in var])
        v.rows.append({"task": TASK_NAMES.get(t, t), "metric": metric,
                       "methods, measured": ordering(meth), "methods, paper": NOT_FOUND,
                       "methods outcome": parts["methods"][t],
                       "variants, measured (smallest drop first)": ordering(var, higher_is_better=False),
                       "variants, paper": NOT_FOUND, "architecture outcome": parts["architecture"][t]})  # fmt: skip
    valid = {t for t in parts["methods"] if t in validity and validity[t].status == "valid"}
    sub = {p: combine(list(o.values())) for p, o in parts.items()}
    sub_valid = {p: combine([x for t, x in o.items() if t in valid]) for p, o in parts.items()}
    merged = {t: ("holds" if parts["methods"][t] == parts["architecture"][t] == "holds"
                  else NOT_RUN if parts["methods"][t] == parts["architecture"][t] == NOT_RUN
                  else "within noise") for t in parts["methods"]}  # fmt: skip
    _finish(v, merged, validity)  # notes on invalid and missing tasks
    v.verdict, v.verdict_valid = combine_parts(sub), combine_parts(sub_valid)
    v.notes.insert(0, f"Methods: {sub['methods']}; architecture: {sub['architecture']}.")
    v.numbers.update({f"{p}.verdict": s for p, s in sub.items()})
    v.numbers.update({"verdict": v.verdict, "verdict_valid": v.verdict_valid})
    return v


def combine_parts(sub: dict[str, str]) -> str:
    """A two-part claim's verdict: both must be reproduced; a part not run caps it at mixed."""
    run = [s for s in sub.values() if s != NOT_RUN]
    if not run:
        return NOT_RUN
    if len(run) < len(sub):  # one part not run: never reproduced
        return "not reproduced" if run == ["not reproduced"] else "mixed"
    if all(s == "reproduced" for s in run):
        return "reproduced"
    return "not reproduced" if all(s == "not reproduced" for s in run) else "mixed"


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
    """``{claim id: Verdict}`` for C1-C5 (every one ``not run`` when the study has no results)."""
    results = study.results if study.has("results") else empty_results()
    return {
        "C1": judge_c1(results, validity, published),
        "C2": judge_c2(results, validity, c2_margin),
        "C3": judge_c3(study, validity, n_bootstrap, rng_seed, corr),
        "C4": judge_c4(results, validity, n_bootstrap, rng_seed),
        "C5": judge_c5(results, validity),
    }
