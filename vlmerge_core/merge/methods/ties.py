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
(32 768 bins), the bin holding the ``k``-th largest is refined by counting the low 16 bits of its
entries, which gives the exact float32 threshold ``t32``; if several entries share that float32 value
and not all of them fit in ``k``, their float64 magnitudes break the tie exactly. The first pass
also keeps the bit patterns of the entries whose top bin lies within ``_WINDOW`` bins of the
running estimate of the threshold's bin (the quantile of the histogram so far), per tensor; the
refinement counts those, and reads again only the tensors whose window missed the final bin (a
second pass over all of them if more than ``_MAX_CANDS`` patterns would be kept). The tie-break
reads again only the tensors that may hold an entry equal to ``t32`` (the candidates tell which do
not). So the input is read about twice (the first pass and the merge) for a few MB per expert;
the kept set is the same as three full passes would select.
``trim="tensor"`` finds each tensor's threshold by the same selection (the value ``kthvalue`` gives).

**Slice by slice.** Given the thresholds, TIES is element-wise: each tensor is merged in slices of
``SLICE`` entries (``registry.by_slices``; the streaming merge runs groups side by side, one per
thread, :func:`~vlmerge_core.merge.unify.iter_unified`), and the selection passes count chunk by
chunk (``_CHUNK``), in numpy where torch would spread a small op over threads: the same values,
without whole-tensor float64 temporaries and without ops that wait on busy threads. A float64 tie
at the threshold is shared out per tensor in the vector's order up front (``_tie_quotas``), so the
groups can be merged in any order.

**float32 magnitudes.** Ranking uses ``m32 = |fl32(W^m - W0)|`` (the float32 difference, no
float64 temporary) and breaks equal ``m32`` by the float64 magnitude ``m64 = |W^m - W0|``, then by
position. Rounding to nearest is monotone, so for float32 inputs (whose float64 difference is
exact unless the two values differ by more than 2^29 in scale) this is the same order as ranking by
``m64`` alone: float32 gives the same result, and the selection equals a stable descending sort of
the float64 magnitudes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlmerge_core.merge.methods.registry import SLICE, Knob, MergeError, check_experts, f64, merge_method

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


def _threshold(m32: Tensor, density: float, mags64: Callable[[Tensor], Tensor]) -> Threshold:
    """The top-``density`` threshold of ``m32`` (radix selection, :func:`_kth_largest`); ``mags64(mask)``:
    the float64 magnitudes of the flattened entries selected by a boolean ``mask``, read only to
    break a tie. Counts are taken in numpy, on the whole tensor."""
    n = m32.numel()
    if density >= 1.0:
        return Threshold(-1.0)
    if density <= 0.0 or n == 0:
        return Threshold()
    k = max(1, int(density * n))
    flat = m32.reshape(-1)
    t32 = _kth_largest(flat, k)
    m = flat.numpy()
    need = k - int(np.count_nonzero(m > t32))
    count_eq = int(np.count_nonzero(m == t32))
    return _resolve_ties(t32, need, count_eq, lambda: mags64(flat == t32))


def _kth_largest(flat: Tensor, k: int) -> float:
    """The ``k``-th largest of the float32 magnitudes ``flat`` (``kthvalue(flat, n - k + 1)``), found
    on their bit patterns as the vector trim does: the top 16 bits, then the low 16 of that bin (in
    numpy, on the whole tensor: one thread, one count per bin set)."""
    bits = flat.contiguous().view(torch.int32).numpy()
    hist = np.bincount(bits >> 16, minlength=_TOP_BINS)
    top, rank, _ = _select_bin(torch.from_numpy(hist), k)
    low = np.bincount(bits[(bits >> 16) == top] & 0xFFFF, minlength=1 << 16)
    lo16, _, _ = _select_bin(torch.from_numpy(low), rank)
    return torch.tensor([(top << 16) | lo16], dtype=torch.int32).view(torch.float32).item()


def _mag32_flat(t: Tensor, central: Tensor | None) -> Tensor:
    """:func:`_mag32` of flat ``t`` (and ``central``), computed slice by slice into one tensor."""
    out = torch.empty(t.numel(), dtype=torch.float32)
    for a in range(0, t.numel(), SLICE):
        out[a : a + SLICE] = _mag32(t[a : a + SLICE], central[a : a + SLICE] if central is not None else None)
    return out


def tensor_threshold(m32: Tensor, tau64: Tensor, density: float) -> Threshold:
    """The top-``density`` threshold of one tensor (an exact selection on float32 magnitudes, O(n))."""
    return _threshold(m32, density, lambda eq: tau64.reshape(-1)[eq].abs())


