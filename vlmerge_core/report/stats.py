"""Numbers with their spread: the mean over fine-tuning seeds with its standard deviation, or, for a
single run, the bootstrap interval over test examples that the pipeline measured.

Every table cell and every verdict goes through :class:`Cell`, so that no number is shown or compared
without its spread. A difference of two cells carries the combined spread ``sqrt(s_a^2 + s_b^2)``; a
difference counts as real only when it exceeds that spread (:func:`compare`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

Z95 = 1.959963984540054  # the 97.5 % normal quantile: a 95 % interval is about mean +- 1.96 sd


@dataclass(frozen=True)
class Cell:
    """A measured number: ``mean`` and its ``spread`` (a standard deviation, NaN when unknown).

    Attributes:
        mean: the mean over fine-tuning seeds (NaN when nothing was measured).
        spread: seed standard deviation (``kind == "sd"``), the sd implied by a 95 % bootstrap
            interval (``kind == "ci"``), or NaN (``kind == "none"``).
        n: number of fine-tuning seeds.
        kind: ``sd``, ``ci`` or ``none``: how the spread was obtained.
        lo: lower end of the bootstrap interval (``kind == "ci"``).
        hi: upper end of the bootstrap interval.
    """

    mean: float
    spread: float = math.nan
    n: int = 0
    kind: str = "none"
    lo: float = math.nan
    hi: float = math.nan

    @property
    def measured(self) -> bool:
        return self.n > 0 and not math.isnan(self.mean)

    def fmt(self, digits: int = 1, signed: bool = False) -> str:
        """``"31.2 ± 0.4"`` (seed sd), ``"31.2 [30.1, 32.3]"`` (bootstrap interval), ``"31.2"`` or ``"—"``."""
        if not self.measured:
            return "—"
        sign = "+" if signed else ""
        m = f"{self.mean:{sign}.{digits}f}"
        if self.kind == "sd" and not math.isnan(self.spread):
            return f"{m} ± {self.spread:.{digits}f}"
        if self.kind == "ci" and not (math.isnan(self.lo) or math.isnan(self.hi)):
            return f"{m} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"
        return m

    def __sub__(self, other: Cell) -> Cell:
        return difference(self, other)


MISSING = Cell(math.nan)


def cell_of(values: pd.Series | np.ndarray, ci_low=None, ci_high=None) -> Cell:
    """The cell of one model's runs on one metric: seed sd with >= 2 runs, else the bootstrap interval."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return MISSING
    if len(v) >= 2:
        return Cell(float(v.mean()), float(v.std(ddof=1)), len(v), "sd")
    lo = float(np.asarray(ci_low, dtype=float).ravel()[0]) if ci_low is not None else math.nan
    hi = float(np.asarray(ci_high, dtype=float).ravel()[0]) if ci_high is not None else math.nan
    if math.isnan(lo) or math.isnan(hi):
        return Cell(float(v[0]), math.nan, 1, "none")
    return Cell(float(v[0]), (hi - lo) / (2 * Z95), 1, "ci", lo, hi)


def aggregate(rows: pd.DataFrame, by: tuple[str, ...] = ("model_id", "task", "metric")) -> dict[tuple, Cell]:
    """``{key of by: Cell}`` over the fine-tuning seeds of each group of result ``rows``."""
    out: dict[tuple, Cell] = {}
    if rows is None or len(rows) == 0:
        return out
    for key, grp in rows.groupby(list(by), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        out[key] = cell_of(grp["value"], grp["ci_low"].iloc[:1], grp["ci_high"].iloc[:1])
    return out


def difference(a: Cell, b: Cell) -> Cell:
    """``a - b`` with the combined spread ``sqrt(s_a^2 + s_b^2)`` (NaN when either spread is unknown)."""
    if not (a.measured and b.measured):
        return MISSING
    spread = math.hypot(a.spread, b.spread)
    return Cell(a.mean - b.mean, spread, min(a.n, b.n), "none" if math.isnan(spread) else "sd")


def compare(diff: Cell, margin: float = 0.0) -> str:
    """Judge a difference against ``margin``: ``holds``, ``fails``, ``within noise`` or ``not run``.

    ``holds`` when ``diff - spread > margin`` (the difference clears the margin by more than its
    spread), ``fails`` when ``diff + spread < margin``, otherwise ``within noise``; a difference
    without a known spread can never hold or fail (``within noise``).
    """
    if not diff.measured:
        return "not run"
    if math.isnan(diff.spread):
        return "within noise"
    if diff.mean - diff.spread > margin:
        return "holds"
    if diff.mean + diff.spread < margin:
        return "fails"
    return "within noise"


def mean_of(cells: list[Cell]) -> Cell:
    """The mean of several cells (e.g. over tasks) with the spread of a mean of independent numbers."""
    cells = [c for c in cells if c.measured]
    if not cells:
        return MISSING
    spread = math.sqrt(sum(c.spread**2 for c in cells)) / len(cells)
    mean = sum(c.mean for c in cells) / len(cells)
    return Cell(mean, spread, min(c.n for c in cells), "none" if math.isnan(spread) else "sd")


def rank_correlation(x, y, **kwargs) -> dict:
    """:func:`vlmerge_core.analysis.correlation.rank_correlation`, imported on first use.

    The ``analysis`` package imports the torch-based distance code on import; the report reads only
    CSV files, so it defers that import to the first correlation it computes.
    """
    from vlmerge_core.analysis.correlation import rank_correlation as _rank_correlation

    return _rank_correlation(x, y, **kwargs)
