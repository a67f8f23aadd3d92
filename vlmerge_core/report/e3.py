"""E3, architecture: per MS variant (No sharing, Custom Attn, Custom FFN, Custom LN) and per merge
method, the unmerged MS score, the merged score and the drop from merging (MS - that row's merge,
paired by replicate); and the measured orderings of methods and variants beside the paper's."""

from __future__ import annotations

import math

import pandas as pd

from vlmerge_core.report.design import Design
from vlmerge_core.report.e1 import fmt_n
from vlmerge_core.report.e2 import best_of_methods
from vlmerge_core.report.load import rows_of
from vlmerge_core.report.schema import NOT_FOUND, VARIANT_NAMES
from vlmerge_core.report.select import (
    configs,
    label,
    main_metrics,
    method_rank,
    unit_values,
    variant_rank,
    with_units,
)
from vlmerge_core.report.stats import Cell, Paired, cell_of, difference, paired
from vlmerge_core.report.tableio import PAPER_ROW, task_column

MS_KEYS = ("seed_steps", "variant", "pt_steps", "ms_offset", "lr_mult")  # what makes an MS run's config


def _same_ms(mods: pd.DataFrame, ms: pd.Series) -> pd.Series:
    keep = pd.Series(True, index=mods.index)
    for k in MS_KEYS:
        a, b = mods[k].astype(object), ms[k]
        missing = b is None or b is pd.NA or (isinstance(b, float) and math.isnan(b))
        keep &= a.isna() if missing else (a == b).fillna(False).astype(bool)
    return keep


