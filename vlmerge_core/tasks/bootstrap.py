"""Bootstrap confidence intervals of a task's test metrics over its test examples (no retraining).

The percentile bootstrap (Efron & Tibshirani 1993, ch. 13): draw ``B`` resamples of the ``N`` units
with replacement, recompute every metric on each from the units' outcomes
(:class:`~vlmerge_core.tasks.metrics.Outcomes`), and take the 2.5 % and 97.5 % quantiles. Vectorised:
one ``[B, N]`` index matrix from a seeded generator becomes a matrix of draw counts per unit, whose
product with the per-unit numerators and denominators gives every resample's column sums at once, so
metrics that are functions of several columns (``r_mean``, mIoU) come from the same resample.
"""

from __future__ import annotations

import math

import torch

from vlmerge_core.tasks.metrics import Outcomes

# cap on the entries of one chunk of the [B, N] count matrix (float64: 128 MiB)
_CHUNK_ENTRIES = 1 << 24


def resample_counts(n: int, n_bootstrap: int, generator: torch.Generator) -> torch.Tensor:
    """``[n_bootstrap, n]`` float64 matrix: how many times each unit is drawn in each resample."""
    idx = torch.randint(n, (n_bootstrap, n), generator=generator)  # (B, N) one index matrix
    counts = torch.zeros(n_bootstrap, n, dtype=torch.float64)
    return counts.scatter_add_(1, idx, torch.ones(n_bootstrap, n, dtype=torch.float64))


def bootstrap_metrics(outcomes: Outcomes, n_bootstrap: int, rng_seed: int) -> dict[str, torch.Tensor]:
    """Every metric of ``outcomes`` on ``n_bootstrap`` resamples of its units: ``{metric: [B]}``."""
    N = outcomes.num.shape[0]
    g = torch.Generator().manual_seed(rng_seed)
    rows = max(1, _CHUNK_ENTRIES // max(N, 1))  # resamples per chunk (fixed for a given N)
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, n_bootstrap, rows):
        w = resample_counts(N, min(rows, n_bootstrap - start), g)  # (b, N)
        res = outcomes.finish(w @ outcomes.num, w @ outcomes.den)  # (b, M) sums -> {metric: (b,)}
        for k, v in res.items():
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}


def bootstrap_ci(
    outcomes: Outcomes, n_bootstrap: int, rng_seed: int, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of every metric of ``outcomes``.

    Args:
        outcomes: per-unit outcomes of one evaluation.
        n_bootstrap: resamples (``report.n_bootstrap``); 0 gives NaN intervals.
        rng_seed: seed of the resampling (``report.rng_seed``).
        level: coverage of the interval.

    Returns:
        ``{metric: (low, high)}``; NaN where not computable (no resamples, no units, or a metric
        undefined on every resample).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap level must be in (0, 1), got {level}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    names = list(outcomes.metrics())
    nan = (math.nan, math.nan)
    if n_bootstrap == 0 or outcomes.num.shape[0] == 0:
        return dict.fromkeys(names, nan)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    out: dict[str, tuple[float, float]] = {}
    for name, values in bootstrap_metrics(outcomes, n_bootstrap, rng_seed).items():
        lo, hi = torch.nanquantile(values.double(), q).tolist()  # NaN when every resample is NaN
        out[name] = (lo, hi)
    return out