def topk_mask(x: Tensor, density: float) -> Tensor:
    """Boolean mask of the ``max(1, int(density * numel))`` largest-magnitude entries of ``x``.

    Ties are broken by position (a stable descending sort), so the mask is deterministic.
    ``density >= 1`` keeps everything; ``density <= 0`` keeps nothing.
    """
    m32 = _mag32(x.detach(), None)
    return tensor_threshold(m32, x, density).keep(m32, x.detach()).view(x.shape)


GroupReader = Callable[..., Iterable[tuple[str, Sequence[str], Sequence[Tensor], Tensor | None]]]


def _bits(t: Tensor, central: Tensor | None) -> Tensor:
    """The float32 magnitudes ``m32`` of ``t - central`` as int32 bit patterns, flattened."""
    return _mag32(t, central).view(torch.int32).reshape(-1)


_CHUNK = 1 << 18  # entries per chunk of the selection passes (1 MiB of float32 bit patterns)


def _slices(t: Tensor, central: Tensor | None) -> Iterator[np.ndarray]:
    """The bit patterns of ``m32`` (:func:`_bits`) of flat ``t`` in chunks of :data:`_CHUNK`, in numpy
    (one thread, no wait on torch's; a 32 768-bin count per chunk costs little beside its entries).

    float32 and float64 inputs are differenced in numpy, the same IEEE operations as :func:`_mag32`
    (float64: the difference rounded once to float32); other dtypes go through :func:`_bits`."""
    ft, fc = t.detach().reshape(-1), central.detach().reshape(-1) if central is not None else None
    same = fc is None or fc.dtype == ft.dtype
    if ft.dtype not in (torch.float32, torch.float64) or not same:
        for a in range(0, ft.numel(), _CHUNK):
            yield _bits(ft[a : a + _CHUNK], fc[a : a + _CHUNK] if fc is not None else None).numpy()
        return
    x, c = ft.numpy(), fc.numpy() if fc is not None else None
    for a in range(0, x.size, _CHUNK):
        d = np.subtract(x[a : a + _CHUNK], c[a : a + _CHUNK]) if c is not None else x[a : a + _CHUNK].copy()
        d = np.abs(d, out=d).astype(np.float32, copy=False)
        yield d.view(np.int32)


def _count(values: Tensor, minlength: int) -> Tensor:
    """``torch.bincount(values, minlength=minlength)`` by numpy's (serial: no wait on threads)."""
    return torch.from_numpy(np.bincount(values.numpy(), minlength=minlength))


def _select_bin(h: Tensor, rank: int) -> tuple[int, int, int]:
    """``(bin, rank within it, entries in it)`` of the ``rank``-th largest entry counted by ``h``.

    In numpy: a few serial passes over 65 536 counts, where torch's would wait on its threads.
    """
    counts = h.numpy()
    from_top = counts[::-1].cumsum()[::-1]  # entries in this bin or above
    b = int(np.flatnonzero(from_top >= rank)[-1])
    above = int(from_top[b + 1]) if b + 1 < counts.size else 0
    return b, rank - above, int(counts[b])


_WINDOW = 4  # top bins collected either side of the running estimate of the threshold's top bin
_MAX_CANDS = 1 << 22  # bit patterns an expert may collect in the first pass (then: a whole second pass)


@dataclass
class _Scan:
    """First-pass state of one expert: top-16-bit histogram, and the bit patterns of its entries whose
    top bin lay in the window ``[lo, hi]`` around the running estimate of the threshold's bin, per
    tensor (``cands[target] = (lo, hi, patterns)``)."""

    hist: np.ndarray
    count: int = 0
    window: tuple[int, int] | None = None
    cands: dict[str, tuple[int, int, list[np.ndarray]]] | None = None
    collected: int = 0

    def estimate(self, density: float) -> int:
        """The top bin holding the ``int(density * count)``-th largest entry counted so far."""
        return _select_bin(torch.from_numpy(self.hist), max(1, int(density * self.count)))[0]

    def recentre(self, density: float) -> None:
        """Centre the window on the estimate unless the estimate is already well inside it."""
        if self.count == 0 or not 0.0 < density < 1.0:
            return
        est = self.estimate(density)
        if self.window is None or not self.window[0] + 2 <= est <= self.window[1] - 2:
            self.window = (max(0, est - _WINDOW), min(_TOP_BINS - 1, est + _WINDOW))

    def scan(self, target: str, t: Tensor, central: Tensor | None, density: float) -> None:
        """Count one tensor's top bins; keep the bit patterns of its entries in the window."""
        self.recentre(density)
        parts: list[np.ndarray] = []
        for b in _slices(t, central):
            self.hist += np.bincount(b >> 16, minlength=_TOP_BINS)
            self.count += b.size
            if self.window is None:  # the first slice of the vector: estimate from it
                self.recentre(density)
            if self.cands is not None and self.window is not None:
                lo, hi = self.window
                parts.append(b[(b - (lo << 16)).view(np.uint32) < ((hi - lo + 1) << 16)])
                self.collected += parts[-1].size
        if self.cands is not None and self.window is not None:
            self.cands[target] = (*self.window, parts)
        if self.collected > _MAX_CANDS:  # too many in the window: the second pass reads everything
            self.cands = None

    def skip(self, bits: int) -> set[str]:
        """The tensors whose window covered ``bits`` and that hold no entry with that bit pattern."""
        top = bits >> 16
        return {
            target
            for target, (lo, hi, parts) in (self.cands or {}).items()
            if lo <= top <= hi and not any(bool((p == bits).any()) for p in parts)
        }

    def low_bits(self, top: int) -> tuple[list[np.ndarray], set[str]]:
        """Low 16 bits of the collected entries in bin ``top``; the tensors whose window missed it."""
        found, covered = [], set()
        for target, (lo, hi, parts) in (self.cands or {}).items():
            if lo <= top <= hi:
                covered.add(target)
                found.extend(p[(p >> 16) == top] & 0xFFFF for p in parts)
        return found, covered


