"""Rank correlation of a distance metric with merged performance, with permutation p-values (claims C3, C4).

At the small n of a study (a handful of pre-trained models) asymptotic p-values and bootstrap
intervals mean little: three perfectly ordered points give every bootstrap resample rho = +-1, and
scipy's asymptotic p-value at rho = +-1 is 0. So:

* :func:`spearman`: Spearman's rho (average ranks for ties) with a two-sided **permutation** p-value:
  every one of the n! pairings when n <= 10 (exact), else a seeded Monte Carlo test with
  :data:`N_PERMUTATIONS` random pairings, p = (hits + 1) / (N + 1). The result says which
  (``p_method``). A percentile bootstrap interval is given only from :data:`MIN_BOOTSTRAP_POINTS`
  points up; below, ``ci_note`` says why there is none.
* :func:`partial_spearman`: the Spearman partial correlation of x and y controlling for z (the Pearson
  correlation of the residuals of rank(x) and rank(y) after a least-squares line on rank(z)). Its
  p-value permutes y **within the strata of z** (the rows sharing one z value, e.g. one K_seed): that
  keeps y's dependence on z and breaks only its link with x, so it tests "x and y are independent
  given z" without assuming the linear residual model is right. Permuting residuals instead would
  rely on it. Exact when the within-strata permutations number at most 10!, else Monte Carlo.

The permutation engine is written here because ``scipy.stats.permutation_test`` has no strata; the
unstratified case matches scipy's exact test (a test checks it).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

N_PERMUTATIONS = 20000  # Monte Carlo permutations when full enumeration is too large
EXACT_MAX = math.factorial(10)  # enumerate every permutation up to this many (n <= 10 unstratified)
MIN_POINTS = 3  # no correlation below this many points
MIN_BOOTSTRAP_POINTS = 8  # no bootstrap interval below this many points
_EPS = 1e-12  # ties of the statistic with the observed one count as hits


def _ranks(v: np.ndarray) -> np.ndarray:
    return stats.rankdata(v, method="average")


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of the vector ``a`` with each row of ``b`` (shape (P, n) -> (P,))."""
    a = a - a.mean()
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a**2).sum()) * np.sqrt((b**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (b @ a) / den


@functools.lru_cache(maxsize=4)
def _all_permutations(k: int) -> np.ndarray:
    """Every permutation of ``range(k)`` as rows (``k! x k``, int8; read-only, cached)."""
    flat = np.fromiter(
        itertools.chain.from_iterable(itertools.permutations(range(k))), np.int8, math.factorial(k) * k
    )
    flat = flat.reshape(-1, k)
    flat.flags.writeable = False
    return flat


def _permutations(strata: np.ndarray, n_perm: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Index permutations that shuffle only within each stratum: all of them (exact) when they number
    at most :data:`EXACT_MAX`, else ``n_perm`` random ones. Returns ``(perms (P, n), exact)``."""
    n = len(strata)
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    total = math.prod(math.factorial(len(g)) for g in groups)
    if total <= EXACT_MAX:  # the product of every group's permutations, built as arrays
        if len(groups) == 1:
            return _all_permutations(n), True
        perms = np.arange(n, dtype=np.int8 if n < 128 else np.int64)[None, :]
        for g in groups:
            table = g[_all_permutations(len(g))]  # (len(g)!, len(g)) indices of this group
            rows = len(perms)
            perms = np.repeat(perms, len(table), axis=0)
            perms[:, g] = np.tile(table, (rows, 1))
        return perms, True
    perms = np.tile(np.arange(n), (n_perm, 1))
    for g in groups:
        perms[:, g] = rng.permuted(np.tile(g, (n_perm, 1)), axis=1)
    return perms, False


def _null_rows(a: np.ndarray, b: np.ndarray, perms: np.ndarray, chunk: int = 1 << 19) -> np.ndarray:
    """``_pearson_rows(a, b[perms])`` in chunks of rows (millions of permutations in bounded memory)."""
    return np.concatenate([_pearson_rows(a, b[perms[i : i + chunk]]) for i in range(0, len(perms), chunk)])


def permutation_pvalue(
    a: np.ndarray,
    b: np.ndarray,
    strata: np.ndarray | None = None,
    *,
    n_permutations: int = N_PERMUTATIONS,
    rng_seed: int = 0,
) -> dict[str, Any]:
    """Two-sided permutation p-value of the Pearson correlation of ``a`` and ``b``, permuting ``b``
    within ``strata`` (one stratum when ``None``).

    Returns ``{"statistic", "p_value", "exact", "n_permutations", "p_method"}``; exact: the share of
    all permutations with ``|r| >= |r_obs|``; Monte Carlo: ``(hits + 1) / (N + 1)``.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    strata = np.zeros(len(a)) if strata is None else np.asarray(strata)
    obs = float(_pearson_rows(a, b[None, :])[0])
    perms, exact = _permutations(strata, n_permutations, np.random.default_rng(rng_seed))
    null = _null_rows(a, b, perms)
    hits = int(np.sum(np.abs(null) >= abs(obs) - _EPS))
    n_p = len(perms)
    p = hits / n_p if exact else (hits + 1) / (n_p + 1)
    within = "" if len(np.unique(strata)) == 1 else " within strata"
    how = f"exact (all {n_p} permutations{within})" if exact else f"Monte Carlo ({n_p} permutations{within})"
    return {"statistic": obs, "p_value": float(p), "exact": exact, "n_permutations": n_p, "p_method": how}


def _empty(n: int, note: str) -> dict[str, Any]:
    return {"n": n, "rho": None, "p_value": None, "p_method": "", "exact": None, "ci_low": None,
            "ci_high": None, "ci_note": note}  # fmt: skip


def _check(*arrays: np.ndarray) -> None:
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 1:
        raise ValueError(f"inputs must be 1-D of the same length, got {[a.shape for a in arrays]}")


def _bootstrap(x: np.ndarray, y: np.ndarray, n_bootstrap: int, confidence: float, rng_seed: int):
    """Percentile bootstrap interval of Spearman's rho over resampled points (constant resamples skipped)."""
    rng = np.random.default_rng(rng_seed)
    idx = rng.integers(0, len(x), (n_bootstrap, len(x)))
    rx, ry = stats.rankdata(x[idx], axis=1), stats.rankdata(y[idx], axis=1)
    rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    den = np.sqrt((rx**2).sum(1) * (ry**2).sum(1))
    ok = den > 0
    if not ok.any():
        return None, None
    r = (rx * ry).sum(1)[ok] / den[ok]
    alpha = 1 - confidence
    return float(np.quantile(r, alpha / 2)), float(np.quantile(r, 1 - alpha / 2))


def spearman(
    x: Sequence[float],
    y: Sequence[float],
    *,
    n_permutations: int = N_PERMUTATIONS,
    n_bootstrap: int = 0,
    confidence: float = 0.95,
    rng_seed: int = 0,
) -> dict[str, Any]:
    """Spearman's rho of ``x`` and ``y`` with its two-sided permutation p-value (see the module).

    Returns ``{"n", "rho", "p_value", "p_method", "exact", "ci_low", "ci_high", "ci_note"}``; ``rho``
    is ``None`` below :data:`MIN_POINTS` points or when x or y is constant. The bootstrap interval
    (``n_bootstrap`` resamples) is ``None`` below :data:`MIN_BOOTSTRAP_POINTS` points.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    _check(x, y)
    n = len(x)
    if n < MIN_POINTS:
        return _empty(n, f"fewer than {MIN_POINTS} points")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return _empty(n, "constant data")
    res = permutation_pvalue(_ranks(x), _ranks(y), n_permutations=n_permutations, rng_seed=rng_seed)
    out = {"n": n, "rho": res["statistic"], "p_value": res["p_value"], "p_method": res["p_method"],
           "exact": res["exact"], "ci_low": None, "ci_high": None, "ci_note": ""}  # fmt: skip
    if n < MIN_BOOTSTRAP_POINTS:
        out["ci_note"] = f"no bootstrap interval on fewer than {MIN_BOOTSTRAP_POINTS} points"
    elif n_bootstrap > 0:
        out["ci_low"], out["ci_high"] = _bootstrap(x, y, n_bootstrap, confidence, rng_seed)
    else:
        out["ci_note"] = "no bootstrap requested"
    return out


def partial_spearman(
    x: Sequence[float],
    y: Sequence[float],
    z: Sequence[float],
    *,
    n_permutations: int = N_PERMUTATIONS,
    rng_seed: int = 0,
) -> dict[str, Any]:
    """Spearman partial correlation of ``x`` and ``y`` controlling for ``z``, with the p-value of a
    permutation of ``y`` within the strata of equal ``z`` (see the module).

    Returns ``{"n", "rho", "p_value", "p_method", "exact", "strata"}``; ``rho`` is ``None`` below
    :data:`MIN_POINTS` + 1 points or when a residual is constant.
    """
    x, y, z = (np.asarray(v, dtype=float) for v in (x, y, z))
    _check(x, y, z)
    n = len(x)
    out = {"n": n, "rho": None, "p_value": None, "p_method": "", "exact": None,
           "strata": int(len(np.unique(z)))}  # fmt: skip
    if n < MIN_POINTS + 1:
        return out
    rx, ry, rz = _ranks(x), _ranks(y), _ranks(z)
    design = np.column_stack([np.ones(n), rz])

    def resid(r: np.ndarray) -> np.ndarray:
        coef, *_ = np.linalg.lstsq(design, r, rcond=None)
        return r - design @ coef

    ex, ey = resid(rx), resid(ry)
    if np.allclose(ex, 0) or np.allclose(ey, 0):
        return out
    # permuting y within strata of z leaves the fit on rank(z) unchanged (rank(z) is constant in a
    # stratum), so the permuted residuals are the residuals permuted
    res = permutation_pvalue(ex, ey, z, n_permutations=n_permutations, rng_seed=rng_seed)
    out.update(rho=res["statistic"], p_value=res["p_value"], p_method=res["p_method"], exact=res["exact"])
    return out


def rank_correlation(
    x: Sequence[float],
    y: Sequence[float],
    *,
    method: str = "spearman",
    ci_method: str = "bootstrap",
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    rng_seed: int = 0,
    n_permutations: int = N_PERMUTATIONS,
) -> dict[str, Any]:
    """Spearman's rho or Kendall's tau of ``x`` with ``y``, a permutation p-value and an interval.

    The p-value is a permutation test (never scipy's asymptotic one): exact up to 10 points for
    Spearman (every one of the n! pairings), up to 8 for Kendall (scipy's exact test), else Monte Carlo. The
    interval (percentile bootstrap, or Fisher z with standard errors ``1.06 / sqrt(n - 3)`` for
    Spearman, Fieller, Hartley & Pearson 1957, and ``sqrt(0.437 / (n - 4))`` for Kendall) is ``None``
    below :data:`MIN_BOOTSTRAP_POINTS` points. Returns ``{"rho", "p_value", "p_method", "ci_low",
    "ci_high", "ci_note", "n", "method", "ci_method", "confidence"}``.
    """
    if method not in ("spearman", "kendall"):
        raise ValueError(f"correlation method must be 'spearman' or 'kendall', got {method!r}")
    if ci_method not in ("bootstrap", "fisher"):
        raise ValueError(f"ci_method must be 'bootstrap' or 'fisher', got {ci_method!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    _check(xa, ya)
    boot = n_bootstrap if (method == "spearman" and ci_method == "bootstrap") else 0
    out = spearman(xa, ya, n_permutations=n_permutations, n_bootstrap=boot, confidence=confidence,
                   rng_seed=rng_seed)  # fmt: skip
    out.update(method=method, ci_method=ci_method, confidence=confidence)
    if out["rho"] is None:
        return out
    n = len(xa)
    if method == "kendall":
        tau = float(stats.kendalltau(xa, ya).statistic)
        res = stats.permutation_test(
            (ya,), lambda v: stats.kendalltau(xa, v).statistic, permutation_type="pairings",
            n_resamples=max(n_permutations, math.factorial(8)) if n <= 8 else n_permutations,
            random_state=np.random.default_rng(rng_seed),
        )  # fmt: skip
        out.update(rho=tau, p_value=float(res.pvalue), ci_low=None, ci_high=None)
    rho = out["rho"]
    if ci_method == "fisher" and n >= MIN_BOOTSTRAP_POINTS and abs(rho) < 1:
        se = 1.06 / math.sqrt(n - 3) if method == "spearman" else math.sqrt(0.437 / (n - 4))
        z, q = math.atanh(rho), stats.norm.ppf(0.5 + confidence / 2)
        out.update(ci_low=math.tanh(z - q * se), ci_high=math.tanh(z + q * se), ci_note="")
    return out
