"""Tables of E3 (architecture), E4 (distance metrics), E5 (the main results) and the provenance of
each modality-arithmetic number (the official in-place form vs the task-arithmetic formula)."""

from __future__ import annotations

import math

import pandas as pd

from vlmerge_core.report.load import rows_of
from vlmerge_core.report.published import headline_gains
from vlmerge_core.report.schema import (
    DISTANCE_METRICS,
    METHOD_DESCRIPTIONS,
    METHOD_NAMES,
    METHODS,
    METRIC_ORDER,
    NOT_FOUND,
    PAPER_DISTANCE_METRICS,
    TASK_NAMES,
    TASKS,
    VARIANT_NAMES,
    VARIANTS,
    order_key,
)
from vlmerge_core.report.select import (
    get,
    label,
    main_cells,
    main_metrics,
    method_rank,
    models,
    primary_merge,
    recipe_models,
    same_knob,
    with_setting,
)
from vlmerge_core.report.stats import Cell, aggregate, difference, rank_correlation
from vlmerge_core.report.tables import PAPER_ROW, task_column


# ------------------------------------------------------------------------------------------- E3
def e3_pairs(results: pd.DataFrame) -> list[tuple[pd.Series, pd.Series | None]]:
    """``(merged model, its unmerged MS model)`` of E3: same variant and ``K_seed``, in variant order."""
    rows = rows_of(results, "E3")
    mods = models(rows)
    ms = mods[mods["kind"] == "ms"]
    merged = mods[(mods["kind"] == "merged") & (mods["option"] == "")]
    merged = merged.assign(
        vr=merged["variant"].map(lambda v: VARIANTS.index(v) if v in VARIANTS else 9),
        mr=merged["method"].map(method_rank),
    ).sort_values(["vr", "mr", "knob_value", "model_id"], kind="stable")
    out = []
    for _, m in merged.iterrows():
        match = ms[(ms["variant"] == m["variant"]) & (ms["seed_steps"].fillna(-1) == m["seed_steps"])]
        out.append((m, match.iloc[0] if len(match) else None))
    return out


def e3_drops(results: pd.DataFrame) -> dict[tuple[str, str], dict[str, Cell]]:
    """``{(variant, merged label): {task: MS - merged}}``: the drop from merging, with spread, for the
    one merge setting of :func:`~.select.primary_merge` (so variants are compared under one method)."""
    rows = rows_of(results, "E3")
    cells = main_cells(rows)
    mains = main_metrics(results)
    setting = primary_merge(results, models(rows))
    out = {}
    for m, ms in e3_pairs(results):
        if (
            ms is None
            or setting is None
            or m["method"] != setting[0]
            or not same_knob(m["knob_value"], setting[1])
        ):
            continue
        out[(m["variant"], label(m))] = {
            t: difference(get(cells, ms["model_id"], t), get(cells, m["model_id"], t)) for t in mains
        }
    return out


def table_e3(results: pd.DataFrame) -> pd.DataFrame:
    """E3: per architecture variant, the unmerged MS score, the merged score and the drop (MS - merged)."""
    cells = main_cells(rows_of(results, "E3"))
    mains = main_metrics(results)
    recs: dict[tuple[str, str], list[str]] = {}
    for m, ms in e3_pairs(results):
        var = VARIANT_NAMES.get(m["variant"], m["variant"])
        merged = [get(cells, m["model_id"], t) for t in mains]
        if ms is not None:
            unmerged = [get(cells, ms["model_id"], t) for t in mains]
            recs[(var, "MS (unmerged)")] = [c.fmt() for c in unmerged]
        recs[(var, label(m))] = [c.fmt() for c in merged]
        if ms is not None:
            recs[(var, "drop from merging")] = [
                difference(a, b).fmt(signed=True) for a, b in zip(unmerged, merged)
            ]
    cols = [task_column(t, mt) for t, mt in mains.items()]
    df = pd.DataFrame.from_dict(recs, orient="index", columns=cols)
    df.index = pd.MultiIndex.from_tuples(list(recs) or [], names=["variant", "row"])
    if len(cols):
        df.loc[(PAPER_ROW, "drop from merging"), :] = NOT_FOUND
    return df


