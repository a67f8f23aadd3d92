"""TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint mean.

Each modality vector ``tau^m = W^m - W0`` keeps its ``k = max(1, int(density * n))`` entries of
largest magnitude (ties broken by position: the first ones win, as a stable descending sort), the
sign of ``sum_m trimmed tau^m`` is elected per entry, the entries that agree with it are averaged,
and the merged weight is ``W0 + lam * tau``.

**What is trimmed** (``trim``). Yadav et al.'s reference code flattens each task vector over the
whole model and keeps its top ``k``: ``trim="vector"`` (the default) does that for the modality
vector of each expert, i.e. over all the block parameters of that expert that are merged together
with another expert (a lone expert passes through and is not part of it), without holding the
vector (:mod:`~vlmerge_core.merge.methods.ties_vector`). ``trim="tensor"`` trims each parameter
tensor on its own, as mergekit does. Both select exactly (:mod:`~vlmerge_core.merge.methods.ties_topk`).

**Slice by slice.** Given the thresholds, TIES is element-wise: each tensor is merged in slices of
``SLICE`` entries (the streaming merge runs groups side by side, one per thread,
:func:`~vlmerge_core.merge.unify.iter_unified`): the same values, without whole-tensor float64
temporaries. :func:`_ties_chunk` is the reference of a slice; :class:`_Float32Pass` gives its bits
faster for float32 inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from vlmerge_core.merge.methods.registry import SLICE, Knob, MergeError, check_experts, f64, merge_method
from vlmerge_core.merge.methods.ties_topk import Threshold, mag32, mag32_flat, mag32_into, threshold
from vlmerge_core.merge.methods.ties_vector import prepare_vector_trim

TRIMS = ("vector", "tensor")


def _tau_mags(t: Tensor, central: Tensor) -> Callable[[Tensor], Tensor]:
    """``mags64(mask)``: ``|W^m - W0|`` in float64 at the entries of flat ``t`` selected by ``mask``."""
    return lambda eq: (f64(t[eq]) - f64(central[eq])).abs()


def _ties_chunk(ts: Sequence[Tensor], c32: Tensor, thresholds: Sequence[Threshold], lam: float) -> Tensor:
    """TIES of one slice (flat expert slices ``ts``, central slice ``c32``, in order), in float64.

    Element-wise, so merging a tensor slice by slice gives its whole-tensor result bit for bit; the
    thresholds' ``keep`` is called on the slices in order (its tie state runs across them). The
    reference of the merge pass: any dtype, any threshold; :class:`_Float32Pass` gives the same bits
    faster where it applies.
    """
    c = c32.to(torch.float64, copy=True)
    trimmed = []
    for t, thr in zip(ts, thresholds):
        m32 = mag32(t, c32)
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


class _Float32Pass:
    """The merge pass of :func:`_ties_chunk` for float32 experts and central without a float64 tie at
    the threshold, in numpy into buffers reused from slice to slice: the same IEEE operations on the
    same values (so the same bits; tests/merge/test_merge_ties.py holds the two equal), without a fresh
    allocation per operation (a new 256 KiB array costs as much as the operation) and without torch's
    slow comparisons and boolean products (a float64 ``>`` 18 us, ``* bool`` 35 us per slice, numpy's
    ``>`` 4 us and a 0/1 float product 12 us).

    Two experts (every block before ``vl_start``) take a shorter form of the same result: with
    trimmed ``a``, ``b``, the elected sign of ``a + b`` keeps both when ``a * b > 0`` (their mean is
    ``fl(a + b) / 2``, which is ``fl(|a| + |b|) / 2`` with the sign), else the one of larger magnitude
    (``a + b`` is never 0 then) or nothing when ``|a| == |b|``. ``a * b`` cannot underflow: a non-zero
    difference of float32 values is at least 2^-149, so the product is at least 2^-298. A merged 0 is
    +0 in both forms (it matters only where the central entry is -0).
    """

    def __init__(self, n_experts: int, n: int) -> None:
        self.f64 = np.empty((n_experts + 4, n))
        self.f32 = np.empty(n, np.float32)
        self.masks = np.empty((4, n), bool)
        self.count = np.empty(n, np.int32)

    @staticmethod
    def applies(ts: Sequence[Tensor], central: Tensor, thresholds: Sequence[Threshold]) -> bool:
        tensors = [*ts, central]
        return all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors) and all(
            thr.t64 is None for thr in thresholds
        )

    def _trimmed(
        self, tau: np.ndarray, t: np.ndarray, c32: np.ndarray, c: np.ndarray, thr: Threshold
    ) -> None:
        """``tau = (f64(t) - c) * keep`` with ``keep = |fl32(t - c32)| >= t32`` (:meth:`Threshold.keep`)."""
        np.copyto(tau, t)
        tau -= c
        if thr.t32 < 0:  # keeps everything
            return
        m = c32.size
        m32, keep, x = mag32_into(self.f32[:m], t, c32), self.masks[0, :m], self.f64[-1, :m]
        np.greater_equal(m32, np.float32(thr.t32), out=keep)
        np.copyto(x, keep)
        tau *= x

    def __call__(
        self, ts: Sequence[np.ndarray], c32: np.ndarray, thresholds: Sequence[Threshold], lam: float
    ) -> np.ndarray:
        """The merged slice ``W0 + lam * tau`` in float64 (a view of the buffers: copy it out before the
        next call)."""
        m, e = c32.size, len(ts)
        c, trs = self.f64[0, :m], [self.f64[1 + i, :m] for i in range(e)]
        np.copyto(c, c32)
        for tau, t, thr in zip(trs, ts, thresholds):
            self._trimmed(tau, t, c32, c, thr)
        r = self._pair(*trs) if e == 2 else self._elect_mean(trs)
        if lam != 1.0:  # x * 1.0 is x: the reference's product by lam changes nothing then
            r *= lam
        c += r
        return c

    def _pair(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        m = a.size
        r, x, y = self.f64[3, :m], self.f64[4, :m], self.f64[5, :m]
        same, other, ga, gb = (self.masks[i, :m] for i in range(4))
        np.multiply(a, b, out=x)
        np.greater(x, 0.0, out=same)  # both kept, one sign: the mean
        np.logical_not(same, out=other)
        np.abs(a, out=x)
        np.abs(b, out=y)
        np.greater(x, y, out=ga)  # otherwise the larger one; neither when |a| == |b|
        ga &= other
        np.greater(y, x, out=gb)
        gb &= other
        np.add(a, b, out=r)
        r *= 0.5
        np.copyto(x, same)
        r *= x
        np.copyto(x, ga)
        a *= x
        r += a
        np.copyto(x, gb)
        b *= x
        r += b
        r += 0.0  # -0 -> +0: the reference's merged 0 is +0
        return r

    def _elect_mean(self, trs: list[np.ndarray]) -> np.ndarray:
        """The reference's steps for three or more experts (its operations, in its order)."""
        m = trs[0].size
        e = len(trs)
        sign, acc, x = self.f64[1 + e, :m], self.f64[2 + e, :m], self.f64[-1, :m]
        agrees, count = self.masks[0, :m], self.count[:m]
        np.copyto(sign, trs[0])
        for tr in trs[1:]:
            sign += tr
        np.sign(sign, out=sign)  # +0 for -0, as torch's
        acc.fill(0.0)
        count.fill(0)
        for tr in trs:
            tr *= sign
            np.greater(tr, 0.0, out=agrees)
            count += agrees
            np.maximum(tr, 0.0, out=x)  # a zero's sign differs from torch's clamp; acc + 0 is acc either way
            acc += x
        np.maximum(count, 1, out=count)
        acc /= count
        acc *= sign
        return acc


