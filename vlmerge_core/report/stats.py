"""Numbers with their spread, paired differences over replicates, and Holm's correction.

The unit of replication is a pre-training run (DESIGN.md §11): a claim row's spread is the standard
deviation over its replicates (``pt_seed``), which holds pre-training and fine-tuning noise together;
rows without pre-training replicates (random init, init) spread over fine-tuning seeds.

* :class:`Cell`: one configuration on one task, the mean over its units with their sd (or, for a
  single run, the bootstrap interval over test examples that the pipeline measured). Cells are for
  showing numbers; no verdict compares two cells' spreads.
* :class:`Paired`: the difference of two configurations paired by replicate, with its t-based 95 %
  interval and the two-sided t-test of "difference = margin" (``scipy.stats.t``, ``n - 1`` degrees
  of freedom). Verdicts are built from these (:mod:`.outcomes`).
* :func:`holm`: Holm's step-down adjustment of the p-values of one family of tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from vlmerge_core.analysis.correlation import partial_spearman, spearman

Z95 = 1.959963984540054  # the 97.5 % normal quantile: a 95 % interval is about mean +- 1.96 sd
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Cell:
    """A measured number: ``mean`` and its ``spread`` (a standard deviation, NaN when unknown).

    Attributes:
        mean: the mean over units (NaN when nothing was measured).
        spread: sd over units (``kind == "sd"``), the sd implied by a 95 % bootstrap interval of a
            single run (``kind == "ci"``), or NaN (``kind == "none"``).
        n: number of units (replicates, or fine-tuning seeds for rows without replicates).
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
        """``"31.2 ± 0.4"`` (sd over units), ``"31.2 [30.1, 32.3]"`` (bootstrap interval of one run),
        ``"31.2"`` or ``"—"``."""
        if not self.measured:
            return "—"
        sign = "+" if signed else ""
        m = f"{self.mean:{sign}.{digits}f}"
        if self.kind == "sd" and not math.isnan(self.spread):
            return f"{m} ± {self.spread:.{digits}f}"
        if self.kind == "ci" and not (math.isnan(self.lo) or math.isnan(self.hi)):
            return f"{m} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"
        return m


MISSING = Cell(math.nan)


def cell_of(values: pd.Series | np.ndarray, ci_low=None, ci_high=None) -> Cell:
    """The cell of one configuration's units on one metric: sd with >= 2 units, else the run's
    bootstrap interval (``ci_low``, ``ci_high``) when it has one."""
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


def difference(a: Cell, b: Cell) -> Cell:
    """``a - b`` of two unpaired cells, for display only (spread ``sqrt(s_a^2 + s_b^2)``)."""
    if not (a.measured and b.measured):
        return MISSING
    spread = math.hypot(a.spread, b.spread)
    return Cell(a.mean - b.mean, spread, min(a.n, b.n), "none" if math.isnan(spread) else "sd")


def mean_of(cells: list[Cell]) -> Cell:
    """The mean of several cells (e.g. over tasks) with the spread of a mean of independent numbers."""
    cells = [c for c in cells if c.measured]
    if not cells:
        return MISSING
    spread = math.sqrt(sum(c.spread**2 for c in cells)) / len(cells)
    mean = sum(c.mean for c in cells) / len(cells)
    return Cell(mean, spread, min(c.n for c in cells), "none" if math.isnan(spread) else "sd")


@dataclass(frozen=True)
class Paired:
    """``a - b`` paired by unit: the mean of the per-unit differences with its t-based interval.

    Attributes:
        n: number of units measured on both sides.
        mean: mean difference (NaN when ``n == 0``).
        sd: standard deviation of the differences (NaN when ``n < 2``).
        lo: lower end of the 95 % t-interval (NaN when ``n < 2``).
        hi: upper end.
        p: two-sided p-value of the t-test of "mean difference = margin" (NaN when ``n < 2``).
        margin: the value tested against.
        units: the units paired, sorted.
    """

    n: int
    mean: float = math.nan
    sd: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    p: float = math.nan
    margin: float = 0.0
    units: tuple = ()

    @property
    def measured(self) -> bool:
        return self.n > 0

    def fmt(self, digits: int = 1) -> str:
        """``"+10.0 [+8.1, +11.9]"`` (95 % t-interval), ``"+10.0 (n = 1)"`` or ``"—"``."""
        if not self.measured:
            return "—"
        m = f"{self.mean:+.{digits}f}"
        if math.isnan(self.lo):
            return f"{m} (n = {self.n})"
        return f"{m} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"


def paired(a: pd.Series, b: pd.Series, margin: float = 0.0) -> Paired:
    """``a - b`` over the units (index) both series measured, with the 95 % t-interval and the
    two-sided t-test of "mean difference = ``margin``" (``scipy.stats.t``, ``n - 1`` df).

    Differences without spread (every unit the same) give ``p`` 0 when the mean is off the margin and
    1 on it: the t statistic is infinite or undefined there.
    """
    a, b = a.dropna(), b.dropna()
    common = sorted(set(a.index) & set(b.index))
    if not common:
        return Paired(0, margin=margin)
    d = a.loc[common].to_numpy(float) - b.loc[common].to_numpy(float)
    n, mean = len(d), float(d.mean())
    if n < 2:
        return Paired(n, mean, margin=margin, units=tuple(common))
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    q = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1))
    if se == 0:
        p = 1.0 if mean == margin else 0.0
    else:
        p = float(2 * stats.t.sf(abs(mean - margin) / se, n - 1))
    return Paired(n, mean, sd, mean - q * se, mean + q * se, p, margin, tuple(common))


def one_sample(values: pd.Series, margin: float = 0.0) -> Paired:
    """The mean of ``values`` (already differences, one per unit) as a :class:`Paired` against ``margin``."""
    return paired(values, pd.Series(0.0, index=values.index), margin)


def t_interval(values: pd.Series | np.ndarray) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the mean of ``values`` and its 95 % t-interval (NaN ends below 2 values)."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(v) - 1)) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return mean, mean - half, mean + half


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values of one family of tests (NaN stays NaN, not counted).

    Written by hand (scipy has Benjamini-Hochberg, not Holm): sort the m p-values, multiply the
    i-th smallest by ``m - i`` (i from 0), take the running maximum and cap at 1.
    """
    p = [float(x) for x in pvalues]
    idx = sorted((i for i, x in enumerate(p) if not math.isnan(x)), key=lambda i: (p[i], i))
    m = len(idx)
    out = [math.nan] * len(p)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def fmt_p(p: float | None) -> str:
    """A p-value as shown: three decimals, or two significant digits below 0.001; ``—`` if none."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "—"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def rank_correlation(x, y, **kwargs) -> dict:
    """:func:`vlmerge_core.analysis.correlation.spearman`, imported on first use.

    The ``analysis`` package imports the torch-based distance code on import; the report reads only
    CSV files, so it defers that import to the first correlation it computes.
    """

    return spearman(x, y, **kwargs)


def partial_rank_correlation(x, y, z, **kwargs) -> dict:
    """:func:`vlmerge_core.analysis.correlation.partial_spearman`, imported on first use."""

    return partial_spearman(x, y, z, **kwargs)
