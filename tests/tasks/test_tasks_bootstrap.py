"""Bootstrap confidence intervals: the vectorised resampling against a plain loop over resamples."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from vlmerge_core.tasks.bootstrap import bootstrap_ci
from vlmerge_core.tasks.metrics import (
    accuracy_outcomes,
    retrieval_outcomes,
    retrieval_recalls,
    segmentation_counts,
    segmentation_outcomes,
)


def _loop_ci(n: int, n_bootstrap: int, seed: int, metric) -> tuple[float, float]:
    """The same resamples (one [B, N] index matrix from the seeded generator), each metric recomputed
    from the resampled examples themselves, then the 2.5 / 97.5 percentiles."""
    idx = torch.randint(n, (n_bootstrap, n), generator=torch.Generator().manual_seed(seed))
    values = np.array([metric(row) for row in idx])
    lo, hi = np.nanpercentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def test_accuracy_ci_matches_loop_and_brackets_estimate():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (200,), generator=g)
    logits = torch.randn(200, 3, generator=g)
    ci = bootstrap_ci(accuracy_outcomes(logits, labels, "top1"), 300, rng_seed=7)
    correct = (logits.argmax(1) == labels).double()
    want = _loop_ci(200, 300, 7, lambda r: 100 * correct[r].mean().item())
    assert ci["top1"] == pytest.approx(want, abs=1e-9)
    point = 100 * correct.mean().item()
    assert ci["top1"][0] < point < ci["top1"][1]


def test_retrieval_ci_resamples_images_with_their_captions():
    """r_mean and both directions come from the same resample of test images (each with its captions)."""
    g = torch.Generator().manual_seed(1)
    n_img, per = 40, 2
    t2i = torch.arange(n_img).repeat_interleave(per)
    sim = torch.randn(n_img, n_img * per, generator=g) + 1.5 * (t2i[None, :] == torch.arange(n_img)[:, None])
    ci = bootstrap_ci(retrieval_outcomes(sim, t2i), 200, rng_seed=3)

    def r_mean(rows: torch.Tensor) -> float:
        # the resampled images keep the whole gallery; queries: each drawn image and its captions
        tr_rank = []
        ir_hits = {k: [] for k in (1, 5, 10)}
        for i in rows.tolist():
            order = torch.sort(sim[i], descending=True, stable=True).indices
            tr_rank.append(min((order == t).nonzero().item() for t in (t2i == i).nonzero().flatten()))
            for t in (t2i == i).nonzero().flatten().tolist():
                col = torch.sort(sim[:, t], descending=True, stable=True).indices
                pos = (col == i).nonzero().item()
                for k in ir_hits:
                    ir_hits[k].append(pos < k)
        tr = [100 * np.mean([r < k for r in tr_rank]) for k in (1, 5, 10)]
        ir = [100 * np.mean(ir_hits[k]) for k in (1, 5, 10)]
        return (np.mean(tr) + np.mean(ir)) / 2

    want = _loop_ci(n_img, 200, 3, r_mean)
    assert ci["r_mean"] == pytest.approx(want, abs=1e-9)
    point = retrieval_recalls(sim, t2i)["r_mean"]
    assert ci["r_mean"][0] <= point <= ci["r_mean"][1]
    assert {"ir_r1", "tr_r10", "r1_sum", "ir_r1_pessimistic"} <= set(ci)


def test_miou_ci_recomputes_miou_from_resampled_images():
    g = torch.Generator().manual_seed(2)
    target = torch.randint(0, 4, (30, 6, 6), generator=g)
    target[:, 0, 0] = 255  # an ignored pixel per image
    pred = torch.where(torch.rand(30, 6, 6, generator=g) < 0.6, target, torch.randint(0, 4, (30, 6, 6)))
    pred[:, 0, 0] = 0
    inter, union = segmentation_counts(pred, target, 4)
    ci = bootstrap_ci(segmentation_outcomes(inter, union), 100, rng_seed=0)

    def miou(rows: torch.Tensor) -> float:
        t, p = target[rows], pred[rows]
        valid = t != 255
        ious = []
        for c in range(4):
            i = ((t == c) & (p == c) & valid).sum().item()
            u = (((t == c) | (p == c)) & valid).sum().item()
            if u:
                ious.append(i / u)
        return 100 * float(np.mean(ious))

    assert ci["miou"] == pytest.approx(_loop_ci(30, 100, 0, miou), abs=1e-9)


def test_ci_deterministic_nan_without_resamples_and_fast():
    g = torch.Generator().manual_seed(0)
    out = accuracy_outcomes(torch.randn(50, 2, generator=g), torch.randint(0, 2, (50,), generator=g))
    assert bootstrap_ci(out, 100, 5) == bootstrap_ci(out, 100, 5)
    assert bootstrap_ci(out, 100, 5) != bootstrap_ci(out, 100, 6)
    assert all(math.isnan(v) for v in bootstrap_ci(out, 0, 5)["accuracy"])
    # micro sizes: 500 test images x 2 captions, 1000 resamples -> well under a second
    n_img = 500
    t2i = torch.arange(n_img).repeat_interleave(2)
    outcomes = retrieval_outcomes(torch.randn(n_img, 2 * n_img, generator=g), t2i)
    t0 = time.perf_counter()
    bootstrap_ci(outcomes, 1000, 0)
    assert time.perf_counter() - t0 < 2.0  # loose: the machine is shared
