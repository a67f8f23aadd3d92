"""E6 provenance: which merge form every number used (PAPER.md §4: the official code's in-place modality
arithmetic vs the task-arithmetic formula), read from the ``method`` column."""

from __future__ import annotations

import pandas as pd

from vlmerge_core.report.schema import METHOD_DESCRIPTIONS, METHOD_NAMES, METHODS, order_key
from vlmerge_core.report.select import configs


def table_methods(results: pd.DataFrame) -> pd.DataFrame:
    """Per merge method: what it computes, the experiments that used it and how many configurations
    (each over its replicates) and merged models."""
    merged = results[results["kind"] == "merged"]
    mods = configs(merged)
    recs = {}
    for method in order_key(list(mods["method"]), METHODS):
        m = mods[mods["method"] == method]
        exps = sorted({e for s in m["experiments"] for e in s.split(";") if e})
        recs[METHOD_NAMES.get(method, method)] = {
            "method column": method,
            "computes": METHOD_DESCRIPTIONS.get(method, ""),
            "experiments": ", ".join(exps),
            "configurations": str(len(m)),
            "models": str(merged.loc[merged["method"] == method, "model_id"].nunique()),
        }
    cols = ["method column", "computes", "experiments", "configurations", "models"]
    df = pd.DataFrame.from_dict(recs, orient="index", columns=cols)
    df.index.name = "method"
    return df
