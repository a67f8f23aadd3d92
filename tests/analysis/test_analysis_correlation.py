"""Rank correlations with permutation p-values: exact up to 10 points (equal to scipy's exact test),
seeded Monte Carlo beyond, ties by average ranks, no bootstrap interval below 8 points, and the
Spearman partial correlation with within-strata permutations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from vlmerge_core.analysis.correlation import (
    N_PERMUTATIONS,
    partial_spearman,
    permutation_pvalue,
    rank_correlation,
    spearman,
)


def test_perfect_order_at_n3_is_not_significant():
    """Three ordered points: rho -1, and the exact two-sided p is 2/3! = 1/3, never the asymptotic 0."""
    r = spearman([1, 2, 3], [3, 2, 1])
    assert r["rho"] == pytest.approx(-1.0) and r["p_value"] == pytest.approx(1 / 3)
    assert r["exact"] and r["p_method"] == "exact (all 6 permutations)"
    assert r["ci_low"] is None and "fewer than 8 points" in r["ci_note"]


@pytest.mark.parametrize("n", [4, 6, 8])
def test_exact_matches_scipy(n):
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=n), rng.normal(size=n)
    ours = spearman(x, y)
    ref = stats.permutation_test((y,), lambda v: stats.spearmanr(x, v).statistic, permutation_type="pairings",
                                 n_resamples=math.factorial(n) + 1)  # fmt: skip
    assert ours["exact"] and ours["p_value"] == pytest.approx(ref.pvalue)
    assert ours["rho"] == pytest.approx(stats.spearmanr(x, y).statistic)


@pytest.mark.slow
def test_exact_at_ten_points_matches_scipy_enumeration():
    """n = 10 (the E4 grid): all 10! pairings, equal to scipy's exact test with a vectorised statistic."""
    rng = np.random.default_rng(10)
    x, noise = rng.normal(size=10), rng.normal(size=10)
    y = x + 2 * noise
    rx = stats.rankdata(x) - 5.5

    def stat(v, axis):
        v = v - v.mean(axis=axis, keepdims=True)
        return (v * rx).sum(axis=axis) / np.sqrt((v**2).sum(axis=axis) * (rx**2).sum())

    ref = stats.permutation_test((stats.rankdata(y),), stat, permutation_type="pairings", vectorized=True,
                                 n_resamples=np.inf, batch=200_000)  # fmt: skip
    ours = spearman(x, y)
    assert ours["exact"] and ours["p_method"] == "exact (all 3628800 permutations)"
    assert ours["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)


def test_monte_carlo_beyond_ten_points_is_seeded():
    rng = np.random.default_rng(0)
    x = rng.normal(size=12)
    y = x + rng.normal(size=12)
    a, b = spearman(x, y, rng_seed=3), spearman(x, y, rng_seed=3)
    assert a == b and not a["exact"] and a["p_method"] == f"Monte Carlo ({N_PERMUTATIONS} permutations)"
    assert N_PERMUTATIONS >= 20000 and a["p_value"] >= 1 / (N_PERMUTATIONS + 1)
    assert a["p_value"] == pytest.approx(stats.spearmanr(x, y).pvalue, abs=0.01)  # agrees at n = 12


def test_ties_use_average_ranks():
    x, y = [0, 0, 0, 100, 100, 100], [1.0, 2.0, 1.5, 3.0, 2.5, 4.0]
    r = spearman(x, y)
    assert r["rho"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert spearman([1, 1, 1], [1, 2, 3])["rho"] is None  # constant: no correlation


def test_bootstrap_only_from_eight_points():
    x = list(range(8))
    r = spearman(x, x[::-1], n_bootstrap=200)
    assert r["ci_low"] is not None and r["ci_high"] <= 0
    assert spearman(x[:7], x[:7], n_bootstrap=200)["ci_low"] is None


def test_partial_correlation_controls_for_strata():
    """A distance that only restates K_seed predicts nothing once K_seed is known."""
    rng = np.random.default_rng(1)
    k = np.repeat([0, 100, 200, 300], 5)
    score = k / 100 + rng.normal(0, 0.3, size=len(k))
    restated = k + rng.normal(0, 1, size=len(k))  # K_seed plus noise unrelated to the score
    plain, part = spearman(restated, score), partial_spearman(restated, score, k)
    assert plain["rho"] > 0.8 and plain["p_value"] < 0.01
    assert abs(part["rho"]) < 0.5 and part["p_value"] > 0.05 and "within strata" in part["p_method"]
    informative = score + rng.normal(0, 0.05, size=len(k))  # tracks the score within each K_seed
    assert partial_spearman(informative, score, k)["p_value"] < 0.01


def test_within_strata_permutations_keep_the_strata():
    a, b = np.arange(6.0), np.arange(6.0)
    res = permutation_pvalue(a, b, np.array([0, 0, 0, 1, 1, 1]))
    assert res["exact"] and res["n_permutations"] == 36 and res["p_value"] == pytest.approx(1 / 36)


def test_rank_correlation_keeps_its_interface():
    x, y = [1, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 1, 2]
    r = rank_correlation(x, y, n_bootstrap=200)
    assert r["rho"] == pytest.approx(-0.976190, abs=1e-5) and r["p_value"] == pytest.approx(16 / 40320)
    k = rank_correlation(x, y, method="kendall", ci_method="fisher")
    assert abs(k["rho"]) == pytest.approx(26 / 28) and k["p_value"] < 0.01
    with pytest.raises(ValueError, match="spearman"):
        rank_correlation(x, y, method="pearson")
