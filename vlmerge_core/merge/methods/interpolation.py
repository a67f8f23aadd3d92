"""Interpolation: the weighted average of the experts (Sung et al. 2023; the official ``merge_weights``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from vlmerge_core.merge.methods.registry import Knob, MergeError, by_slices, check_experts, flat, merge_method


def interpolation_weights(experts: Sequence[str], ratio: float) -> list[float]:
    """The official interpolation weights for the expert names present (PAPER.md §4).

    ``{v, l}`` -> ``[r, 1-r]``; ``{v, l, vl}`` -> ``[2/3 r, 2/3 (1-r), 1/3]``; a single expert -> ``[1]``.
    In general ``v`` and ``l`` share ``2/M`` of the mass in the ratio ``r : 1-r`` and the other
    experts split the rest evenly; without both ``v`` and ``l`` the weights are uniform.
    """
    if not 0.0 <= ratio <= 1.0 or not math.isfinite(ratio):
        raise MergeError(f"interpolation ratio must be in [0, 1], got {ratio}")
    n = len(experts)
    if n == 0:
        raise MergeError("interpolation_weights: no experts")
    if n == 1:
        return [1.0]
    if "v" not in experts or "l" not in experts:
        return [1.0 / n] * n
    share = 2.0 / n
    rest = (1.0 - share) / (n - 2) if n > 2 else 0.0
    table = {"v": share * ratio, "l": share * (1.0 - ratio)}
    return [table.get(e, rest) for e in experts]


def _weights(weights: Sequence[float] | None, n: int, name: str) -> list[float]:
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise MergeError(f"{name}: {len(weights)} weights for {n} experts")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise MergeError(f"{name}: weights must be finite and >= 0, got {weights}")
    if abs(sum(weights) - 1.0) > 1e-6:
        raise MergeError(f"{name}: weights must sum to 1, got {weights} (sum {sum(weights)})")
    return weights


RATIO = Knob(
    "ratio",
    float,
    0.5,
    "interpolation: weight of v against l (the paper's ratio r)",
    lo=0.0,
    hi=1.0,
    params_key="merge.ratios",
    sweep=True,
)


def _bind(experts: Sequence[str], params: dict[str, Any]) -> dict[str, Any]:
    """``ratio`` (or an explicit ``weights`` mapping expert -> weight) -> the function's ``weights``."""
    weights: Mapping[str, float] | None = params.get("weights")
    if weights is not None:
        ws = [float(weights[e]) for e in experts]
        return {"weights": [w / sum(ws) for w in ws]}
    return {"weights": interpolation_weights(experts, params.get("ratio", RATIO.default))}


@merge_method(
    "interpolation",
    "Sung et al. 2023, An Empirical Study of Multimodal Model Merging (arXiv 2304.14933); "
    "weight averaging as in Wortsman et al. 2022, Model soups",
    knobs=(RATIO,),
    extra_params=("weights",),
    bind=_bind,
)
def interpolation(
    experts: Sequence[Tensor], *, weights: Sequence[float] | None = None, name: str = "tensor"
) -> Tensor:
    """Weighted average ``sum_m w_m W^m`` with non-negative weights summing to 1 (float64, in order).

    The paper's ratio ``r`` becomes weights through :func:`interpolation_weights`.
    """
    check_experts(experts, name, nan=False)
    ws = _weights(weights, len(experts), name)
    ts = [flat(t) for t in experts]

    def body(s: slice) -> Tensor:
        out = torch.zeros(s.stop - s.start, dtype=torch.float64)
        for w, t in zip(ws, ts):
            out.add_(t[s], alpha=w)  # float64 accumulation, no temporary
        return out

    return by_slices(experts, name, body)