# ------------------------------------------------------------------------------------------- E4
def e4_points(results: pd.DataFrame, distances: pd.DataFrame) -> pd.DataFrame:
    """Tidy E4 points: each E4 merge's main score per task beside its MS model's total distances.

    One merge per MS model, the setting of :func:`~.select.primary_merge` (the recipe's method and
    knob); it is matched to the distances of the MS model with its ``K_seed`` and variant. Columns:
    ``model_id, ms_model, seed_steps, variant, method, task, score, spread, metric, distance``.
    """
    cols = [
        "model_id",
        "ms_model",
        "seed_steps",
        "variant",
        "method",
        "task",
        "score",
        "spread",
        "metric",
        "distance",
    ]
    rows = rows_of(results, "E4")
    rows = rows[(rows["kind"] == "merged") & (rows["option"] == "")]
    tot = distances[distances["scope"] == "total"]
    if len(rows) == 0 or len(tot) == 0:
        return pd.DataFrame(columns=cols)
    cells = main_cells(rows)
    recs = []
    mods = models(rows)
    for _, m in with_setting(mods, primary_merge(results, mods)).iterrows():
        d = tot[(tot["seed_steps"] == m["seed_steps"]) & (tot["variant"] == m["variant"])]
        for t in order_key(list(rows.loc[rows["model_id"] == m["model_id"], "task"]), TASKS):
            c = get(cells, m["model_id"], t)
            if not c.measured:
                continue
            for _, r in d.iterrows():
                recs.append(
                    [m["model_id"], r["model_id"], m["seed_steps"], m["variant"], m["method"], t, c.mean, c.spread,
                     r["metric"], r["value"]]
                )  # fmt: skip
    return pd.DataFrame(recs, columns=cols)


def e4_correlations(
    points: pd.DataFrame, n_bootstrap: int = 1000, rng_seed: int = 0
) -> dict[tuple[str, str, str], dict]:
    """``{(distance metric, task, "spearman" | "kendall"): rank_correlation result}``.

    Spearman's rho carries a percentile bootstrap interval (``n_bootstrap`` resamples of the points,
    seeded), Kendall's tau the Fisher z interval (standard error ``sqrt(0.437 / (n - 4))``), both 95 %.
    """
    out = {}
    for metric in order_key(list(points["metric"]), DISTANCE_METRICS):
        for task in order_key(list(points["task"]), TASKS):
            p = points[(points["metric"] == metric) & (points["task"] == task)]
            x, y = p["distance"].to_numpy(), p["score"].to_numpy()
            out[(metric, task, "spearman")] = rank_correlation(
                x, y, method="spearman", n_bootstrap=n_bootstrap, rng_seed=rng_seed
            )
            out[(metric, task, "kendall")] = rank_correlation(x, y, method="kendall", ci_method="fisher")
    return out


def fmt_corr(res: dict) -> str:
    """``-0.62 [-0.90, -0.10]`` or ``—``."""
    if res.get("rho") is None:
        return "—"
    if res.get("ci_low") is None:
        return f"{res['rho']:+.2f}"
    return f"{res['rho']:+.2f} [{res['ci_low']:+.2f}, {res['ci_high']:+.2f}]"


def table_e4(
    results: pd.DataFrame,
    distances: pd.DataFrame,
    n_bootstrap: int = 1000,
    rng_seed: int = 0,
    corr: dict | None = None,
) -> pd.DataFrame:
    """E4: rank correlation of each total distance with the merged score, per task, with 95 % intervals
    (Spearman: bootstrap, Kendall: Fisher); the paper's correlations are "not found".

    ``corr`` (the output of :func:`e4_correlations`) skips recomputing the correlations.
    """
    if corr is None:
        corr = e4_correlations(e4_points(results, distances), n_bootstrap, rng_seed)
    recs = {}
    for metric, task, method in corr:
        if method != "spearman":
            continue
        sp, kt = corr[(metric, task, "spearman")], corr[(metric, task, "kendall")]
        name = metric + (" (paper's, our reading)" if metric in PAPER_DISTANCE_METRICS else "")
        recs[(name, TASK_NAMES.get(task, task))] = {
            "n": str(sp["n"]),
            "Spearman rho [95 % bootstrap CI]": fmt_corr(sp),
            "p (Spearman)": "—" if sp["p_value"] is None else f"{sp['p_value']:.3f}",
            "Kendall tau [95 % Fisher CI]": fmt_corr(kt),
            "paper": NOT_FOUND,
        }
    df = pd.DataFrame.from_dict(recs, orient="index")
    if recs:
        df.index = pd.MultiIndex.from_tuples(list(recs), names=["distance", "task"])
    return df


