"""Weight-distance metrics against hand-computed values (vlmerge_core.analysis.distance, correlation)."""

from __future__ import annotations

import math

import pytest
import torch

from vlmerge_core.analysis.correlation import rank_correlation
from vlmerge_core.analysis.distance import layer_table, weight_distances
from vlmerge_core.merge.methods import MergeError

C = torch.tensor([1.0, 1.0, 1.0, 1.0])
TV = torch.tensor([3.0, -2.0, 0.5, 1.0])
TL = torch.tensor([-4.0, -1.0, 2.0, 0.1])


def _sd():
    ms = {
        "blocks.0.norm1.v.weight": C + TV,
        "blocks.0.norm1.l.weight": C + TL,
        "blocks.0.norm1.v.bias": torch.tensor([1.0, 0.0]),
        "blocks.0.norm1.l.bias": torch.tensor([1.0, 2.0]),
        "cls_token": torch.zeros(1, 1, 4),
    }
    central = {
        "blocks.0.norm1.weight": C,
        "blocks.0.norm1.bias": torch.zeros(2),
        "cls_token": torch.zeros(1, 1, 4),
    }
    return ms, central


def test_per_param_hand_computed():
    ms, central = _sd()
    d = weight_distances(ms, central, k=0.5, vl_start=1)
    p = d["params"]["blocks.0.norm1.weight"]
    assert p["l2"] == pytest.approx(math.sqrt(53.06))
    assert p["cosine"] == pytest.approx(1 + 8.9 / math.sqrt(14.25 * 21.01))
    assert p["ssd"] == pytest.approx(3 / 14)
    # trimmed (top 2 each): v -> [3, -2, 0, 0], l -> [-4, 0, 2, 0]
    assert p["tssd"] == pytest.approx(2 / 7)
    assert p["sign_conflict"] == pytest.approx(1 / 3)
    assert p["pairs"]["v-l"]["l2"] == p["l2"]


def test_total_flattens_all_parameters():
    ms, central = _sd()
    d = weight_distances(ms, central, k=1.0, vl_start=1)
    tot = d["total"]
    # bias: tau_v = [1, 0], tau_l = [1, 2]
    assert tot["l2"] == pytest.approx(math.sqrt(53.06 + 4))
    dot, nv, nl = -8.9 + 1, 14.25 + 1, 21.01 + 5
    assert tot["cosine"] == pytest.approx(1 - dot / math.sqrt(nv * nl))
    # ratios: weight coords 1/7, 1, 1, 1; bias coords 1, 1
    assert tot["ssd"] == pytest.approx(1 - (1 / 7 + 5) / 6)
    assert tot["tssd"] == pytest.approx(tot["ssd"])  # k = 1 keeps everything
    assert tot["numel"] == 6 and d["blocks"]["0"]["l2"] == tot["l2"]
    assert tot["l2_rms"] == pytest.approx(tot["l2"] / math.sqrt(6))  # L2 per parameter
    assert {r["metric"] for r in layer_table(d)} == {"l2", "l2_rms", "cosine", "ssd", "tssd", "sign_conflict"}


def test_three_experts_and_no_central():
    ms = {
        "blocks.0.mlp.v.fc1.bias": torch.tensor([1.0, 1.0]),
        "blocks.0.mlp.l.fc1.bias": torch.tensor([1.0, -1.0]),
        "blocks.0.mlp.vl.fc1.bias": torch.tensor([1.0, 0.0]),
    }
    central = {"blocks.0.mlp.fc1.bias": torch.zeros(2)}
    d = weight_distances(ms, central, experts=None, vl_start=0)
    p = d["total"]
    assert set(p["pairs"]) == {"v-l", "v-vl", "l-vl"}
    assert p["pairs"]["v-l"]["l2"] == pytest.approx(2.0)
    assert p["pairs"]["v-l"]["cosine"] == pytest.approx(1.0)
    assert p["ssd"] == pytest.approx(0.5)
    raw = weight_distances(ms, None, experts=None, vl_start=0)["total"]
    assert raw["ssd"] is None and raw["tssd"] is None and raw["l2"] == pytest.approx(p["l2"])


def test_distance_errors():
    ms, central = _sd()
    del central["blocks.0.norm1.bias"]
    with pytest.raises(MergeError, match="central checkpoint has no tensor blocks.0.norm1.bias"):
        weight_distances(ms, central, vl_start=1)
    with pytest.raises(MergeError, match="no expert tensor"):
        weight_distances({"cls_token": torch.zeros(2)})


def test_rank_correlation():
    x = [1, 2, 3, 4, 5, 6, 7, 8]
    y = [8, 7, 6, 5, 4, 3, 1, 2]
    r = rank_correlation(x, y, n_bootstrap=200, rng_seed=0)
    assert r["rho"] == pytest.approx(-0.976190, abs=1e-5) and r["ci_low"] <= r["rho"] <= r["ci_high"] <= 0
    assert r == rank_correlation(x, y, n_bootstrap=200, rng_seed=0)
    f = rank_correlation(x, y, ci_method="fisher")
    z, se = math.atanh(f["rho"]), 1.06 / math.sqrt(5)
    assert f["ci_low"] == pytest.approx(math.tanh(z - 1.959964 * se), abs=1e-5)
    k = rank_correlation(x, y, method="kendall", ci_method="fisher")
    assert k["rho"] == pytest.approx(26 / 28) or k["rho"] == pytest.approx(-26 / 28)
    assert rank_correlation([1, 2], [2, 1])["rho"] is None


def test_layer_plot_and_grid():
    from vlmerge_core.analysis.plots import fig_layer_distances
    from vlmerge_core.config import MergeConfig
    from vlmerge_core.merge.grid import method_grid, run_name

    ms, central = _sd()
    fig = fig_layer_distances({"a": weight_distances(ms, central, vl_start=1)})
    assert len(fig.axes) == 6
    grid = method_grid(MergeConfig(methods=["interpolation", "dare"], ratios=[0.25, 0.75]))
    assert [run_name(m, p) for m, p in grid] == [
        "interpolation_ratio0.25",
        "interpolation_ratio0.75",
        "dare_drop_rate0.5",
    ]
