"""TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint mean.

Each modality vector ``tau^m = W^m - W0`` keeps its ``k = max(1, int(density * n))`` entries of
largest magnitude (ties broken by position: the first ones win, as a stable descending sort), the
sign of ``sum_m trimmed tau^m`` is elected per entry, the entries that agree with it are averaged,
and the merged weight is ``W0 + lam * tau``.

**What is trimmed** (``trim``). Yadav et al.'s reference code flattens each task vector over the
whole model and keeps its top ``k``: ``trim="vector"`` (the default) does that for the modality
vector of each expert, i.e. over all the block parameters of that expert that are merged together
with another expert (a lone expert passes through and is not part of it). ``trim="tensor"``
trims each parameter tensor on its own, as mergekit does.

**Exact top-k without holding the vector.** The streaming merge never holds a whole modality vector
(a ViT-B expert is 85 M entries: 340 MB in float32, which would break the memory budget of
``benchmarks/merge.py``). The threshold is found by a radix selection over the float32 bit
patterns of the magnitudes, which for non-negative floats are ordered as integers
(:func:`prepare_vector_trim`): a first pass counts the top 16 bits of every magnitude
(32 768 bins), the bin holding the ``k``-th largest is refined by a second pass counting its low 16
bits, which gives the exact float32 threshold; only if several entries share that float32 value
and not all of them fit in ``k`` does a third pass read their float64 magnitudes to break the tie
exactly. Each selection pass reads the expert and central tensors again before the merge pass
(three reads of the input instead of one, rarely four) for a memory cost of a few hundred kB.

**float32 magnitudes.** Ranking uses ``m32 = |fl32(W^m - W0)|`` (the float32 difference, no
float64 temporary) and breaks equal ``m32`` by the float64 magnitude ``m64 = |W^m - W0|``, then by
position. Rounding to nearest is monotone, so for float32 inputs (whose float64 difference is
exact unless the two values differ by more than 2^29 in scale) this is the same order as ranking by
``m64`` alone: float32 gives the same result, and the selection equals a stable descending sort of
the float64 magnitudes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vlmerge_core.merge.methods.registry import Knob, MergeError, check_experts, f64, finish, merge_method

TRIMS = ("vector", "tensor")
_TOP_BINS = 1 << 15  # top 16 bits of a non-negative float32 (sign bit 0)


def _mag32(t: Tensor, central: Tensor | None) -> Tensor:
    """``|t - central|`` as float32, computed in float32 (float64 inputs: in float64, then rounded)."""
    if t.dtype == torch.float64:
        d = t - central if central is not None else t
        return d.abs().to(torch.float32)
    d = t.to(torch.float32)
    d = d - central.to(torch.float32) if central is not None else d.clone()
    return d.abs_()


@dataclass
class Threshold:
    """The exact top-k threshold of one (possibly streamed) vector of magnitudes.

    Kept: ``m32 > t32``; of ``m32 == t32``: ``m64 > t64``, then the first ``ties_left`` with
    ``m64 == t64`` in order (``t64 = None``: every ``m32 == t32`` is kept). ``keep`` is stateful over
    calls in the vector's order.
    """

    t32: float = float("inf")  # float32 threshold; inf keeps nothing, -1 keeps everything
    t64: float | None = None
    ties_left: int = 0

    def keep(self, m32: Tensor, tau64: Tensor) -> Tensor:
        """Boolean mask of the kept entries of one tensor (``m32``, float64 ``tau64`` same shape)."""
        if self.t32 < 0:
            return torch.ones_like(m32, dtype=torch.bool)
        if self.t64 is None:
            return m32 >= self.t32
        mask = m32 > self.t32
        cand = torch.nonzero((m32 == self.t32).reshape(-1)).reshape(-1)
        if cand.numel():
            m64 = tau64.reshape(-1)[cand].abs()
            flat = mask.view(-1)
            flat[cand[m64 > self.t64]] = True
            eq = cand[m64 == self.t64][: self.ties_left]
            flat[eq] = True
            self.ties_left -= eq.numel()
        return mask


def _resolve_ties(t32: float, need: int, count_eq: int, candidates: Callable[[], Tensor]) -> Threshold:
    """Threshold with ``need`` of the ``count_eq`` entries at ``t32`` to keep (float64 ``candidates``)."""
    if need >= count_eq:
        return Threshold(t32)
    m64 = candidates()  # float64 magnitudes of the entries with m32 == t32, in order
    t64 = float(torch.kthvalue(m64, m64.numel() - need + 1).values)
    above = int((m64 > t64).sum())
    return Threshold(t32, t64, need - above)


def tensor_threshold(m32: Tensor, tau64: Tensor, density: float) -> Threshold:
    """The top-``density`` threshold of one tensor (``kthvalue`` on float32 magnitudes, O(n))."""
    n = m32.numel()
    if density >= 1.0:
        return Threshold(-1.0)
    if density <= 0.0 or n == 0:
        return Threshold()
    k = max(1, int(density * n))
    flat = m32.reshape(-1)
    t32 = float(torch.kthvalue(flat, n - k + 1).values)
    eq = flat == t32
    need = k - int((flat > t32).sum())
    return _resolve_ties(t32, need, int(eq.sum()), lambda: tau64.reshape(-1)[eq].abs())


def topk_mask(x: Tensor, density: float) -> Tensor:
    """Boolean mask of the ``max(1, int(density * numel))`` largest-magnitude entries of ``x``.

    Ties are broken by position (a stable descending sort), so the mask is deterministic.
    ``density >= 1`` keeps everything; ``density <= 0`` keeps nothing.
    """
    m32 = _mag32(x.detach(), None)
    return tensor_threshold(m32, x, density).keep(m32, x.detach()).view(x.shape)


GroupReader = Callable[[], Iterable[tuple[str, Sequence[str], Sequence[Tensor], Tensor | None]]]


def prepare_vector_trim(read_groups: GroupReader, params: dict[str, Any]) -> Callable[..., dict] | None:
    """First passes of ``trim="vector"``: one exact :class:`Threshold` per expert (module docstring).

    Args:
        read_groups: yields ``(target, expert names, expert tensors, central tensor)`` for every
            group merged from two or more experts, in merge order; called once per pass.
        params: the method's parameters (``density``, ``trim``).

    Returns:
        ``per_group(target, names) -> {"thresholds": [...]}`` for the merge, or None (per tensor).
    """
    density = float(params.get("density", 0.5))
    if params.get("trim", "vector") != "vector":
        return None
    hist: dict[str, Tensor] = {}
    count: dict[str, int] = {}
    for _, names, tensors, central in read_groups():
        for e, t in zip(names, tensors):
            bins = _mag32(t, central).view(torch.int32).reshape(-1) >> 16
            h = torch.bincount(bins, minlength=_TOP_BINS)
            hist[e] = hist[e] + h if e in hist else h
            count[e] = count.get(e, 0) + t.numel()
    state: dict[str, Any] = {}  # expert -> Threshold, or (top bin, rank in it) while refining
    for e, h in hist.items():
        if density >= 1.0:
            state[e] = Threshold(-1.0)
            continue
        if density <= 0.0:
            state[e] = Threshold()
            continue
        k = max(1, int(density * count[e]))
        from_top = h.flip(0).cumsum(0).flip(0)  # entries in this bin or above
        top = int(torch.nonzero(from_top >= k).max())
        state[e] = (top, k - int(from_top[top + 1]) if top + 1 < _TOP_BINS else k, k)
    low: dict[str, Tensor] = {}
    refine = {e: s for e, s in state.items() if isinstance(s, tuple)}
    if refine:
        for _, names, tensors, central in read_groups():
            for e, t in zip(names, tensors):
                if e in refine:
                    bits = _mag32(t, central).view(torch.int32).reshape(-1)
                    sel = bits[(bits >> 16) == refine[e][0]] & 0xFFFF
                    h = torch.bincount(sel, minlength=1 << 16)
                    low[e] = low[e] + h if e in low else h
    pending: dict[str, tuple[float, int]] = {}
    for e, (top, rank, _k) in refine.items():
        from_top = low[e].flip(0).cumsum(0).flip(0)
        lo16 = int(torch.nonzero(from_top >= rank).max())
        t32 = torch.tensor([(top << 16) | lo16], dtype=torch.int32).view(torch.float32).item()
        count_eq = int(low[e][lo16])
        need = rank - (int(from_top[lo16 + 1]) if lo16 + 1 < (1 << 16) else 0)
        if need >= count_eq:
            state[e] = Threshold(t32)
        else:
            pending[e] = (t32, need)
            state[e] = None
    if pending:
        cands: dict[str, list[Tensor]] = {e: [] for e in pending}
        for _, names, tensors, central in read_groups():
            for e, t in zip(names, tensors):
                if e in pending:
                    eq = (_mag32(t, central) == pending[e][0]).reshape(-1)
                    if eq.any():
                        cands[e].append((f64(t.reshape(-1)[eq]) - f64(central.reshape(-1)[eq])).abs())
        for e, (t32, need) in pending.items():
            allc = torch.cat(cands[e])
            state[e] = _resolve_ties(t32, need, allc.numel(), lambda a=allc: a)

    def per_group(target: str, names: Sequence[str]) -> dict[str, Any]:
        return {"thresholds": [state[e] for e in names]}

    return per_group


@merge_method(
    "ties",
    "Yadav et al. 2023, TIES-Merging: Resolving Interference When Merging Models (NeurIPS)",
    needs_central=True,
    knobs=(
        Knob(
            "density",
            float,
            0.5,
            "ties: fraction of each modality vector kept",
            lo=0.0,
            hi=1.0,
            params_key="merge.ties_densities",
            sweep=True,
        ),
        Knob(
            "lam",
            float,
            1.0,
            "scale of the merged modality vector",
            lo=0.0,
            params_key="merge.ties_lambda",
            flag="--lambda",
        ),
        Knob(
            "trim",
            str,
            "vector",
            "ties: top-k over each expert's whole modality vector (Yadav et al.) or per tensor (mergekit)",
            choices=TRIMS,
            params_key="merge.ties_trim",
            flag="--ties-trim",
        ),
    ),
    extra_params=("thresholds",),
    prepare=prepare_vector_trim,
)
def ties(
    experts: Sequence[Tensor],
    *,
    central: Tensor,
    density: float = 0.5,
    lam: float = 1.0,
    trim: str = "vector",
    thresholds: Sequence[Threshold] | None = None,
    name: str = "tensor",
) -> Tensor:
    """TIES on one parameter: trim each ``tau^m``, elect the sign, disjoint mean, ``W0 + lam * tau``.

    ``thresholds`` (one per expert) come from :func:`prepare_vector_trim` in a state-dict merge;
    without them the tensors given are the whole vectors (so ``trim`` makes no difference here).
    """
    check_experts(experts, name, central, nan=False)  # NaN/inf: refused by the state-dict layer
    if not 0.0 <= density <= 1.0:
        raise MergeError(f"{name}: TIES density must be in [0, 1], got {density}")
    if trim not in TRIMS:
        raise MergeError(f"{name}: TIES trim must be one of {list(TRIMS)}, got {trim!r}")
    if thresholds is not None and len(thresholds) != len(experts):
        raise MergeError(f"{name}: {len(thresholds)} TIES thresholds for {len(experts)} experts")
    c = f64(central)
    trimmed = []
    for i, t in enumerate(experts):
        m32 = _mag32(t, central)
        tau = f64(t).sub_(c) if t.dtype != torch.float64 else t - c  # tau^m, float64 (exact for float32)
        thr = thresholds[i] if thresholds is not None else tensor_threshold(m32, tau, density)
        trimmed.append(tau.mul_(thr.keep(m32, tau)))
        del m32
    sign = trimmed[0].clone()
    for tr in trimmed[1:]:
        sign.add_(tr)
    sign.sign_()  # elected sign of the total mass
    acc = torch.zeros_like(c)
    count = torch.zeros(c.shape, dtype=torch.int32)
    for tr in trimmed:  # agreeing entries: tau * sign > 0; their sum is sign * sum |tau|
        agree = tr.mul_(sign)
        count += agree > 0
        acc += agree.clamp_(min=0)
    del trimmed
    tau = acc.div_(count.clamp_(min=1)).mul_(sign)  # disjoint mean
    return finish(c.add_(tau.mul_(lam)), experts, name, central)
