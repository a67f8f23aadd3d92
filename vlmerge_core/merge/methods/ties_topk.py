"""TIES' exact top-k of one tensor: float32 magnitudes, a radix selection, a float64 tie-break.

**float32 magnitudes.** Ranking uses ``m32 = |fl32(W^m - W0)|`` (the float32 difference, no
float64 temporary) and breaks equal ``m32`` by the float64 magnitude ``m64 = |W^m - W0|``, then by
position. Rounding to nearest is monotone, so for float32 inputs (whose float64 difference is
exact unless the two values differ by more than 2^29 in scale) this is the same order as ranking by
``m64`` alone: float32 gives the same result, and the selection equals a stable descending sort of
the float64 magnitudes.

**Radix selection.** Non-negative float32 values are ordered as their int32 bit patterns: a count
of the top 16 bits (32 768 bins) finds the bin of the ``k``-th largest, a count of the low 16 bits
of that bin's entries the exact float32 threshold ``t32`` (:func:`kth_largest`, the value
``kthvalue`` gives, in O(n)); if several entries share ``t32`` and not all of them fit in ``k``,
their float64 magnitudes break the tie (:func:`resolve_ties`). :class:`Threshold` then tells the kept
entries. ``trim="tensor"`` uses this per tensor; the streamed ``trim="vector"`` passes
(:mod:`~vlmerge_core.merge.methods.ties_vector`) reach the same threshold without holding the vector.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from vlmerge_core.merge.methods.registry import SLICE

TOP_BINS = 1 << 15  # top 16 bits of a non-negative float32 (sign bit 0)


def mag32(t: Tensor, central: Tensor | None) -> Tensor:
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


def resolve_ties(t32: float, need: int, count_eq: int, candidates: Callable[[], Tensor]) -> Threshold:
    """Threshold with ``need`` of the ``count_eq`` entries at ``t32`` to keep (float64 ``candidates``)."""
    if need >= count_eq:
        return Threshold(t32)
    m64 = candidates()  # float64 magnitudes of the entries with m32 == t32, in order
    t64 = float(torch.kthvalue(m64, m64.numel() - need + 1).values)
    above = int((m64 > t64).sum())
    return Threshold(t32, t64, need - above)


def threshold(m32: Tensor, density: float, mags64: Callable[[Tensor], Tensor]) -> Threshold:
    """The top-``density`` threshold of ``m32`` (radix selection, :func:`kth_largest`); ``mags64(mask)``:
    the float64 magnitudes of the flattened entries selected by a boolean ``mask``, read only to
    break a tie. Counts are taken in numpy, on the whole tensor."""
    n = m32.numel()
    if density >= 1.0:
        return Threshold(-1.0)
    if density <= 0.0 or n == 0:
        return Threshold()
    flat = m32.reshape(-1)
    t32, need, count_eq = kth_largest(flat, max(1, int(density * n)))
    return resolve_ties(t32, need, count_eq, lambda: mags64(flat == t32))


def kth_largest(flat: Tensor, k: int) -> tuple[float, int, int]:
    """``(t32, need, count_eq)``: the ``k``-th largest of the float32 magnitudes ``flat``
    (``kthvalue(flat, n - k + 1)``), how many entries equal to it the top ``k`` hold, and how many
    there are; found on their bit patterns as the vector trim does: the top 16 bits, then the low 16
    of that bin (in numpy, on the whole tensor: one thread, one count per bin set; the counts come
    from the two histograms, not from two more passes)."""
    bits = flat.contiguous().view(torch.int32).numpy()
    high = np.right_shift(bits, 16, out=np.empty(bits.size, np.int64))  # bincount's own type: no cast copy
    top, rank, _ = select_bin(torch.from_numpy(np.bincount(high, minlength=TOP_BINS)), k)
    low = np.bincount(bits[high == top] & 0xFFFF, minlength=1 << 16)
    lo16, need, count_eq = select_bin(torch.from_numpy(low), rank)
    t32 = torch.tensor([(top << 16) | lo16], dtype=torch.int32).view(torch.float32).item()
    return t32, need, count_eq


def mag32_into(out: np.ndarray, t: np.ndarray, central: np.ndarray | None) -> np.ndarray:
    """:func:`mag32` of float32 arrays, in numpy into float32 ``out`` (the same float32 difference,
    then ``abs``); returns ``out``."""
    with np.errstate(over="ignore"):  # float32 overflow to inf, as torch's
        np.subtract(t, central, out=out) if central is not None else np.copyto(out, t)
    return np.abs(out, out=out)


def mag32_flat(t: Tensor, central: Tensor | None) -> Tensor:
    """:func:`mag32` of flat ``t`` (and ``central``) into one tensor: float32 in numpy on the whole
    tensor (the same float32 difference), other dtypes slice by slice."""
    if t.dtype == torch.float32 and (central is None or central.dtype == torch.float32):
        c = central.detach().numpy() if central is not None else None
        return torch.from_numpy(mag32_into(np.empty(t.numel(), np.float32), t.detach().numpy(), c))
    out = torch.empty(t.numel(), dtype=torch.float32)
    for a in range(0, t.numel(), SLICE):
        out[a : a + SLICE] = mag32(t[a : a + SLICE], central[a : a + SLICE] if central is not None else None)
    return out


def tensor_threshold(m32: Tensor, tau64: Tensor, density: float) -> Threshold:
    """The top-``density`` threshold of one tensor (an exact selection on float32 magnitudes, O(n))."""
    return threshold(m32, density, lambda eq: tau64.reshape(-1)[eq].abs())


def topk_mask(x: Tensor, density: float) -> Tensor:
    """Boolean mask of the ``max(1, int(density * numel))`` largest-magnitude entries of ``x``.

    Ties are broken by position (a stable descending sort), so the mask is deterministic.
    ``density >= 1`` keeps everything; ``density <= 0`` keeps nothing.
    """
    m32 = mag32(x.detach(), None)
    return tensor_threshold(m32, x, density).keep(m32, x.detach()).view(x.shape)


def select_bin(h: Tensor, rank: int) -> tuple[int, int, int]:
    """``(bin, rank within it, entries in it)`` of the ``rank``-th largest entry counted by ``h``.

    In numpy: a few serial passes over 65 536 counts, where torch's would wait on its threads.
    """
    counts = h.numpy()
    from_top = counts[::-1].cumsum()[::-1]  # entries in this bin or above
    b = int(np.flatnonzero(from_top >= rank)[-1])
    above = int(from_top[b + 1]) if b + 1 < counts.size else 0
    return b, rank - above, int(counts[b])
