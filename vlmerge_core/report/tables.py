"""Tables of E0 (testbed validity), E1 (seed length) and E2 (merging methods), and the orderings.

Each function takes the collected metrics frames and returns a DataFrame of formatted cells (every
number with its spread); :mod:`vlmerge_core.report.tableio` writes them. The last row of each table
shows what the paper published for the same cells ("not found" where PAPER.md has nothing).
"""

from __future__ import annotations

import math

import pandas as pd

from vlmerge_core.report.load import Study, rows_of
from vlmerge_core.report.schema import METHOD_NAMES, NOT_FOUND, TASK_NAMES, VARIANT_NAMES
from vlmerge_core.report.select import get, is_ours, label, main_cells, main_metrics, method_rank, models
from vlmerge_core.report.stats import MISSING, Cell, difference
from vlmerge_core.report.validity import CHECKS, FINETUNED_KINDS, ValidityBar, e0_validity

PAPER_ROW = "paper (published)"


def task_column(task: str, metric: str) -> str:
    """A column header naming the task and its main metric, e.g. ``VQA (vqa_score)``."""
    return f"{TASK_NAMES.get(task, task)} ({metric})"


def _grid(rows: list[tuple[str, dict[str, Cell]]], mains: dict[str, str], name: str) -> pd.DataFrame:
    cols = [task_column(t, m) for t, m in mains.items()]
    data = {lab: [cells.get(t, MISSING).fmt() for t in mains] for lab, cells in rows}
    df = pd.DataFrame.from_dict(data, orient="index", columns=cols) if data else pd.DataFrame(columns=cols)
    df.index.name = name
    return df


def _paper_row(df: pd.DataFrame, text: str = NOT_FOUND) -> pd.DataFrame:
    out = df.copy()
    out.loc[PAPER_ROW] = [text] * len(out.columns)
    return out


# ------------------------------------------------------------------------------------------- E0
def table_e0(
    results: pd.DataFrame, chance: pd.DataFrame | None, bar: ValidityBar | None = None
) -> pd.DataFrame:
    """E0, "is the micro-world a valid stand-in?": per task the numbers and the four checks of issue 11."""
    val = e0_validity(Study(results=results, chance=chance), bar)
    recs = {}
    for task, v in val.items():
        recs[TASK_NAMES.get(task, task)] = {
            "metric": v.metric,
            "chance": "—" if math.isnan(v.chance) else f"{v.chance:.1f}",
            "untrained": v.untrained.fmt(),
            "random init (ft)": v.random.fmt(),
            "best pre-trained (ft)": f"{v.best_pretrained_cell.fmt()} {v.best_pretrained}".strip(),
            "gap": v.gap.fmt(signed=True),
            "last val gain / epoch": v.last_gain.fmt(2),
            **{f"{c} check": v.checks[c] for c in CHECKS},
            "valid stand-in": v.status,
        }
    df = pd.DataFrame.from_dict(recs, orient="index")
    df.index.name = "task"
    return df


def table_e0_scores(results: pd.DataFrame) -> pd.DataFrame:
    """E0 scores: every fine-tuned E0 model (random init, init, seeds, MA baseline) on every task."""
    rows = rows_of(results, "E0")
    mains = main_metrics(results)
    cells = main_cells(rows)
    mods = models(rows)
    order = {k: i for i, k in enumerate(("untrained", *FINETUNED_KINDS))}
    mods = mods.assign(r=mods["kind"].map(order).fillna(9), k=mods["seed_steps"].fillna(-1).astype(int))
    mods = mods.sort_values(["r", "k", "model_id"], kind="stable")
    grid = [(label(m), {t: get(cells, m["model_id"], t) for t in mains}) for _, m in mods.iterrows()]
    return _grid(grid, mains, "model")


def table_e0_zeroshot(pretrain: pd.DataFrame) -> pd.DataFrame:
    """Zero-shot retrieval of each pre-trained model (``pretrain.csv``, last step): rsum, IR@1, TR@1."""
    last = pretrain.sort_values("steps", kind="stable").groupby("model_id", sort=True).tail(1)
    keep = pretrain.merge(last[["model_id", "steps"]], on=["model_id", "steps"])
    wide = keep.pivot_table(index="model_id", columns="metric", values="value", aggfunc="first")
    meta = last.set_index("model_id")[["kind", "seed_steps", "variant", "steps"]]
    df = meta.join(wide[[c for c in ("rsum", "ir_r1", "tr_r1") if c in wide.columns]])
    out = pd.DataFrame(index=df.index)
    out["kind"] = df["kind"]
    out["K_seed"] = df["seed_steps"].map(lambda k: "" if pd.isna(k) else str(int(k)))
    out["variant"] = df["variant"].map(lambda v: VARIANT_NAMES.get(v, v))
    out["steps"] = df["steps"].map(lambda k: "" if pd.isna(k) else str(int(k)))
    for c in ("rsum", "ir_r1", "tr_r1"):
        out[c] = df[c].map(lambda x: "—" if pd.isna(x) else f"{x:.1f}") if c in df else "—"
    out.index.name = "model"
    return out


