"""TIES' ``trim="vector"``: the exact top-k of each expert's modality vector, streamed.

The streaming merge never holds a whole modality vector (a ViT-B expert is 85 M entries: 340 MB in
float32, which would break the memory budget of ``benchmarks/merge.py``). The threshold is found by
the radix selection of :mod:`~vlmerge_core.merge.methods.ties_topk` over passes of the input
(:func:`prepare_vector_trim`): a first pass counts the top 16 bits of every magnitude, the bin
holding the ``k``-th largest is refined by counting the low 16 bits of its entries, which gives the
exact float32 threshold ``t32``; a tie at ``t32`` is broken by the float64 magnitudes. The first pass
also keeps the bit patterns of the entries whose top bin lies within ``_WINDOW`` bins of the
running estimate of the threshold's bin (the quantile of the histogram so far), per tensor; the
refinement counts those, and reads again only the tensors whose window missed the final bin (a
second pass over all of them if more than ``_MAX_CANDS`` patterns would be kept). The tie-break
reads again only the tensors that may hold an entry equal to ``t32`` (the candidates tell which do
not). So the input is read about twice (the first pass and the merge) for a few MB per expert;
the kept set is the same as three full passes would select.

The passes count chunk by chunk (``_CHUNK``), in numpy where torch would spread a small op over
threads, and the experts of a group are scanned side by side. A float64 tie at the threshold is
shared out per tensor in the vector's order up front (``_tie_quotas``), so the groups can be merged
in any order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlmerge_core.merge.methods.registry import f64
from vlmerge_core.merge.methods.ties_topk import (
    TOP_BINS,
    Threshold,
    mag32,
    mag32_into,
    resolve_ties,
    select_bin,
)

GroupReader = Callable[..., Iterable[tuple[str, Sequence[str], Sequence[Tensor], Tensor | None]]]


def _bits(t: Tensor, central: Tensor | None) -> Tensor:
    """The float32 magnitudes ``m32`` of ``t - central`` as int32 bit patterns, flattened."""
    return mag32(t, central).view(torch.int32).reshape(-1)


_CHUNK = 1 << 18  # entries per chunk of the selection passes (1 MiB of float32 bit patterns)


def _slices(t: Tensor, central: Tensor | None) -> Iterator[np.ndarray]:
    """The bit patterns of ``m32`` (:func:`_bits`) of flat ``t`` in chunks of :data:`_CHUNK`, in numpy
    (one thread, no wait on torch's; a 32 768-bin count per chunk costs little beside its entries).
    A yielded chunk may be overwritten by the next one: use it, or copy out of it, before asking.

    float32 and float64 inputs are differenced in numpy, the same IEEE operations as :func:`mag32`
    (float64: the difference rounded once to float32); other dtypes go through :func:`_bits`."""
    ft, fc = t.detach().reshape(-1), central.detach().reshape(-1) if central is not None else None
    same = fc is None or fc.dtype == ft.dtype
    if ft.dtype not in (torch.float32, torch.float64) or not same:
        for a in range(0, ft.numel(), _CHUNK):
            yield _bits(ft[a : a + _CHUNK], fc[a : a + _CHUNK] if fc is not None else None).numpy()
        return
    x, c = ft.numpy(), fc.numpy() if fc is not None else None
    buf = np.empty(min(_CHUNK, x.size), np.float32) if x.dtype == np.float32 else None
    for a in range(0, x.size, _CHUNK):
        xs, cs = x[a : a + _CHUNK], c[a : a + _CHUNK] if c is not None else None
        if buf is not None:  # float32: into one buffer, overwritten by the next chunk
            yield mag32_into(buf[: xs.size], xs, cs).view(np.int32)
            continue
        d = np.subtract(xs, cs) if cs is not None else xs.copy()
        yield np.abs(d, out=d).astype(np.float32).view(np.int32)


def _count(values: Tensor, minlength: int) -> Tensor:
    """``torch.bincount(values, minlength=minlength)`` by numpy's (serial: no wait on threads)."""
    return torch.from_numpy(np.bincount(values.numpy(), minlength=minlength))


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
        return select_bin(torch.from_numpy(self.hist), max(1, int(density * self.count)))[0]

    def recentre(self, density: float) -> None:
        """Centre the window on the estimate unless the estimate is already well inside it."""
        if self.count == 0 or not 0.0 < density < 1.0:
            return
        est = self.estimate(density)
        if self.window is None or not self.window[0] + 2 <= est <= self.window[1] - 2:
            self.window = (max(0, est - _WINDOW), min(TOP_BINS - 1, est + _WINDOW))

    def scan(self, target: str, t: Tensor, central: Tensor | None, density: float) -> None:
        """Count one tensor's top bins; keep the bit patterns of its entries in the window."""
        self.recentre(density)
        parts: list[np.ndarray] = []
        top = np.empty(min(_CHUNK, t.numel()), np.int64)  # bincount counts int64 without a cast copy
        for b in _slices(t, central):
            self.hist += np.bincount(np.right_shift(b, 16, out=top[: b.size]), minlength=TOP_BINS)
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
                pool.submit(scans.setdefault(e, _Scan(np.zeros(TOP_BINS, dtype=np.int64), cands={})).scan,
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
            top, rank, _ = select_bin(torch.from_numpy(st.hist), max(1, int(density * st.count)))
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
            eq = (mag32(t, central) == pending[e][0]).reshape(-1)
            if eq.any():
                cands[e].append((target, (f64(t.reshape(-1)[eq]) - f64(central.reshape(-1)[eq])).abs()))
    return cands


def _tie_quotas(t32: float, need: int, cands: list[tuple[str, Tensor]]) -> dict[str, Threshold]:
    """Per tensor, the :class:`Threshold` of an expert whose ``need`` kept entries at ``t32`` are decided
    in float64 (``cands``: :func:`_tie_candidates`): of the entries equal to ``t64``, the first ones in
    the vector's order are kept, so each tensor gets its own share (``ties_left``) and the tensors can
    be merged in any order, or at once."""
    m64 = torch.cat([c for _, c in cands]) if cands else torch.empty(0, dtype=torch.float64)
    whole = resolve_ties(t32, need, m64.numel(), lambda: m64)
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
        lo16, need, count_eq = select_bin(low[e], rank)
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
