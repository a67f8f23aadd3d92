"""E2, merging methods: each method's knob picked on the validation split and reported on test.

The knob sweeps run on the recipe MS run of the first replicate and the sweep tasks only; every recipe
replicate is also merged by each of the recipe's methods at its default knob on every task (C5). For
each method (and option) and task the knob is picked by the **validation** main metric, averaged over
the replicates that every knob value of the method has (on a sweep task: the sweep run; elsewhere the
method has one knob value, which needs no pick); the **test** score of the picked knob is reported over
all its replicates. Nothing is picked on test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from vlmerge_core.report.design import ROLE_NAMES, Design, e1_run_mask, role_rows
from vlmerge_core.report.e1 import fmt_n
from vlmerge_core.report.load import rows_of
from vlmerge_core.report.schema import METHOD_NAMES, NOT_FOUND
from vlmerge_core.report.select import configs, is_ours, main_metrics, method_rank, unit_values, with_units
from vlmerge_core.report.stats import MISSING, Cell, cell_of
from vlmerge_core.report.tableio import paper_row, task_column


@dataclass(frozen=True)
class Pick:
    """The knob of one method picked on validation for one task, and its scores.

    Attributes:
        method: the merge method.
        config: the picked configuration.
        knob: ``name=value`` of the picked knob ("" for a method without one).
        test: its test cell over all its replicates.
        val: its validation mean over the replicates the pick compared.
        n_knobs: how many knob values were compared (1: nothing to pick).
        curve: ``(knob value, val mean, test cell, config)`` of every knob value compared.
    """

    method: str
    config: str
    knob: str
    test: Cell
    val: float
    n_knobs: int
    curve: tuple[tuple[float, float, Cell, str], ...] = ()


def recipe_run_merges(results: pd.DataFrame, d: Design) -> pd.DataFrame:
    """Every merge of the recipe MS runs (E1 runs with ``K_seed = recipe_seed``), options included."""
    rows = pd.concat(
        [rows_of(results, "E2"), rows_of(results, "E5"), rows_of(results, "E6")]
    ).drop_duplicates()
    rows = rows[(rows["kind"] == "merged") & e1_run_mask(rows, d)]
    return with_units(rows[rows["seed_steps"].astype("Float64") == d.recipe_seed])


def method_groups(rows: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """``(method, option, configs)`` groups of a frame of merges, in method order then option."""
    mods = configs(rows)
    keys = sorted(
        {(m, o) for m, o in zip(mods["method"], mods["option"])}, key=lambda k: (method_rank(k[0]), k)
    )
    return [(m, o, mods[(mods["method"] == m) & (mods["option"] == o)]) for m, o in keys]


def pick_on_val(rows: pd.DataFrame, group: pd.DataFrame, task: str) -> Pick | None:
    """The knob of ``group`` (configs of one method and option) with the best validation score on
    ``task``; ties go to the smaller knob value. ``None`` when no config has test rows there."""
    tests = {c: unit_values(rows[rows["config"] == c], task) for c in group["config"]}
    group = group[[len(tests[c]) > 0 for c in group["config"]]]
    if len(group) == 0:
        return None
    vals = {c: unit_values(rows[rows["config"] == c], task, split="val") for c in group["config"]}
    sets = [set(v.index) for v in vals.values() if len(v)]
    common = sorted(set.intersection(*sets)) if sets else []
    score = {c: (float(v.loc[common].mean()) if common else float(v.mean()) if len(v) else math.nan)
             for c, v in vals.items()}  # fmt: skip
    group = group.assign(kv=group["knob_value"].astype(float).fillna(-math.inf))
    order = group.sort_values(["kv", "config"], kind="stable")
    best = max(
        order.itertuples(), key=lambda m: -math.inf if math.isnan(score[m.config]) else score[m.config]
    )
    curve = tuple((m.kv, score[m.config], cell_of(tests[m.config]), m.config) for m in order.itertuples())
    knob = f"{best.knob}={best.knob_value:g}" if best.knob else ""
    return Pick(
        best.method, best.config, knob, cell_of(tests[best.config]), score[best.config], len(group), curve
    )


def best_of_methods(results: pd.DataFrame, d: Design) -> dict[str, dict[str, Pick]]:
    """``{method label: {task: Pick}}`` for every method and option merged on the recipe runs."""
    rows = recipe_run_merges(results, d)
    out: dict[str, dict[str, Pick]] = {}
    for method, option, group in method_groups(rows):
        name = METHOD_NAMES.get(method, method) + (f" · {option}" if option else "")
        if is_ours(group.iloc[0].to_dict() | {"experiments": ""}):
            name += " (ours)"
        picks = {t: pick_on_val(rows, group, t) for t in main_metrics(results)}
        out[name] = {t: p for t, p in picks.items() if p is not None}
    return out


def _pick_text(p: Pick | None) -> str:
    if p is None:
        return "—"
    how = f"{p.knob}, picked on val of {p.n_knobs}" if p.n_knobs > 1 else p.knob
    return f"{fmt_n(p.test)} ({how})" if how else fmt_n(p.test)


def table_e2(results: pd.DataFrame, d: Design) -> pd.DataFrame:
    """E2: each merge method at its validation-picked knob (test score, mean ± sd (replicates)), beside
    the unmerged MS model and both MA controls."""
    mains = main_metrics(results)
    data = {
        name: [_pick_text(picks.get(t)) for t in mains] for name, picks in best_of_methods(results, d).items()
    }
    for role in ("ms_recipe", "ma_baseline", "ma_matched"):
        r = role_rows(results, d, role)
        data[ROLE_NAMES[role]] = [
            fmt_n(cell_of(unit_values(r, t))) if len(r) else fmt_n(MISSING) for t in mains
        ]
    df = pd.DataFrame.from_dict(data, orient="index", columns=[task_column(t, m) for t, m in mains.items()])
    df.index.name = "method"
    df.loc["paper: best alpha / lambda / alpha_R"] = [NOT_FOUND] * len(df.columns)
    return paper_row(df)


def default_configs(results: pd.DataFrame, d: Design) -> dict[str, str]:
    """``{method: config}`` of each of the recipe's methods at its default knob on the recipe runs: the
    knob value measured on the most (replicate, task) pairs (the sweep's other values exist for one
    replicate on the sweep tasks only), then the smaller value."""
    rows = recipe_run_merges(results, d)
    rows = rows[(rows["option"] == "") & rows["is_main"] & (rows["split"] == "test")]
    out = {}
    for method in d.recipe_methods:
        r = rows[rows["method"] == method]
        if len(r) == 0:
            continue
        cover = r.groupby("config").apply(lambda g: len(set(zip(g["unit"], g["task"]))), include_groups=False)
        kv = r.groupby("config")["knob_value"].first().astype(float).fillna(-math.inf)
        out[method] = min(cover.index, key=lambda c: (-cover[c], kv[c], c))
    return out