def e3_pairs(results: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
    """``(MS config, merged config)`` of E3: every MS configuration tagged E3 and every merge (no
    option) of that same MS run tagged E3, in variant order then method order."""
    e3 = with_units(rows_of(results, "E3"))
    mods = configs(e3)
    ms = mods[mods["kind"] == "ms"]
    ms = ms.assign(vr=ms["variant"].map(variant_rank)).sort_values(["vr", "config"], kind="stable")
    merged = mods[(mods["kind"] == "merged") & (mods["option"] == "")]
    out = []
    for _, m in ms.iterrows():
        mm = merged[_same_ms(merged, m)]
        mm = mm.assign(mr=mm["method"].map(method_rank)).sort_values(
            ["mr", "knob_value", "config"], kind="stable"
        )
        out += [(m, x) for _, x in mm.iterrows()]
    return out


def e3_tasks(results: pd.DataFrame) -> dict[str, str]:
    """``{task: main metric}`` of the tasks E3 has rows on."""
    tasks = set(rows_of(results, "E3")["task"])
    return {t: m for t, m in main_metrics(results).items() if t in tasks}


def e3_drops(
    results: pd.DataFrame,
) -> list[tuple[pd.Series, pd.Series, dict[str, tuple[Cell, Cell, Paired]]]]:
    """``(MS config, merged config, {task: (MS cell, merged cell, MS - merged paired by replicate)})``.

    Each configuration's units come from every row of ``results`` with that configuration (the recipe
    run's E3 rows have the other replicates' rows beside them), so each drop is paired over the units
    both sides have.
    """
    rows = with_units(results)
    out = []
    for ms, m in e3_pairs(results):
        a, b = rows[rows["config"] == ms["config"]], rows[rows["config"] == m["config"]]
        by_task = {}
        for t in e3_tasks(results):
            ua, ub = unit_values(a, t), unit_values(b, t)
            by_task[t] = (cell_of(ua), cell_of(ub), paired(ua, ub))
        out.append((ms, m, by_task))
    return out


def table_e3(results: pd.DataFrame) -> pd.DataFrame:
    """E3: per variant, the unmerged MS score, then per merge method its score and its own drop from
    merging (MS - that merge, paired by replicate; 95 % t-interval from 2 replicates, else ``n = 1``)."""
    mains = e3_tasks(results)
    recs: dict[tuple[str, str], list[str]] = {}
    for ms, m, by_task in e3_drops(results):
        var = VARIANT_NAMES.get(ms["variant"], ms["variant"])
        recs.setdefault((var, "MS (unmerged)"), [fmt_n(by_task[t][0]) for t in mains])
        name = label(m)
        recs[(var, name)] = [fmt_n(by_task[t][1]) for t in mains]
        recs[(var, f"drop from merging: MS - {name}")] = [by_task[t][2].fmt() for t in mains]
    cols = [task_column(t, mt) for t, mt in mains.items()]
    df = pd.DataFrame.from_dict(recs, orient="index", columns=cols)
    df.index = pd.MultiIndex.from_tuples(list(recs) or [], names=["variant", "row"])
    if len(cols):
        df.loc[(PAPER_ROW, "drop from merging"), :] = NOT_FOUND
    return df


def ordering(named: list[tuple[str, Cell]], higher_is_better: bool = True) -> str:
    """``a > b ≈ c``: names sorted by mean, ``≈`` where neighbours are within their combined spread
    (a description of the measured order; the claims test pairs over replicates, :mod:`.claims_c5`)."""
    named = sorted(
        [(n, c) for n, c in named if c.measured], key=lambda x: -x[1].mean if higher_is_better else x[1].mean
    )
    if not named:
        return "—"
    text = named[0][0]
    for (_, a), (n, b) in zip(named, named[1:]):
        dd = difference(a, b)
        within = math.isnan(dd.spread) or abs(dd.mean) <= dd.spread
        text += (" ≈ " if within else (" > " if higher_is_better else " < ")) + n
    return text


def variant_drops(results: pd.DataFrame, method: str) -> dict[str, dict[str, Paired]]:
    """``{variant name: {task: drop}}`` of the merges by ``method`` (its first knob), for orderings."""
    out: dict[str, dict[str, Paired]] = {}
    for ms, m, by_task in e3_drops(results):
        name = VARIANT_NAMES.get(ms["variant"], ms["variant"])
        if m["method"] == method and name not in out:
            out[name] = {t: v[2] for t, v in by_task.items()}
    return out


def drop_units(results: pd.DataFrame, method: str) -> dict[str, dict[str, pd.Series]]:
    """``{variant: {task: MS - merged per unit}}`` of the E3 merges by ``method`` (its first knob)."""
    rows = with_units(results)
    out: dict[str, dict[str, pd.Series]] = {}
    for ms, m in e3_pairs(results):
        if m["method"] != method or ms["variant"] in out:
            continue
        a, b = rows[rows["config"] == ms["config"]], rows[rows["config"] == m["config"]]
        out[ms["variant"]] = {t: (unit_values(a, t) - unit_values(b, t)).dropna() for t in e3_tasks(results)}
    return out


def table_orderings(results: pd.DataFrame, d: Design) -> pd.DataFrame:
    """The measured ordering of methods (E2, each at its validation-picked knob) and of variants (E3,
    drop from merging under the recipe's method) per task, beside the paper's ("not found", C5)."""
    best = best_of_methods(results, d)
    drops = variant_drops(results, d.recipe_method)
    recs = {}
    for t, metric in main_metrics(results).items():
        meth = [(n, p[t].test) for n, p in best.items() if t in p]
        var = [(n, Cell(dd[t].mean, dd[t].sd, dd[t].n, "sd" if dd[t].n > 1 else "none"))
               for n, dd in drops.items() if t in dd and dd[t].measured]  # fmt: skip
        recs[task_column(t, metric)] = {
            "methods, measured (best first)": ordering(meth),
            "methods, paper": NOT_FOUND,
            "variants, measured (smallest drop first)": ordering(var, higher_is_better=False),
            "variants, paper": NOT_FOUND,
        }
    df = pd.DataFrame.from_dict(recs, orient="index")
    df.index.name = "task"
    return df