def _first_pass(read_groups: GroupReader, density: float) -> dict[str, _Scan]:
    """Pass 1: per expert, the top-16-bit histogram and the candidates near the threshold. The experts
    of a group are scanned side by side (each expert's own scans stay in the vector's order)."""
    scans: dict[str, _Scan] = {}
    with ThreadPoolExecutor(2, thread_name_prefix="ties-scan") as pool:
        for target, names, tensors, central in read_groups():
            jobs = [
                pool.submit(scans.setdefault(e, _Scan(np.zeros(_TOP_BINS, dtype=np.int64), cands={})).scan,
                            target, t, central, density)
                for e, t in zip(names, tensors)
            ]  # fmt: skip
            for job in jobs:
                job.result()
    return scans


def _top_bins(scans: dict[str, _Scan], density: float) -> dict[str, Any]:
    """Per expert: a final :class:`Threshold` (density 0 or 1), or ``(top bin, rank in it)`` to refine."""
    state: dict[str, Any] = {}
    for e, st in scans.items():
        if density >= 1.0:
            state[e] = Threshold(-1.0)
        elif density <= 0.0:
            state[e] = Threshold()
        else:
            top, rank, _ = _select_bin(torch.from_numpy(st.hist), max(1, int(density * st.count)))
            state[e] = (top, rank)
    return state


def _low_histograms(
    read_groups: GroupReader, refine: dict[str, tuple[int, int]], scans: dict[str, _Scan]
) -> dict[str, Tensor]:
    """Per expert: the histogram of the low 16 bits of the ``m32`` in its top bin.

    From the first pass's candidates where that tensor's window held the bin; the other tensors are
    read again (a second pass over those only). The entries of the top bin (a small fraction) are
    gathered and counted once per expert: a ``bincount`` of 65 536 bins per tensor would cost more.
    """
    sel: dict[str, list[np.ndarray]] = {}
    covered: dict[str, set[str]] = {}
    for e, (top, _) in refine.items():
        sel[e], covered[e] = scans[e].low_bits(top)
    for _, names, tensors, central in read_groups(lambda target, e: e in refine and target not in covered[e]):
        for e, t in zip(names, tensors):
            top = refine[e][0]
            sel[e].extend(b[(b >> 16) == top] & 0xFFFF for b in _slices(t, central))
    return {
        e: _count(torch.from_numpy(np.concatenate(parts) if parts else np.empty(0, np.int32)), 1 << 16)
        for e, parts in sel.items()
    }


def _tie_candidates(
    read_groups: GroupReader, pending: dict[str, tuple[float, int]], scans: dict[str, _Scan]
) -> dict[str, list[tuple[str, Tensor]]]:
    """Third pass: per expert, ``(target, float64 magnitudes of its entries with m32 == t32)`` of each
    tensor holding such entries, in the vector's order.

    Reads only the tensors that may hold such an entry: the first pass's candidates tell which do not.
    """
    cands: dict[str, list[tuple[str, Tensor]]] = {e: [] for e in pending}
    bits = {
        e: int(torch.tensor([t32], dtype=torch.float32).view(torch.int32)) for e, (t32, _) in pending.items()
    }
    skip = {e: scans[e].skip(bits[e]) for e in pending}
    for target, names, tensors, central in read_groups(
        lambda target, e: e in pending and target not in skip[e]
    ):
        for e, t in zip(names, tensors):
            eq = (_mag32(t, central) == pending[e][0]).reshape(-1)
            if eq.any():
                cands[e].append((target, (f64(t.reshape(-1)[eq]) - f64(central.reshape(-1)[eq])).abs()))
    return cands