# ------------------------------------------------------------------------------------------- E1
def table_e1(results: pd.DataFrame) -> pd.DataFrame:
    """E1: merged score vs K_seed for each E1 merge method, with the MS and MA baselines."""
    rows = rows_of(results, "E1")
    mains = main_metrics(results)
    cells = main_cells(rows)
    mods = models(rows)
    mods = mods.assign(k=mods["seed_steps"].fillna(-1).astype(int), mr=mods["method"].map(method_rank))
    kind_rank = {"merged": 0, "ms": 1, "ma_baseline": 2}
    mods = mods.assign(r=mods["kind"].map(kind_rank).fillna(3))
    mods = mods.sort_values(["r", "mr", "knob_value", "option", "k", "model_id"], kind="stable")
    grid = [(label(m), {t: get(cells, m["model_id"], t) for t in mains}) for _, m in mods.iterrows()]
    return _paper_row(_grid(grid, mains, "model"))


# ------------------------------------------------------------------------------------------- E2
def best_of_methods(results: pd.DataFrame) -> dict[str, dict[str, tuple[Cell, str]]]:
    """``{method label: {task: (best cell, the knob setting)}}`` over E2 and E6 merges.

    The best knob value is picked per task on the reported score, as "best of each method"
    implies; this is an optimistic (oracle) choice for every method alike.
    """
    rows = pd.concat([rows_of(results, "E2"), rows_of(results, "E6")]).drop_duplicates()
    merged = rows[rows["kind"] == "merged"]
    cells = main_cells(merged)
    mods = models(merged)
    mods = mods.assign(mr=mods["method"].map(method_rank)).sort_values(["mr", "option", "model_id"])
    mains = main_metrics(results)
    groups = [
        g for _, g in mods.groupby(["method", "option", "variant", mods["seed_steps"].fillna(-1)], sort=False)
    ]
    short = [_short(g.iloc[0].to_dict()) for g in groups]
    out: dict[str, dict[str, tuple[Cell, str]]] = {}
    for grp, name in zip(groups, short):
        if short.count(name) > 1:  # the same method at several seeds or variants: say which
            name = label({**grp.iloc[0].to_dict(), "knob": "", "knob_value": math.nan})
        best: dict[str, tuple[Cell, str]] = {}
        for t in mains:
            cand = [(get(cells, m["model_id"], t), m) for _, m in grp.iterrows()]
            cand = [(c, m) for c, m in cand if c.measured]
            if cand:
                c, m = max(cand, key=lambda x: (x[0].mean, -x[1]["knob_value"] if x[1]["knob"] else 0))
                best[t] = (c, f"{m['knob']}={m['knob_value']:g}" if m["knob"] else "")
        out[name] = best
    return out


def _short(model: dict) -> str:
    """A merge's method name (and option), ``(ours)`` beyond the paper."""
    text = METHOD_NAMES.get(model["method"], model["method"]) + (
        f" · {model['option']}" if model["option"] else ""
    )
    return f"{text} (ours)" if is_ours(model) else text


def table_e2(results: pd.DataFrame) -> pd.DataFrame:
    """E2: the best of each merge method (its best knob per task) next to the MS and MA baselines."""
    mains = main_metrics(results)
    best = best_of_methods(results)
    data = {
        name: [f"{cells[t][0].fmt()} ({cells[t][1]})" if t in cells else "—" for t in mains]
        for name, cells in best.items()
    }
    rows = rows_of(results, "E2")
    cells = main_cells(rows)
    for _, m in models(rows[rows["kind"].isin(["ms", "ma_baseline"])]).iterrows():
        data[label(m)] = [get(cells, m["model_id"], t).fmt() for t in mains]
    df = pd.DataFrame.from_dict(data, orient="index", columns=[task_column(t, m) for t, m in mains.items()])
    df.index.name = "method"
    df.loc["paper: best alpha / lambda / alpha_R"] = [NOT_FOUND] * len(df.columns)
    return _paper_row(df)


def ordering(named: list[tuple[str, Cell]], higher_is_better: bool = True) -> str:
    """``a > b ≈ c``: names sorted by mean, ``≈`` where a neighbour is within the combined spread."""
    named = sorted(
        [(n, c) for n, c in named if c.measured], key=lambda x: -x[1].mean if higher_is_better else x[1].mean
    )
    if not named:
        return "—"
    text = named[0][0]
    for (_, a), (n, b) in zip(named, named[1:]):
        d = difference(a, b)
        within = math.isnan(d.spread) or abs(d.mean) <= d.spread
        text += (" ≈ " if within else (" > " if higher_is_better else " < ")) + n
    return text


def table_orderings(results: pd.DataFrame) -> pd.DataFrame:
    """The measured ordering of methods (E2, best of each) and of variants (E3, drop from merging)
    per task, beside the paper's ordering ("not found", PAPER.md §8 C5)."""
    from vlmerge_core.report.tables_main import e3_drops

    mains = main_metrics(results)
    best = best_of_methods(results)
    drops = e3_drops(results)
    recs = {}
    for t, metric in mains.items():
        meth = [(n, cells[t][0]) for n, cells in best.items() if t in cells]
        var = [(VARIANT_NAMES.get(v, v), d[t]) for (v, _), d in drops.items() if t in d]
        recs[task_column(t, metric)] = {
            "methods, measured (best first)": ordering(meth),
            "methods, paper": NOT_FOUND,
            "variants, measured (smallest drop first)": ordering(var, higher_is_better=False),
            "variants, paper": NOT_FOUND,
        }
    df = pd.DataFrame.from_dict(recs, orient="index")
    df.index.name = "task"
    return df
