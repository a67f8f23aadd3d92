"""Rank correlation of a distance metric with merged performance, with a confidence interval (claim C3).

Spearman's rho or Kendall's tau (``scipy.stats``), with a percentile bootstrap interval over the
(metric, score) pairs or the Fisher z interval (standard errors: Spearman ``1.06 / sqrt(n - 3)``,
Fieller, Hartley & Pearson 1957; Kendall ``sqrt(0.437 / (n - 4))``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats


def _corr(x: np.ndarray, y: np.ndarray, method: str) -> tuple[float, float]:
    if method == "spearman":
        res = stats.spearmanr(x, y)
    elif method == "kendall":
        res = stats.kendalltau(x, y)
    else:
        raise ValueError(f"correlation method must be 'spearman' or 'kendall', got {method!r}")
    return float(res.statistic), float(res.pvalue)


def rank_correlation(
    x: Sequence[float],
    y: Sequence[float],
    *,
    method: str = "spearman",
    ci_method: str = "bootstrap",
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    rng_seed: int = 0,
) -> dict[str, Any]:
    """Rank correlation of ``x`` with ``y`` and its ``confidence`` interval.

    Returns ``{"rho", "p_value", "ci_low", "ci_high", "n", "method", "ci_method", "confidence"}``;
    the interval is ``None`` when it cannot be computed (too few points, constant data).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of the same length, got {x.shape} and {y.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = len(x)
    out: dict[str, Any] = {
        "n": n,
        "method": method,
        "ci_method": ci_method,
        "confidence": confidence,
        "rho": None,
        "p_value": None,
        "ci_low": None,
        "ci_high": None,
    }
    if n < 3:
        return out
    rho, p = _corr(x, y, method)
    if math.isnan(rho):
        return out
    out.update(rho=rho, p_value=p)
    alpha = 1 - confidence
    if ci_method == "fisher":
        se = (
            1.06 / math.sqrt(n - 3) if method == "spearman" else math.sqrt(0.437 / (n - 4)) if n > 4 else None
        )
        if se is not None and abs(rho) < 1:
            z, q = math.atanh(rho), stats.norm.ppf(1 - alpha / 2)
            out.update(ci_low=math.tanh(z - q * se), ci_high=math.tanh(z + q * se))
    elif ci_method == "bootstrap":
        rng = np.random.default_rng(rng_seed)
        boots = []
        for _ in range(n_bootstrap):
            idx = rng.integers(0, n, n)
            if np.ptp(x[idx]) == 0 or np.ptp(y[idx]) == 0:
                continue
            r, _ = _corr(x[idx], y[idx], method)
            if not math.isnan(r):
                boots.append(r)
        if boots:
            out.update(
                ci_low=float(np.quantile(boots, alpha / 2)), ci_high=float(np.quantile(boots, 1 - alpha / 2))
            )
    else:
        raise ValueError(f"ci_method must be 'bootstrap' or 'fisher', got {ci_method!r}")
    return out