def _tie_quotas(t32: float, need: int, cands: list[tuple[str, Tensor]]) -> dict[str, Threshold]:
    """Per tensor, the :class:`Threshold` of an expert whose ``need`` kept entries at ``t32`` are decided
    in float64 (``cands``: :func:`_tie_candidates`): of the entries equal to ``t64``, the first ones in
    the vector's order are kept, so each tensor gets its own share (``ties_left``) and the tensors can
    be merged in any order, or at once."""
    m64 = torch.cat([c for _, c in cands]) if cands else torch.empty(0, dtype=torch.float64)
    whole = _resolve_ties(t32, need, m64.numel(), lambda: m64)
    if whole.t64 is None:
        return {}
    left, out = whole.ties_left, {}
    for target, c in cands:
        share = min(left, int((c == whole.t64).sum()))
        out[target] = Threshold(t32, whole.t64, share)
        left -= share
    return out


def prepare_vector_trim(read_groups: GroupReader, params: dict[str, Any]) -> Callable[..., dict] | None:
    """First passes of ``trim="vector"``: one exact :class:`Threshold` per expert (module docstring).

    Args:
        read_groups: yields ``(target, expert names, expert tensors, central tensor)`` for every
            group merged from two or more experts, in merge order; called once per pass;
            ``read_groups(want)`` reads only the experts with ``want(target, expert)``.
        params: the method's parameters (``density``, ``trim``).

    Returns:
        ``per_group(target, names) -> {"thresholds": [...]}`` for the merge, or None (per tensor).
    """
    if params.get("trim", "vector") != "vector":
        return None
    density = float(params.get("density", 0.5))
    scans = _first_pass(read_groups, density)
    state = _top_bins(scans, density)
    refine = {e: s for e, s in state.items() if isinstance(s, tuple)}
    low = _low_histograms(read_groups, refine, scans) if refine else {}
    pending: dict[str, tuple[float, int]] = {}
    for e, (top, rank) in refine.items():
        lo16, need, count_eq = _select_bin(low[e], rank)
        t32 = torch.tensor([(top << 16) | lo16], dtype=torch.int32).view(torch.float32).item()
        state[e] = Threshold(t32)
        if need < count_eq:  # not every entry equal to t32 is kept: break the tie in float64
            pending[e] = (t32, need)
    per_tensor: dict[str, dict[str, Threshold]] = {}  # expert -> target -> its share of a float64 tie
    for e, cands in (_tie_candidates(read_groups, pending, scans) if pending else {}).items():
        # a tensor without a share holds no entry at t32: its Threshold(t32) keeps every m32 > t32
        per_tensor[e] = _tie_quotas(pending[e][0], pending[e][1], cands)

    def per_group(target: str, names: Sequence[str]) -> dict[str, Any]:
        """Thresholds of one group: fresh objects where a tie is shared out (their ``keep`` counts)."""
        return {"thresholds": [per_tensor.get(e, {}).get(target, state[e]) for e in names]}

    return per_group


def _tau_mags(t: Tensor, central: Tensor) -> Callable[[Tensor], Tensor]:
    """``mags64(mask)``: ``|W^m - W0|`` in float64 at the entries of flat ``t`` selected by ``mask``."""
    return lambda eq: (f64(t[eq]) - f64(central[eq])).abs()


def _ties_chunk(ts: Sequence[Tensor], c32: Tensor, thresholds: Sequence[Threshold], lam: float) -> Tensor:
    """TIES of one slice (flat expert slices ``ts``, central slice ``c32``, in order), in float64.

    Element-wise, so merging a tensor slice by slice gives its whole-tensor result bit for bit; the
    thresholds' ``keep`` is called on the slices in order (its tie state runs across them).
    """
    c = c32.to(torch.float64, copy=True)
    trimmed = []
    for t, thr in zip(ts, thresholds):
        m32 = _mag32(t, c32)
        tau = f64(t).sub_(c) if t.dtype != torch.float64 else t - c  # tau^m, float64 (exact for float32)
        trimmed.append(tau.mul_(thr.keep(m32, tau)))
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
    tau = acc.div_(count.clamp_(min=1)).mul_(sign)  # disjoint mean
    return c.add_(tau.mul_(lam))


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
    ts = [t.detach().reshape(-1) for t in experts]
    cf = central.detach().reshape(-1)
    if thresholds is None:
        thresholds = [_threshold(_mag32_flat(t, cf), density, _tau_mags(t, cf)) for t in ts]
    out = torch.empty(central.shape, dtype=experts[0].dtype)
    flat = out.view(-1)
    for a in range(0, cf.numel(), SLICE):
        b = min(a + SLICE, cf.numel())
        part = _ties_chunk([t[a:b] for t in ts], cf[a:b], thresholds, lam)
        if torch.isnan(part.sum()) and torch.isnan(part).any():  # as finish(): a NaN input, name it
            check_experts(experts, name, central)
            raise MergeError(f"{name}: merged tensor contains NaN")
        flat[a:b] = part
    return out
