"""What the paper reports, as digitised in ``paper/published/*.csv`` (PAPER.md §8, §9).

Every row names its ``source`` (``abstract``, ``Figure 1`` or ``official code``); a cell the paper's
available text does not give has an empty ``value`` and ``status`` "not found", never a guess.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vlmerge_core.report.load import StudyError

PUBLISHED_COLUMNS = (
    "claim",
    "experiment",
    "task",
    "metric",
    "quantity",
    "model",
    "value",
    "unit",
    "source",
    "status",
    "note",
)
SOURCES = ("abstract", "Figure 1", "official code")
STATUSES = ("found", "not found")
HEADLINE_GAIN = "gain_over_naive"


def read_published(path: str | Path) -> pd.DataFrame:
    """Read and check one published-numbers CSV; errors name the file, row and column."""
    path = Path(path)
    if not path.exists():
        raise StudyError(f"{path}: published-numbers file not found")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in PUBLISHED_COLUMNS if c not in df.columns]
    if missing:
        raise StudyError(f"{path}: missing column(s) {missing}; needs {list(PUBLISHED_COLUMNS)}")
    df = df[list(PUBLISHED_COLUMNS)].copy()
    for i, row in df.iterrows():
        where = f"{path}: data row {i + 1}"
        if row["status"] not in STATUSES:
            raise StudyError(f"{where}: status {row['status']!r} is not one of {list(STATUSES)}")
        if row["status"] == "found":
            if row["source"] not in SOURCES:
                raise StudyError(f"{where}: source {row['source']!r} is not one of {list(SOURCES)}")
            try:
                float(row["value"])
            except ValueError:
                raise StudyError(
                    f"{where}: a found cell needs a numeric value, got {row['value']!r}"
                ) from None
        elif row["value"]:
            raise StudyError(f"{where}: a 'not found' cell must have an empty value, got {row['value']!r}")
    df["value"] = pd.to_numeric(df["value"].replace("", None))
    return df


def load_published(folder: str | Path) -> pd.DataFrame:
    """Every ``*.csv`` of ``folder`` (sorted by name), checked and concatenated."""
    files = sorted(Path(folder).glob("*.csv"))
    if not files:
        raise StudyError(f"{folder}: no published-numbers CSV found")
    return pd.concat([read_published(f) for f in files], ignore_index=True)


def headline_gains(published: pd.DataFrame | None) -> dict[str, float]:
    """``{task: published gain over naive merging}`` for the tasks the paper gives (PAPER.md §8, C1)."""
    if published is None or len(published) == 0:
        return {}
    rows = published[(published["quantity"] == HEADLINE_GAIN) & (published["status"] == "found")]
    return {r["task"]: float(r["value"]) for _, r in rows.iterrows()}
