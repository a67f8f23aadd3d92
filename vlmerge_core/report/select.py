"""Which rows are which configuration: units, configurations, labels, main metrics and cells.

A **configuration** is what a row measures apart from its replicate: kind, K_seed, variant, steps of
the run, the MS RNG seed relative to the replicate's, the learning-rate multiplier, the merge (method,
knob, option). Its **units** are its pre-training replicates (``pt_seed``); rows without pre-training
replicates (untrained, random init, init) have their fine-tuning seeds as units. A grid run (one MS
RNG seed, one replicate) is a configuration with one unit.
"""

from __future__ import annotations

import math

import pandas as pd

from vlmerge_core.report.schema import (
    KIND_NAMES,
    METHOD_NAMES,
    METHODS,
    METRIC_ORDER,
    OURS_METHODS,
    TASKS,
    VARIANT_NAMES,
    VARIANTS,
    order_key,
)
from vlmerge_core.report.stats import MISSING, Cell, cell_of

CONFIG_COLUMNS = ("kind", "seed_steps", "variant", "pt_steps", "ms_offset", "lr_mult", "method", "knob",
                  "knob_value", "option")  # fmt: skip
DESCRIPTORS = (*CONFIG_COLUMNS, "ms_seed")


def _text(v) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def key_of(rows: pd.DataFrame, columns) -> pd.Series:
    """A string key of ``columns`` per row (numbers as ``%g``, missing as empty), ``|``-joined."""
    parts = [rows[c].astype(object).map(_text) for c in columns]
    key = parts[0]
    for p in parts[1:]:
        key = key + "|" + p
    return key


def with_units(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with ``ms_offset`` (MS RNG seed - replicate), ``config`` (a key of the configuration)
    and ``unit`` (the replicate, else the fine-tuning seed) added; idempotent."""
    if "config" in rows.columns:
        return rows
    out = rows.copy()
    out["ms_offset"] = rows["ms_seed"].astype("Float64") - rows["pt_seed"].astype("Float64")
    out["config"] = key_of(out, CONFIG_COLUMNS)
    out["unit"] = rows["pt_seed"].astype("Float64").fillna(rows["ft_seed"].astype(float)).astype(int)
    return out


def configs(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: its descriptors, the union of its experiment ids, its units and
    model ids; sorted by ``config``."""
    cols = ["config", *CONFIG_COLUMNS, "experiments", "units", "model_ids"]
    if len(rows) == 0:
        return pd.DataFrame(columns=cols)
    rows = with_units(rows)
    first = rows.drop_duplicates("config").set_index("config")[list(CONFIG_COLUMNS)]
    g = rows.groupby("config")
    exps = g["experiments"].agg(lambda s: ";".join(sorted({e for v in s for e in str(v).split(";") if e})))
    units = g["unit"].agg(lambda s: tuple(sorted(set(int(u) for u in s))))
    ids = g["model_id"].agg(lambda s: tuple(sorted(set(s))))
    out = first.join(exps).join(units.rename("units")).join(ids.rename("model_ids")).reset_index()
    return out.sort_values("config", kind="stable").reset_index(drop=True)[cols]


def unit_values(rows: pd.DataFrame, task: str, metric: str | None = None, split: str = "test") -> pd.Series:
    """``{unit: value}`` of ``rows`` on ``task`` (main metric when ``metric`` is None) and ``split``,
    the mean over the rows of a unit (several fine-tuning seeds of one replicate)."""
    if len(rows) == 0:
        return pd.Series(dtype=float)
    rows = with_units(rows)
    sel = (rows["task"] == task) & (rows["split"] == split)
    sel &= rows["is_main"] if metric is None else rows["metric"] == metric
    r = rows[sel]
    return r.groupby("unit")["value"].mean().sort_index() if len(r) else pd.Series(dtype=float)


def config_cells(rows: pd.DataFrame, split: str = "test") -> dict[tuple[str, str, str], Cell]:
    """``{(config, task, metric): Cell}`` over the units of each configuration."""
    out: dict[tuple[str, str, str], Cell] = {}
    rows = with_units(rows)
    rows = rows[rows["split"] == split]
    for (c, t, m), grp in rows.groupby(["config", "task", "metric"], sort=True):
        vals = grp.groupby("unit")["value"].mean()
        out[(c, t, m)] = cell_of(vals, grp["ci_low"].iloc[:1], grp["ci_high"].iloc[:1])
    return out


def main_cells(rows: pd.DataFrame, split: str = "test") -> dict[tuple[str, str], Cell]:
    """``{(config, task): Cell}`` of each task's main metric."""
    rows = with_units(rows)
    return {(c, t): cell for (c, t, _), cell in config_cells(rows[rows["is_main"]], split).items()}


def get(cells: dict, *key) -> Cell:
    """``cells[key]`` or the missing cell."""
    return cells.get(tuple(key), MISSING)


def main_metrics(results: pd.DataFrame) -> dict[str, str]:
    """``{task: its main metric}`` from the ``is_main`` column, tasks in display order."""
    main = results[results["is_main"]]
    out: dict[str, str] = {}
    for task in order_key(list(main["task"]), TASKS):
        mets = order_key(list(main.loc[main["task"] == task, "metric"]), METRIC_ORDER)
        out[task] = mets[0]
    return out


def seed_label(k) -> str:
    """``K_seed`` as shown: ``0 (naive)`` or the number of steps."""
    if k is None or k is pd.NA or (isinstance(k, float) and math.isnan(k)):
        return ""
    return "0 (naive)" if int(k) == 0 else str(int(k))


def method_rank(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


def variant_rank(variant: str) -> int:
    return VARIANTS.index(variant) if variant in VARIANTS else len(VARIANTS)


def is_ours(model: pd.Series | dict) -> bool:
    """Rows beyond the paper (PAPER.md §7, E6): our methods, non-default options, or tagged E6 only."""
    return (
        model["method"] in OURS_METHODS
        or bool(model["option"])
        or "E6" in str(model.get("experiments", "")).split(";")
    )


def _has(v) -> bool:
    return not (v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)))