def _check_part(nan: bool, experts: Sequence[Tensor], name: str, central: Tensor) -> None:
    """As ``finish()``: a NaN in a merged slice (found by its sum) comes from a NaN input; name it."""
    if nan:
        check_experts(experts, name, central)
        raise MergeError(f"{name}: merged tensor contains NaN")


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
        thresholds = [threshold(mag32_flat(t, cf), density, _tau_mags(t, cf)) for t in ts]
    out = torch.empty(central.shape, dtype=experts[0].dtype)
    flat = out.view(-1)
    if _Float32Pass.applies(ts, cf, thresholds):  # numpy throughout: no torch op per slice
        fast, xs, c, dst = (
            _Float32Pass(len(ts), min(SLICE, cf.numel())),
            [t.numpy() for t in ts],
            cf.numpy(),
            flat.numpy(),
        )
        for a in range(0, c.size, SLICE):
            part = fast([x[a : a + SLICE] for x in xs], c[a : a + SLICE], thresholds, lam)
            _check_part(bool(np.isnan(np.add.reduce(part)) and np.isnan(part).any()), experts, name, central)
            np.copyto(dst[a : a + SLICE], part, casting="same_kind")  # float64 -> float32, as torch's copy
        return out
    for a in range(0, cf.numel(), SLICE):
        b = min(a + SLICE, cf.numel())
        part = _ties_chunk([t[a:b] for t in ts], cf[a:b], thresholds, lam)
        _check_part(bool(torch.isnan(part.sum()) and torch.isnan(part).any()), experts, name, central)
        flat[a:b] = part
    return out
