"""DARE (Yu et al. 2024): drop each entry of a modality vector at random, rescale, then add up."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from torch import Tensor

from vlmerge_core.merge.methods.registry import (
    Knob,
    MergeError,
    check_experts,
    f64,
    finish,
    lambdas,
    merge_method,
)


def _generator(rng_seed: int, name: str, index: int) -> torch.Generator:
    """A CPU generator seeded from (rng_seed, tensor name, expert index), stable across runs."""
    g = torch.Generator(device="cpu")
    g.manual_seed((int(rng_seed) * 1_000_003 + zlib.crc32(name.encode()) * 31 + index) % (2**63 - 1))
    return g


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
    c = f64(central)
    out = c.clone()
    for i, (lm, t) in enumerate(zip(lams, experts)):
        tau = f64(t) - c
        if drop_rate > 0:
            keep = (
                torch.rand(tau.shape, generator=_generator(rng_seed, name, i), dtype=torch.float64)
                >= drop_rate
            )
            tau.mul_(keep)
            lm = lm / (1.0 - drop_rate)
        out.add_(tau, alpha=lm)
    return finish(out, experts, name, central)
