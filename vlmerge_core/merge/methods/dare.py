"""DARE (Yu et al. 2024): drop each entry of a modality vector at random, rescale, then add up.

**How the drop masks are drawn.** The mask of expert ``i`` of tensor ``name`` comes from its own
numpy ``PCG64`` bit generator, seeded with the first 128 bits (little-endian) of
``sha256(json.dumps([rng_seed, name, i]))``: deterministic from (seed, tensor name, expert index),
and independent streams for different experts and tensors. Entry ``j`` of the flattened tensor takes
the 32-bit half ``j % 2`` (the low half first) of the ``j // 2``-th 64-bit output ``u`` of that
generator and is kept iff ``u >= round(p * 2**32)``: its keep probability is
``1 - round(p * 2**32) / 2**32``, within ``2**-32`` of ``1 - p``. Entry ``j`` uses the same bits
whatever the slicing or the thread count (a :class:`_KeepStream` carries a spare half-word from
one slice to the next), so the masks are drawn slice by slice with the merge, with no whole-tensor
mask and no float uniforms (a 64-bit output gives two entries).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from vlmerge_core.merge.methods.registry import (
    Knob,
    MergeError,
    by_slices,
    check_experts,
    f64,
    flat,
    lambdas,
    merge_method,
)


def _bit_generator(rng_seed: int, name: str, index: int) -> np.random.PCG64:
    """The ``PCG64`` of expert ``index`` of tensor ``name``: seeded from sha256 of the three (stable)."""
    key = json.dumps([int(rng_seed), name, int(index)]).encode()
    return np.random.PCG64(int.from_bytes(hashlib.sha256(key).digest()[:16], "little"))


def drop_threshold(drop_rate: float) -> int:
    """``round(p * 2**32)`` (at most ``2**32 - 1``): a 32-bit draw ``u`` keeps its entry iff ``u >=`` it."""
    return min(round(drop_rate * 2**32), 2**32 - 1)


class _KeepStream:
    """The keep mask of one (tensor, expert), drawn in consecutive slices (module docstring)."""

    def __init__(self, rng_seed: int, name: str, index: int, drop_rate: float):
        self.bg = _bit_generator(rng_seed, name, index)
        self.thr = np.uint32(drop_threshold(drop_rate))
        self.spare: np.ndarray | None = None  # the high half of the last word, not used yet

    def take(self, n: int) -> Tensor:
        """The boolean keep mask of the next ``n`` entries."""
        head = self.spare if self.spare is not None else np.empty(0, dtype=np.uint32)
        words = self.bg.random_raw((n - head.size + 1) // 2).view("<u4")
        u = np.concatenate((head, words)) if head.size else words
        self.spare = u[n:].copy() if u.size > n else None
        return torch.from_numpy(u[:n] >= self.thr)


@merge_method(
    "dare",
    "Yu et al. 2024, Language Models are Super Mario: Absorbing Abilities from Homologous "
    "Models as a Free Lunch (ICML), DARE",
    needs_central=True,
    knobs=(
        Knob(
            "drop_rate",
            float,
            0.5,
            "dare: drop probability of each modality-vector entry",
            lo=0.0,
            hi=1.0,
            hi_open=True,
            params_key="merge.dare_drop_rates",
            sweep=True,
        ),
        Knob(
            "lam",
            float,
            1.0,
            "scale of the summed rescaled modality vectors",
            params_key="merge.dare_lambda",
            flag="--lambda",
        ),
        Knob("rng_seed", int, 0, "dare: RNG seed of the drop masks", lo=0, params_key="merge.rng_seed"),
    ),
)
def dare(
    experts: Sequence[Tensor],
    *,
    central: Tensor,
    drop_rate: float = 0.5,
    lam: float | Sequence[float] = 1.0,
    rng_seed: int = 0,
    name: str = "tensor",
) -> Tensor:
    """DARE: drop each entry of ``tau^m`` with probability ``p``, rescale by ``1/(1-p)``, then
    ``W0 + sum_m lam_m tau~^m``. The masks: module docstring (from (rng_seed, name, expert))."""
    check_experts(experts, name, central, nan=False)
    if not 0.0 <= drop_rate < 1.0:
        raise MergeError(f"{name}: DARE drop rate must be in [0, 1), got {drop_rate}")
    lams = lambdas(lam, len(experts), name)
    ts, c = [flat(t) for t in experts], flat(central)
    streams = [_KeepStream(rng_seed, name, i, drop_rate) if drop_rate > 0 else None for i in range(len(ts))]
    scale = [lm / (1.0 - drop_rate) if drop_rate > 0 else lm for lm in lams]

    def body(s: slice) -> Tensor:
        c64 = f64(c[s])
        out = c64.clone()
        for lm, t, stream in zip(scale, ts, streams):
            tau = t[s] - c64 if t.dtype == torch.float64 else f64(t[s]).sub_(c64)
            if stream is not None:
                tau.mul_(stream.take(tau.numel()))
            out.add_(tau, alpha=lm)
        return out

    return by_slices(experts, name, body, central)
