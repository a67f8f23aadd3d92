"""E1, seed pre-training: the merged score of every E1 MS run against K_seed (0 = naive), with the
unmerged MS models and both MA controls; every number is a mean ± sd over pre-training replicates."""

from __future__ import annotations

import pandas as pd

from vlmerge_core.report.design import ROLE_NAMES, Design, e1_run_mask, recipe_merge_mask, role_rows
from vlmerge_core.report.load import rows_of
from vlmerge_core.report.select import (
    configs,
    get,
    label,
    main_cells,
    main_metrics,
    method_rank,
    unit_values,
    with_units,
)
from vlmerge_core.report.stats import Cell, cell_of, paired
from vlmerge_core.report.tableio import paper_row, task_column


def fmt_n(cell: Cell) -> str:
    """``"61.0 ± 1.0 (3)"``: the cell and its number of units."""
    return f"{cell.fmt()} ({cell.n})" if cell.measured else "—"


def e1_merges(results: pd.DataFrame, d: Design) -> pd.DataFrame:
    """Rows of every E1 merge (no option) of the E1 MS runs, every K_seed and replicate."""
    rows = rows_of(results, "E1")
    rows = rows[(rows["kind"] == "merged") & (rows["option"] == "")]
    return with_units(rows[e1_run_mask(rows, d)])


def e1_recipe(results: pd.DataFrame, d: Design) -> pd.DataFrame:
    """Rows of the recipe's merge of the E1 MS runs, every K_seed (0 = naive) and replicate: C4's units."""
    rows = e1_merges(results, d)
    return rows[recipe_merge_mask(rows, d)]


def drop_from_merging(results: pd.DataFrame, d: Design, k: int, task: str):
    """MS - merged (the recipe's merge) of the E1 runs with ``K_seed = k``, paired by replicate."""
    ms = results[(results["kind"] == "ms") & e1_run_mask(results, d)]
    ms = ms[ms["seed_steps"].astype("Float64") == k]
    merged = e1_recipe(results, d)
    merged = merged[merged["seed_steps"].astype("Float64") == k]
    return paired(unit_values(ms, task), unit_values(merged, task))


def table_e1(results: pd.DataFrame, d: Design) -> pd.DataFrame:
    """E1: each E1 merge per K_seed, the unmerged MS models, both MA controls (mean ± sd (replicates)),
    and the drop from merging (MS - merged, paired by replicate, 95 % t-interval) per K_seed."""
    mains = main_metrics(results)
    rows = e1_merges(results, d)
    mods = configs(rows)
    mods = mods.assign(k=mods["seed_steps"].astype("Float64"), mr=mods["method"].map(method_rank))
    mods = mods.sort_values(["mr", "knob_value", "k", "config"], kind="stable")
    cells = main_cells(rows)
    data = {label(m): [fmt_n(get(cells, m["config"], t)) for t in mains] for _, m in mods.iterrows()}
    for role in ("ms_naive", "ms_recipe", "ma_baseline", "ma_matched"):
        r = role_rows(results, d, role)
        name = f"{ROLE_NAMES[role]} ({d.pretrain_steps[role]} pre-training steps)"
        data[name] = [fmt_n(_cell(r, t)) for t in mains]
    for k in sorted({0, *d.seed_lengths}):
        drops = [drop_from_merging(results, d, k, t) for t in mains]
        if any(p.measured for p in drops):
            data[f"drop from merging (MS - merged), K={k}"] = [p.fmt() for p in drops]
    df = pd.DataFrame.from_dict(data, orient="index", columns=[task_column(t, m) for t, m in mains.items()])
    df.index.name = "model"
    return paper_row(df)


def _cell(rows: pd.DataFrame, task: str) -> Cell:
    return cell_of(unit_values(rows, task))