# ------------------------------------------------------------------------------------------- E5
def table_e5(results: pd.DataFrame, published: pd.DataFrame | None = None) -> pd.DataFrame:
    """E5, the main results: MA baseline, MS, naive merge, recipe merge (then E5/E6 rows of ours) on
    every task and metric the paper reports (``METRIC_ORDER``: auxiliary fields such as the
    pessimistic recalls stay in the metrics files), the recipe's gain over naive merging, and the
    paper's headline gains."""
    rows = pd.concat([rows_of(results, "E5"), rows_of(results, "E6")]).drop_duplicates()
    rows = rows[rows["metric"].isin(METRIC_ORDER)]
    pick = recipe_models(results)
    cells = aggregate(rows)
    mods = models(rows).set_index("model_id")
    mains = main_metrics(results)
    tm = [(t, m) for t in order_key(list(rows["task"]), TASKS)
          for m in order_key(list(rows.loc[rows["task"] == t, "metric"]), METRIC_ORDER)]  # fmt: skip
    named = [(r, pick[k]) for k, r in (("ma", "MA baseline"), ("ms", "MS (unmerged)"),
             ("naive", "naive merge"), ("recipe", "recipe merge")) if pick[k]]  # fmt: skip
    others = [m for m in mods.index if m not in {mid for _, mid in named}]
    others = sorted(others, key=lambda m: (method_rank(mods.loc[m, "method"]), m))
    recs = {}
    for role, mid in named:
        name = label(mods.loc[mid].to_dict() | {"model_id": mid})
        recs[name if name == role else f"{role}: {name}"] = [
            cells.get((mid, t, m), Cell(math.nan)).fmt() for t, m in tm
        ]
    for mid in others:
        recs[label(mods.loc[mid].to_dict() | {"model_id": mid})] = [
            cells.get((mid, t, m), Cell(math.nan)).fmt() for t, m in tm
        ]
    if pick["recipe"] and pick["naive"]:
        recs["gain over naive merging (ours, points)"] = [
            difference(cells.get((pick["recipe"], t, m), Cell(math.nan)), cells.get((pick["naive"], t, m), Cell(math.nan))).fmt(signed=True)
            for t, m in tm
        ]  # fmt: skip
    gains = headline_gains(published)
    recs["gain over naive merging (paper)"] = [
        (f"+{gains[t]:g} (points or %)" if t in gains else NOT_FOUND) if m == mains.get(t) else NOT_FOUND
        for t, m in tm
    ]
    df = pd.DataFrame.from_dict(recs, orient="index")
    df.columns = pd.MultiIndex.from_tuples(
        [(TASK_NAMES.get(t, t), m) for t, m in tm], names=["task", "metric"]
    )
    df.index.name = "model"
    return df


# -------------------------------------------------------------------------------- method provenance
def table_methods(results: pd.DataFrame) -> pd.DataFrame:
    """Which merge form every number used (PAPER.md §4): per method, what it computes and the
    experiments and models that used it, read from the ``method`` column."""
    mods = models(results[results["kind"] == "merged"])
    recs = {}
    for method in order_key(list(mods["method"]), METHODS):
        m = mods[mods["method"] == method]
        exps = sorted({e for s in m["experiments"] for e in s.split(";") if e})
        recs[METHOD_NAMES.get(method, method)] = {
            "method column": method,
            "computes": METHOD_DESCRIPTIONS.get(method, ""),
            "experiments": ", ".join(exps),
            "models": str(len(m)),
        }
    df = pd.DataFrame.from_dict(
        recs, orient="index", columns=["method column", "computes", "experiments", "models"]
    )
    df.index.name = "method"
    return df
