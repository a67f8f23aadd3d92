"""Which rows are which model: labels, main metrics, and the models each claim compares.

The study plan tags every result row with the experiments it feeds (``experiments``); this module
turns those rows into models (one row per ``model_id``) and picks, deterministically and without
looking at scores, the models a comparison needs (the recipe merge, the naive merge, the MS and MA
baselines).
"""

from __future__ import annotations

import math

import pandas as pd

from vlmerge_core.report.load import rows_of
from vlmerge_core.report.schema import (
    KIND_NAMES,
    METHOD_NAMES,
    METHODS,
    METRIC_ORDER,
    OURS_METHODS,
    TASKS,
    VARIANTS,
    order_key,
)
from vlmerge_core.report.stats import MISSING, Cell, aggregate

DESCRIPTORS = ("kind", "seed_steps", "variant", "method", "knob", "knob_value", "option")


def models(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per ``model_id`` with its descriptors and the union of its experiment ids, sorted."""
    if len(rows) == 0:
        return pd.DataFrame(columns=["model_id", *DESCRIPTORS, "experiments"])
    first = rows.drop_duplicates("model_id").set_index("model_id")[list(DESCRIPTORS)]
    exps = rows.groupby("model_id")["experiments"].agg(
        lambda s: ";".join(sorted({e for v in s for e in str(v).split(";") if e}))
    )
    out = first.join(exps).reset_index()
    return out.sort_values("model_id", kind="stable").reset_index(drop=True)


def seed_label(k) -> str:
    """``K_seed`` as shown: ``0 (naive)`` or the number of steps."""
    if k is None or k is pd.NA or (isinstance(k, float) and math.isnan(k)):
        return ""
    return "0 (naive)" if int(k) == 0 else str(int(k))


def is_ours(model: pd.Series | dict) -> bool:
    """Rows beyond the paper (PAPER.md §7, E6): our methods, non-default options, or tagged E6 only."""
    return (
        model["method"] in OURS_METHODS
        or bool(model["option"])
        or "E6" in str(model.get("experiments", "")).split(";")
    )


def label(model: pd.Series | dict) -> str:
    """A readable name of a model from its descriptors, e.g. ``interpolation ratio=0.5 · all · K=300``."""
    kind = model["kind"]
    k = model["seed_steps"]
    has_k = not (k is pd.NA or (isinstance(k, float) and math.isnan(k)))
    parts: list[str]
    if kind == "merged":
        parts = [METHOD_NAMES.get(model["method"], model["method"] or "merged")]
        if model["knob"] and not math.isnan(model["knob_value"]):
            parts[0] += f" {model['knob']}={model['knob_value']:g}"
    else:
        parts = [KIND_NAMES.get(kind, kind)]
    if kind in ("ms", "merged") and model["variant"]:
        parts.append(model["variant"])
    if has_k and kind in ("seed", "ms", "merged"):
        parts.append(f"K={seed_label(k)}")
    if model["option"]:
        parts.append(model["option"])
    text = " · ".join(parts)
    return f"{text} (ours)" if is_ours(model) else text


def main_metrics(results: pd.DataFrame) -> dict[str, str]:
    """``{task: its main metric}`` from the ``is_main`` column, tasks in display order."""
    main = results[results["is_main"]]
    out: dict[str, str] = {}
    for task in order_key(list(main["task"]), TASKS):
        mets = order_key(list(main.loc[main["task"] == task, "metric"]), METRIC_ORDER)
        out[task] = mets[0]
    return out


def main_cells(rows: pd.DataFrame) -> dict[tuple[str, str], Cell]:
    """``{(model_id, task): Cell}`` of each task's main metric."""
    main = rows[rows["is_main"]]
    return {(m, t): c for (m, t, _), c in aggregate(main).items()}


def get(cells: dict, *key) -> Cell:
    """``cells[key]`` or the missing cell."""
    return cells.get(tuple(key), MISSING)


def method_rank(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


def _variant_rank(variant: str) -> int:
    return VARIANTS.index(variant) if variant in VARIANTS else len(VARIANTS)


def same_knob(a: float, b: float) -> bool:
    """Two knob values are the same setting (NaN = no knob equals NaN)."""
    return (math.isnan(a) and math.isnan(b)) or a == b


def primary_merge(results: pd.DataFrame, merged: pd.DataFrame) -> tuple[str, float] | None:
    """The one merge setting ``(method, knob_value)`` an analysis across MS models uses (E3 drops, E4).

    The recipe merge's setting when ``merged`` (a :func:`models` frame) has it, else the setting applied
    to the most MS models (``K_seed`` x variant), then the method order. One setting per MS model keeps
    the points independent: the recipe's own method and knob sweep (E2) would otherwise weigh on it.
    """
    merged = merged[(merged["kind"] == "merged") & (merged["option"] == "")]
    if len(merged) == 0:
        return None
    rid = recipe_models(results)["recipe"]
    if rid:
        r = models(results[results["model_id"] == rid]).iloc[0]
        if any(
            m == r["method"] and same_knob(v, r["knob_value"])
            for m, v in zip(merged["method"], merged["knob_value"])
        ):
            return r["method"], r["knob_value"]
    ms = merged.assign(ms=list(zip(merged["seed_steps"].fillna(-1), merged["variant"])))
    count = ms.groupby(["method", ms["knob_value"].fillna(-1.0)])["ms"].nunique()
    best = max(count.items(), key=lambda x: (x[1], -method_rank(x[0][0]), -x[0][1]))[0]
    return best[0], (math.nan if best[1] == -1.0 else best[1])


def with_setting(mods: pd.DataFrame, setting: tuple[str, float] | None) -> pd.DataFrame:
    """The merged models of ``mods`` (option "") with merge ``setting``."""
    if setting is None:
        return mods.iloc[:0]
    keep = [m == setting[0] and same_knob(v, setting[1]) for m, v in zip(mods["method"], mods["knob_value"])]
    return mods[
        pd.Series(keep, index=mods.index, dtype=bool) & (mods["kind"] == "merged") & (mods["option"] == "")
    ]


def recipe_models(results: pd.DataFrame) -> dict[str, str | None]:
    """The models of the recipe comparison (E5, else E1): ``recipe``, ``naive``, ``ms``, ``ma``.

    ``recipe`` is the default-option merge of the paper's methods with a seed: the longest ``K_seed``,
    then the method order interpolation, arithmetic, RegMean, then the variant order, then the id;
    ``naive`` is the merge without seed (``K_seed = 0``) of the same method, variant and knob value
    (else the same method); ``ms`` the unmerged MS model of the recipe's seed and variant; ``ma``
    the MA baseline. Chosen from descriptors only, never from scores. Absent ones are ``None``.
    """
    out: dict[str, str | None] = {"recipe": None, "naive": None, "ms": None, "ma": None}
    if results is None or len(results) == 0:
        return out
    rows = rows_of(results, "E5")
    if len(rows) == 0:
        rows = rows_of(results, "E1")
    mods = models(rows)
    paper = mods[
        (mods["kind"] == "merged") & (mods["option"] == "") & ~mods["method"].isin(OURS_METHODS)
    ].copy()
    paper["k"] = paper["seed_steps"].fillna(-1).astype(int)
    key = lambda m: (-m["k"], method_rank(m["method"]), _variant_rank(m["variant"]), m["model_id"])  # noqa: E731
    seeded = sorted((r for _, r in paper[paper["k"] > 0].iterrows()), key=key)
    naive = sorted((r for _, r in paper[paper["k"] == 0].iterrows()), key=key)
    if seeded:
        rec = seeded[0]
        out["recipe"] = rec["model_id"]
        same = [r for r in naive if r["method"] == rec["method"] and r["variant"] == rec["variant"]]
        exact = [r for r in same if r["knob_value"] == rec["knob_value"] or (r["knob"] == rec["knob"] == "")]
        pick = exact or same
        out["naive"] = pick[0]["model_id"] if pick else None
        all_mods = models(results)
        ms = all_mods[
            (all_mods["kind"] == "ms")
            & (all_mods["seed_steps"].fillna(-1) == rec["k"])
            & (all_mods["variant"] == rec["variant"])
        ]
        out["ms"] = ms["model_id"].iloc[0] if len(ms) else None
    elif naive:
        out["naive"] = naive[0]["model_id"]
    ma = models(results)
    ma = ma[ma["kind"] == "ma_baseline"]
    out["ma"] = ma["model_id"].iloc[0] if len(ma) else None
    return out
