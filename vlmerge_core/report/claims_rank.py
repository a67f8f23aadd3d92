"""C3 and C4: rank correlations over pre-trained models, with permutation p-values and Holm's correction.

* C3, distances predict the outcome: for each of the two distances we read as the paper's (L2 per
  parameter and TSSD), Spearman's rho of each MS model's total distance with the score of its recipe
  merge over the E4 grid is negative. Each distance is a part with its own verdict; the claim combines
  them by the part rule (both reproduced: reproduced; one holds and one fails: mixed). The partial
  rank correlation controlling for K_seed (over E1 + E4) and the other distances are shown, not judged.
* C4, longer seed pre-training merges better: Spearman's rho of K_seed with the recipe merge's score
  over the E1 MS runs (every seed length incl. 0, every replicate; one point per pre-trained model).
"""

from __future__ import annotations

import pandas as pd

from vlmerge_core.report.design import Design
from vlmerge_core.report.e1 import e1_recipe
from vlmerge_core.report.e4 import distance_name, e4_correlations, e4_points, fmt_rho, fmt_test
from vlmerge_core.report.load import Study
from vlmerge_core.report.outcomes import MIN_POINTS, TaskTest
from vlmerge_core.report.schema import NOT_FOUND, PAPER_DISTANCE_METRICS, TASK_NAMES
from vlmerge_core.report.select import main_metrics, with_units
from vlmerge_core.report.stats import fmt_p, rank_correlation
from vlmerge_core.report.validity import TaskValidity
from vlmerge_core.report.verdict import Verdict, decide, not_run, task_outcomes


def corr_test(task: str, res: dict, direction: int, part: str = "") -> TaskTest:
    """The :class:`TaskTest` of a correlation result (``spearman``) against 0."""
    rho = float("nan") if res.get("rho") is None else res["rho"]
    p = float("nan") if res.get("p_value") is None else res["p_value"]
    return TaskTest(task, part, int(res.get("n", 0)), rho, p, 0.0, direction, MIN_POINTS)


def _held(v: Verdict, part: str) -> str:
    out = task_outcomes(v, part)
    return f"{sum(o == 'holds' for o in out.values())} of {sum(o != 'not run' for o in out.values())}"


def judge_c3(study: Study, d: Design, validity: dict[str, TaskValidity], n_bootstrap: int, rng_seed: int,
             corr: dict | None = None) -> Verdict:  # fmt: skip
    """C3, distances predict the outcome: rho(distance, merged score) < 0 over the E4 grid, per distance."""
    judged = " and ".join(PAPER_DISTANCE_METRICS)
    v = Verdict("C3", "Weight distances predict the merge outcome",
                f"For each of the two proposed distances (our reading: {judged}, L2 per parameter and TSSD; the "
                "paper's names and formulas: not found) and every task, Spearman's rho between each MS model's "
                "total distance and the score of its merge by the recipe's method is negative, over the E4 grid: "
                f"every MS model at the recipe's seed length (K_seed = {d.recipe_seed}; the recipe replicates and "
                f"the runs that vary the MS RNG seed, MS steps, variant and learning rate), at least {MIN_POINTS} "
                "models. Each distance is a part of the claim. Shown beside, not judged: L2, cosine and SSD, and "
                "the Spearman partial correlation controlling for K_seed over every MS model (E1 + E4).")  # fmt: skip
    if not (study.has("results") and study.has("distances")):
        return not_run(v, "Not run: results.csv or distances.csv is missing.")
    if corr is None:
        corr = e4_correlations(e4_points(study.results, study.distances, d), n_bootstrap, rng_seed)
    tests = [
        corr_test(t, res["spearman"], -1, m) for (m, t), res in corr.items() if m in PAPER_DISTANCE_METRICS
    ]
    if not tests:
        return not_run(v, "Not run: no E4 points (recipe merges with distances).")
    decide(v, tests, validity)
    outs = {m: task_outcomes(v, m) for m in PAPER_DISTANCE_METRICS}
    for (m, t), res in corr.items():
        sp, pa = res["spearman"], res["partial"]
        test = v.test(t, m)
        v.rows.append({"task": TASK_NAMES.get(t, t), "distance": distance_name(m), "n": str(sp["n"]),
                       "Spearman rho": fmt_rho(sp), "p": fmt_test(sp),
                       "p (Holm)": "—" if test is None else fmt_p(test.p_adj),
                       "partial rho | K_seed (E1 + E4)": fmt_rho(pa), "p (partial)": fmt_test(pa),
                       "paper": NOT_FOUND, "outcome": outs[m].get(t, "not run") if m in outs else "shown only"})  # fmt: skip
        v.numbers[f"{t}.{m}.rho"] = fmt_rho(sp)
    v.summary = "; ".join(f"{m}: {v.parts.get(m, {}).get('verdict', v.verdict)} (holds on {_held(v, m)} tasks)"
                          for m in PAPER_DISTANCE_METRICS)  # fmt: skip
    return v


def c4_points(results: pd.DataFrame, d: Design, task: str) -> pd.DataFrame:
    """One point per E1 MS run on ``task``: its K_seed and its recipe merge's test main score."""
    rows = with_units(e1_recipe(results, d))
    rows = rows[(rows["task"] == task) & rows["is_main"] & (rows["split"] == "test")]
    return rows.groupby(["seed_steps", "unit"], as_index=False)["value"].mean()


def judge_c4(results: pd.DataFrame, d: Design, validity: dict[str, TaskValidity], rng_seed: int) -> Verdict:
    """C4, longer seed pre-training merges better: Spearman rho(K_seed, merged score) > 0, per task."""
    v = Verdict("C4", "Longer seed pre-training merges better",
                "On every task, Spearman's rho between K_seed (0 = naive, and every seed length of E1) and the "
                "score of the recipe's merge of each E1 MS model is positive; one point per pre-trained MS "
                f"model (every seed length and replicate), at least {MIN_POINTS} points. The paper's curve: not "
                "found (our reading of the seed study).")  # fmt: skip
    tests, res = [], {}
    for t in main_metrics(results):
        p = c4_points(results, d, t)
        res[t] = (
            rank_correlation(p["seed_steps"].astype(float), p["value"], rng_seed=rng_seed)
            if len(p)
            else {"n": 0}
        )
        tests.append(corr_test(t, res[t], +1))
    decide(v, tests, validity)
    out = task_outcomes(v, "")
    for t, metric in main_metrics(results).items():
        ks = sorted(int(k) for k in c4_points(results, d, t)["seed_steps"].unique())
        v.rows.append({"task": TASK_NAMES.get(t, t), "metric": metric, "K_seed values": ", ".join(map(str, ks)),
                       "n (MS models)": str(res[t].get("n", 0)), "Spearman rho": fmt_rho(res[t]), "p": fmt_test(res[t]),
                       "p (Holm)": fmt_p(v.test(t).p_adj), "paper": NOT_FOUND, "outcome": out.get(t, "not run")})  # fmt: skip
        v.numbers[f"{t}.rho"] = fmt_rho(res[t])
    per = ", ".join(
        f"{TASK_NAMES.get(t, t)} {fmt_rho(r)}" for t, r in res.items() if r.get("rho") is not None
    )
    v.summary = f"holds on {_held(v, '')} tasks; rho(K_seed, merged score): {per or 'not measured'}"
    return v
