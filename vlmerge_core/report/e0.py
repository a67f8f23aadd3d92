"""E0 tables: is the micro-world a valid stand-in (the five checks per task), the score of every
E0 configuration, and the zero-shot retrieval of each pre-trained model."""

from __future__ import annotations

import math

import pandas as pd

from vlmerge_core.report.load import Study, rows_of
from vlmerge_core.report.schema import TASK_NAMES, VARIANT_NAMES
from vlmerge_core.report.select import configs, get, label, main_cells, main_metrics
from vlmerge_core.report.tableio import task_column
from vlmerge_core.report.validity import CHECKS, FINETUNED_KINDS, ValidityBar, e0_validity


def _units(cell) -> str:
    return f" (n = {cell.n})" if cell.measured else ""


def table_e0(study: Study, bar: ValidityBar | None = None) -> pd.DataFrame:
    """E0, "is the micro-world a valid stand-in?": per task the numbers and the five checks."""
    val = e0_validity(study, bar)
    recs = {}
    for task, v in val.items():
        recs[TASK_NAMES.get(task, task)] = {
            "metric": v.metric,
            "chance": "—" if math.isnan(v.chance) else f"{v.chance:.1f}",
            "untrained": v.untrained.fmt(),
            "random init (ft)": v.random.fmt() + _units(v.random),
            "best pre-trained (ft)": f"{v.best_pretrained_cell.fmt()}{_units(v.best_pretrained_cell)} "
            f"{v.best_pretrained}".strip(),
            "gap": v.gap.fmt(signed=True),
            "last val gain / epoch (max over claim rows)": (
                f"{max(c.mean for c in v.last_gains.values()):.2f}" if v.last_gains else "—"
            ),
            **{f"{c} check": v.checks[c] for c in CHECKS},
            "valid stand-in": v.status,
        }
    df = pd.DataFrame.from_dict(recs, orient="index")
    df.index.name = "task"
    return df


def table_e0_scores(results: pd.DataFrame) -> pd.DataFrame:
    """E0 scores: every fine-tuned E0 configuration (random init, init, MA runs of each K) on every task,
    mean ± sd over its units (fine-tuning seeds, or pre-training replicates of the MA runs)."""
    rows = rows_of(results, "E0")
    mains = main_metrics(results)
    cells = main_cells(rows)
    mods = configs(rows)
    order = {k: i for i, k in enumerate(("untrained", *FINETUNED_KINDS))}
    mods = mods.assign(r=mods["kind"].map(order).fillna(9), k=mods["pt_steps"].astype("Float64").fillna(-1))
    mods = mods.sort_values(["r", "k", "config"], kind="stable")
    data = {}
    for _, m in mods.iterrows():
        name = label(m) + (" (units: pt_seed)" if m["kind"] == "ma" else "")
        data[name] = [get(cells, m["config"], t).fmt() + _units(get(cells, m["config"], t)) for t in mains]
    df = pd.DataFrame.from_dict(data, orient="index", columns=[task_column(t, m) for t, m in mains.items()])
    df.index.name = "model"
    return df


def table_e0_zeroshot(pretrain: pd.DataFrame) -> pd.DataFrame:
    """Zero-shot retrieval of each pre-trained model (``pretrain.csv``, last step): rsum, IR@1, TR@1."""
    last = pretrain.sort_values("steps", kind="stable").groupby("model_id", sort=True).tail(1)
    keep = pretrain.merge(last[["model_id", "steps"]], on=["model_id", "steps"])
    wide = keep.pivot_table(index="model_id", columns="metric", values="value", aggfunc="first")
    meta = last.set_index("model_id")[["kind", "seed_steps", "variant", "pt_seed", "steps"]]
    df = meta.join(wide[[c for c in ("rsum", "ir_r1", "tr_r1") if c in wide.columns]])
    out = pd.DataFrame(index=df.index)
    out["kind"] = df["kind"]
    out["K_seed"] = df["seed_steps"].map(lambda k: "" if pd.isna(k) else str(int(k)))
    out["variant"] = df["variant"].map(lambda v: VARIANT_NAMES.get(v, v))
    out["pt_seed"] = df["pt_seed"].map(lambda k: "" if pd.isna(k) else str(int(k)))
    out["steps"] = df["steps"].map(lambda k: "" if pd.isna(k) else str(int(k)))
    for c in ("rsum", "ir_r1", "tr_r1"):
        out[c] = df[c].map(lambda x: "—" if pd.isna(x) else f"{x:.1f}") if c in df else "—"
    out.index.name = "model"
    return out
