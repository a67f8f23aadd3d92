"""E4, distance metrics: each MS model's expert distance (per parameter or per coordinate) against the
score of its merge by the recipe's method, and their rank correlations (claim C3).

Two sets of points, one per pre-trained MS model and task:

* the **E4 grid** (C3's test): every MS model at the recipe's seed length (the recipe replicates and the
  grid runs that vary what moves the distances: MS RNG seed, MS steps, variant, learning rate);
* **E1 + E4**: every MS model with distances (every seed length and replicate, and the grid), for the
  Spearman partial correlation controlling for K_seed (a distance that only restates K_seed gives a
  partial correlation near zero).
"""

from __future__ import annotations

import pandas as pd

from vlmerge_core.report.design import Design, recipe_merge_mask
from vlmerge_core.report.schema import (
    DISTANCE_METRICS,
    NOT_FOUND,
    PAPER_DISTANCE_METRICS,
    TASK_NAMES,
    TASKS,
    order_key,
)
from vlmerge_core.report.select import key_of, variant_name
from vlmerge_core.report.stats import fmt_p, partial_rank_correlation, rank_correlation

JOIN = ["seed_steps", "variant", "pt_seed", "pt_steps", "ms_seed", "lr_mult"]  # identity of an MS run
POINT_COLUMNS = ["ms_model", *JOIN, "group", "in_grid", "task", "score", "metric", "distance"]


def _group(r: pd.Series, d: Design) -> str:
    """What an MS run varies, relative to the recipe replicates (the legend of the E4 scatter)."""
    if r["variant"] != "all":
        return variant_name(r["variant"])
    if int(r["pt_steps"]) != d.k_vl:
        return f"MS steps {int(r['pt_steps'])}"
    if float(r["lr_mult"]) != 1.0:
        return f"LR x{float(r['lr_mult']):g}"
    if int(r["ms_seed"]) != int(r["pt_seed"]):
        return "MS RNG seed"
    if int(r["seed_steps"]) != d.recipe_seed:
        return f"K_seed {int(r['seed_steps'])}"
    return "recipe replicate"


def e4_points(
    results: pd.DataFrame, distances: pd.DataFrame, d: Design, scope: str = "total"
) -> pd.DataFrame:
    """Tidy points: the recipe merge's test main score of each MS model per task, beside each of its
    distances of ``scope`` (``total`` or ``block{i}``). ``in_grid`` marks the E4 grid (K_seed = the
    recipe's)."""
    rows = results[recipe_merge_mask(results, d) & results["is_main"] & (results["split"] == "test")]
    tot = distances[(distances["scope"] == scope) & distances["metric"].isin(DISTANCE_METRICS)]
    if len(rows) == 0 or len(tot) == 0:
        return pd.DataFrame(columns=POINT_COLUMNS)
    rows = rows.assign(_k=key_of(rows, JOIN))
    score = rows.groupby(["_k", "task"])["value"].mean()  # one merge per MS model and task
    tot = tot.assign(_k=key_of(tot, JOIN))
    recs = []
    for _, r in tot.iterrows():
        for task in order_key(list(rows.loc[rows["_k"] == r["_k"], "task"]), TASKS):
            recs.append({"ms_model": r["model_id"], **{k: r[k] for k in JOIN}, "group": _group(r, d),
                         "in_grid": int(r["seed_steps"]) == d.recipe_seed, "task": task,
                         "score": float(score[(r["_k"], task)]), "metric": r["metric"], "distance": r["value"]})  # fmt: skip
    out = pd.DataFrame(recs, columns=POINT_COLUMNS)
    return out.sort_values(["metric", "task", "ms_model"], kind="stable").reset_index(drop=True)


def e4_correlations(
    points: pd.DataFrame, n_bootstrap: int = 0, rng_seed: int = 0
) -> dict[tuple[str, str], dict]:
    """``{(distance metric, task): {"spearman": ..., "partial": ...}}``: Spearman's rho of the distance
    with the merged score over the E4 grid (permutation p-value; bootstrap interval from 8 points), and
    the partial rank correlation controlling for K_seed over E1 + E4 (within-K_seed permutations)."""
    out = {}
    for metric in order_key(list(points["metric"]), DISTANCE_METRICS):
        for task in order_key(list(points["task"]), TASKS):
            p = points[(points["metric"] == metric) & (points["task"] == task)]
            g = p[p["in_grid"]]
            out[(metric, task)] = {
                "spearman": rank_correlation(
                    g["distance"], g["score"], n_bootstrap=n_bootstrap, rng_seed=rng_seed
                ),
                "partial": partial_rank_correlation(
                    p["distance"], p["score"], p["seed_steps"].astype(float), rng_seed=rng_seed
                ),  # fmt: skip
            }
    return out


def fmt_rho(res: dict) -> str:
    """``-0.62`` (with ``[lo, hi]`` when a bootstrap interval exists) or ``—``."""
    if res.get("rho") is None:
        return "—"
    if res.get("ci_low") is None:
        return f"{res['rho']:+.2f}"
    return f"{res['rho']:+.2f} [{res['ci_low']:+.2f}, {res['ci_high']:+.2f}]"


def fmt_test(res: dict) -> str:
    """``p 0.003, exact (all 720 permutations)`` or ``—``."""
    if res.get("p_value") is None:
        return "—"
    return f"{fmt_p(res['p_value'])}, {res['p_method']}"


def distance_name(metric: str) -> str:
    return metric + (" (paper's, our reading)" if metric in PAPER_DISTANCE_METRICS else "")


def table_e4(corr: dict[tuple[str, str], dict]) -> pd.DataFrame:
    """E4: per distance and task, n, Spearman's rho over the E4 grid with its permutation p-value (and a
    bootstrap interval from 8 points), the partial rank correlation controlling for K_seed over
    E1 + E4; the paper's correlations are "not found"."""
    recs = {}
    for (metric, task), res in corr.items():
        sp, pa = res["spearman"], res["partial"]
        recs[(distance_name(metric), TASK_NAMES.get(task, task))] = {
            "n (E4 grid)": str(sp["n"]),
            "Spearman rho": fmt_rho(sp),
            "p (two-sided, permutation)": fmt_test(sp),
            "n (E1 + E4)": str(pa["n"]),
            "partial rho | K_seed": "—" if pa["rho"] is None else f"{pa['rho']:+.2f}",
            "p (partial)": fmt_test(pa),
            "paper": NOT_FOUND,
        }
    df = pd.DataFrame.from_dict(recs, orient="index")
    if recs:
        df.index = pd.MultiIndex.from_tuples(list(recs), names=["distance", "task"])
    return df
