"""DARE (Yu et al. 2024): drop each entry of a modality vector at random, rescale, then add up.

The drop masks dominate the cost: each is drawn from its own generator (seeded by the seed, the
tensor name and the expert index), one uniform float64 at a time, on one core. The masks of a
group's experts are independent streams, so they are drawn at once in worker threads (the draws of
each generator and hence the masks are the same as drawing them one after the other), while this
thread forms the modality vectors; each is drawn in slices into a small buffer (the same sequence of
draws as one ``torch.rand`` of the whole shape) and kept as a boolean mask, not a float64 tensor.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from vlmerge_core.merge.methods.registry import (
    SLICE,
    Knob,
    MergeError,
    by_slices,
    check_experts,
    f64,
    flat,
    lambdas,
    merge_method,
)


def _generator(rng_seed: int, name: str, index: int) -> torch.Generator:
    """A CPU generator seeded from (rng_seed, tensor name, expert index), stable across runs."""
    g = torch.Generator(device="cpu")
    g.manual_seed((int(rng_seed) * 1_000_003 + zlib.crc32(name.encode()) * 31 + index) % (2**63 - 1))
    return g


def _keep_mask(n: int, drop_rate: float, g: torch.Generator) -> Tensor:
    """``torch.rand(n, generator=g, dtype=float64) >= drop_rate``, drawn slice by slice."""
    keep = torch.empty(n, dtype=torch.bool)
    buf = torch.empty(min(n, SLICE), dtype=torch.float64)
    for a in range(0, n, SLICE):
        b = min(a + SLICE, n)
        torch.ge(buf[: b - a].uniform_(0.0, 1.0, generator=g), drop_rate, out=keep[a:b])
    return keep


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
    ``W0 + sum_m lam_m tau~^m``. The masks come from a generator seeded by (rng_seed, name, expert)."""
    check_experts(experts, name, central, nan=False)
    if not 0.0 <= drop_rate < 1.0:
        raise MergeError(f"{name}: DARE drop rate must be in [0, 1), got {drop_rate}")
    lams = lambdas(lam, len(experts), name)
    ts, c = [flat(t) for t in experts], flat(central)
    workers = min(len(experts), max(1, torch.get_num_threads())) if drop_rate > 0 else 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [
            pool.submit(_keep_mask, t.numel(), drop_rate, _generator(rng_seed, name, i)) if workers else None
            for i, t in enumerate(ts)
        ]
        masks = [f.result() if f is not None else None for f in futures]
    scale = [lm / (1.0 - drop_rate) if drop_rate > 0 else lm for lm in lams]

    def body(s: slice) -> Tensor:
        out = f64(c[s]).clone()
        for lm, t, mask in zip(scale, ts, masks):
            tau = f64(t[s]) - f64(c[s])
            if mask is not None:
                tau.mul_(mask[s])
            out.add_(tau, alpha=lm)
        return out

    return by_slices(experts, name, body, central)