def label(model: pd.Series | dict, k_vl: int | None = None) -> str:
    """A readable name of a configuration, e.g. ``interpolation ratio=0.5 · all · K=100``; MA runs
    ``MA K=300``; what a grid run changes (MS steps when not ``k_vl``, LR, MS RNG seed) is appended."""
    kind = model["kind"]
    parts: list[str]
    if kind == "merged":
        parts = [METHOD_NAMES.get(model["method"], model["method"] or "merged")]
        if model["knob"] and _has(model["knob_value"]):
            parts[0] += f" {model['knob']}={model['knob_value']:g}"
    elif kind == "ma":
        parts = [f"MA K={int(model['pt_steps'])}" if _has(model["pt_steps"]) else "MA"]
    else:
        parts = [KIND_NAMES.get(kind, kind)]
    if kind in ("ms", "merged"):
        if model["variant"]:
            parts.append(model["variant"])
        if _has(model["seed_steps"]):
            parts.append(f"K={seed_label(model['seed_steps'])}")
        if k_vl is not None and _has(model["pt_steps"]) and int(model["pt_steps"]) != k_vl:
            parts.append(f"K_VL={int(model['pt_steps'])}")
        if _has(model.get("lr_mult")) and float(model["lr_mult"]) != 1.0:
            parts.append(f"LR x{float(model['lr_mult']):g}")
        if _has(model.get("ms_offset")) and float(model["ms_offset"]) != 0:
            parts.append(f"MS seed {float(model['ms_offset']):+g}")
    if model["option"]:
        parts.append(model["option"])
    text = " · ".join(parts)
    return f"{text} (ours)" if is_ours(model) else text


def variant_name(v: str) -> str:
    return VARIANT_NAMES.get(v, v)
