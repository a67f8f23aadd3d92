"""Numbers with spread: seed sd, bootstrap interval, combined spread, and the noise-aware comparison."""

from __future__ import annotations

import math

import pytest

from vlmerge_core.report.stats import Z95, Cell, cell_of, compare, difference, mean_of


def test_cell_of_seeds_interval_and_single():
    c = cell_of([1.0, 2.0, 3.0])
    assert (c.mean, c.spread, c.n, c.kind) == (2.0, 1.0, 3, "sd") and c.fmt() == "2.0 ± 1.0"
    b = cell_of([50.0], [48.0], [52.0])
    assert b.kind == "ci" and b.spread == pytest.approx(2 / Z95) and b.fmt() == "50.0 [48.0, 52.0]"
    s = cell_of([50.0], [math.nan], [math.nan])
    assert s.kind == "none" and math.isnan(s.spread) and s.fmt() == "50.0"
    assert cell_of([]).fmt() == "—" and not cell_of([]).measured


def test_difference_and_compare():
    a, b = Cell(10.0, 0.3, 3, "sd"), Cell(8.0, 0.4, 3, "sd")
    d = difference(a, b)
    assert (
        d.mean == pytest.approx(2.0) and d.spread == pytest.approx(0.5) and d.fmt(signed=True) == "+2.0 ± 0.5"
    )
    assert compare(d) == "holds"
    assert compare(difference(b, a)) == "fails"
    assert compare(Cell(0.4, 0.5, 3, "sd")) == "within noise"  # within its spread: never holds
    assert compare(Cell(2.0, math.nan, 1, "none")) == "within noise"  # no spread: cannot hold
    assert compare(difference(a, Cell(math.nan))) == "not run"
    assert compare(Cell(-0.5, 0.2, 3, "sd"), margin=-1.0) == "holds"  # within a 1-point margin
    assert compare(Cell(-1.5, 0.2, 3, "sd"), margin=-1.0) == "fails"


def test_mean_of():
    m = mean_of([Cell(1.0, 0.3, 3, "sd"), Cell(3.0, 0.4, 3, "sd"), Cell(math.nan)])
    assert m.mean == pytest.approx(2.0) and m.spread == pytest.approx(0.25)
