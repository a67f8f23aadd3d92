"""Numbers with spread, paired differences over replicates (t-interval), Holm's correction."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy import stats

from vlmerge_core.report.stats import Z95, Cell, cell_of, fmt_p, holm, mean_of, one_sample, paired, t_interval


def test_cell_of_units_interval_and_single():
    c = cell_of([1.0, 2.0, 3.0])
    assert (c.mean, c.spread, c.n, c.kind) == (2.0, 1.0, 3, "sd") and c.fmt() == "2.0 ± 1.0"
    b = cell_of([50.0], [48.0], [52.0])
    assert b.kind == "ci" and b.spread == pytest.approx(2 / Z95) and b.fmt() == "50.0 [48.0, 52.0]"
    s = cell_of([50.0], [math.nan], [math.nan])
    assert s.kind == "none" and math.isnan(s.spread) and s.fmt() == "50.0"
    assert cell_of([]).fmt() == "—" and not cell_of([]).measured


def test_paired_difference_t_interval():
    a = pd.Series({0: 60.0, 1: 61.5, 2: 62.0, 5: 99.0})  # unit 5 has no partner: left out
    b = pd.Series({0: 50.0, 1: 52.0, 2: 51.0})
    p = paired(a, b)
    d = [10.0, 9.5, 11.0]
    half = stats.t.ppf(0.975, 2) * pd.Series(d).std() / math.sqrt(3)
    assert p.n == 3 and p.units == (0, 1, 2) and p.mean == pytest.approx(sum(d) / 3)
    assert (p.lo, p.hi) == pytest.approx((p.mean - half, p.mean + half))
    assert p.p == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)
    assert p.fmt() == "+10.2 [+8.3, +12.1]"
    m = paired(a, b, margin=12.0)  # against a margin
    assert m.p == pytest.approx(stats.ttest_1samp(d, 12.0).pvalue)
    assert paired(a.iloc[:1], b).fmt() == "+10.0 (n = 1)" and math.isnan(paired(a.iloc[:1], b).p)
    assert paired(pd.Series(dtype=float), b).fmt() == "—"
    same = paired(pd.Series({0: 2.0, 1: 3.0}), pd.Series({0: 1.0, 1: 2.0}))  # no spread
    assert same.p == 0.0 and one_sample(pd.Series({0: 1.0, 1: 1.0}), margin=1.0).p == 1.0


def test_holm():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, math.nan, 0.01]) == pytest.approx([0.5, math.nan, 0.02], nan_ok=True)
    assert (
        holm([0.9, 0.8]) == [1.0, 1.0] and holm([0.2, 0.01]) == pytest.approx([0.2, 0.02]) and holm([]) == []
    )


def test_t_interval_and_fmt_p():
    mean, lo, hi = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and hi - mean == pytest.approx(stats.t.ppf(0.975, 2) / math.sqrt(3))
    assert math.isnan(t_interval([1.0])[1]) and math.isnan(t_interval([])[0])
    assert fmt_p(0.0123) == "0.012" and fmt_p(5e-5) == "5.0e-05" and fmt_p(None) == "—"


def test_mean_of():
    m = mean_of([Cell(1.0, 0.3, 3, "sd"), Cell(3.0, 0.4, 3, "sd"), Cell(math.nan)])
    assert m.mean == pytest.approx(2.0) and m.spread == pytest.approx(0.25)
