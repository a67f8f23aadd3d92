"""Merge methods: pure tensor functions in a registry, each citing the paper it comes from.

Every method takes the list of expert tensors of one parameter (``v``, ``l`` and possibly ``vl``
copies of the same weight) and returns the merged tensor, with the dtype and shape of the inputs.
Arithmetic is done in float64 and cast back at the end, in a fixed order, so that the same inputs
give the same output bit for bit. No I/O happens here; :mod:`vlmerge_core.merge.unify` maps the
methods over the parameter names of a checkpoint.

Methods (``METHODS``):
    interpolation  weighted average; the paper's ratio r (Sung et al. 2023, §4 of PAPER.md).
    arithmetic     modality arithmetic = task arithmetic (Ilharco et al. 2023) around the seed.
    regmean        RegMean (Jin et al. 2023), closed-form least squares with Gram matrices.
    ties           TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint mean.
    dare           DARE (Yu et al. 2024): random drop and rescale, then summed arithmetic.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


class MergeError(ValueError):
    """Inputs of a merge are inconsistent; the message names the tensor."""


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method."""

    name: str  # registry key, used by the CLI and the params
    fn: Callable[..., Tensor]  # fn(experts, *, name, ...) -> merged tensor
    reference: str  # the paper the method comes from
    needs_central: bool = False  # needs the seed ("central") weights
    needs_grams: bool = False  # needs per-expert Gram matrices of linear inputs

    def __call__(self, experts: Sequence[Tensor], **kwargs) -> Tensor:
        return self.fn(experts, **kwargs)


METHODS: dict[str, MergeMethod] = {}


def merge_method(
    name: str, reference: str, *, needs_central: bool = False, needs_grams: bool = False
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Register a merge function under ``name`` (mergekit's ``@merge_method`` idea)."""

    def deco(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in METHODS:
            raise ValueError(f"merge method {name!r} registered twice")
        METHODS[name] = MergeMethod(name, fn, reference, needs_central, needs_grams)
        return fn

    return deco


def get_method(name: str) -> MergeMethod:
    """The registered method ``name``; an unknown name lists the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise MergeError(f"unknown merge method {name!r}; known: {', '.join(sorted(METHODS))}") from None


# ------------------------------------------------------------------------------------- validation
def check_experts(
    experts: Sequence[Tensor], name: str, central: Tensor | None = None, nan: bool = True
) -> None:
    """Raise :class:`MergeError` naming ``name`` on an empty list, shape/dtype mismatch or (``nan``) NaN."""
    if len(experts) == 0:
        raise MergeError(f"{name}: no expert tensors to merge")
    ref = experts[0]
    for i, t in enumerate(experts):
        if not isinstance(t, Tensor):
            raise MergeError(f"{name}: expert {i} is a {type(t).__name__}, not a tensor")
        if t.shape != ref.shape:
            raise MergeError(
                f"{name}: tensor size mismatch between experts: "
                f"{tuple(ref.shape)} vs {tuple(t.shape)} (expert {i})"
            )
        if t.dtype != ref.dtype:
            raise MergeError(f"{name}: dtype mismatch between experts: {ref.dtype} vs {t.dtype} (expert {i})")
        if nan and t.is_floating_point() and torch.isnan(t).any():
            raise MergeError(f"{name}: expert {i} contains NaN")
    if central is not None:
        if central.shape != ref.shape:
            raise MergeError(
                f"{name}: central tensor has shape {tuple(central.shape)}, experts have "
                f"{tuple(ref.shape)} (central checkpoint of another architecture?)"
            )
        if nan and central.is_floating_point() and torch.isnan(central).any():
            raise MergeError(f"{name}: central tensor contains NaN")


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


def _lambdas(lam: float | Sequence[float], n: int, name: str) -> list[float]:
    lams = [float(lam)] * n if isinstance(lam, (int, float)) else [float(x) for x in lam]
    if len(lams) != n or any(not math.isfinite(x) for x in lams):
        raise MergeError(f"{name}: lambda must be a finite number or one per expert, got {lam}")
    return lams


def _f64(t: Tensor) -> Tensor:
    return t.detach().to(torch.float64)


def _finish(out: Tensor, experts: Sequence[Tensor], name: str, central: Tensor | None = None) -> Tensor:
    """Cast back to the experts' dtype; NaN in the output (0 * NaN is NaN) means a NaN input: name it."""
    if torch.isnan(out.sum()) and torch.isnan(out).any():  # a reduction first: no bool temporary
        check_experts(experts, name, central)
        raise MergeError(f"{name}: merged tensor contains NaN")
    return out.to(experts[0].dtype)


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


def topk_mask(x: Tensor, density: float) -> Tensor:
    """Boolean mask of the ``max(1, int(density * numel))`` largest-magnitude entries of ``x``.

    Ties are broken by position (stable sort), so the mask is deterministic. ``density >= 1`` keeps
    everything; ``density <= 0`` keeps nothing.
    """
    n = x.numel()
    if density >= 1.0:
        return torch.ones_like(x, dtype=torch.bool)
    if density <= 0.0 or n == 0:
        return torch.zeros_like(x, dtype=torch.bool)
    k = max(1, int(density * n))
    mag = x.detach().abs().reshape(-1)
    thr = torch.kthvalue(mag, n - k + 1).values  # the k-th largest magnitude, O(n)
    mask = mag > thr
    need = k - int(mask.sum())
    if need > 0:  # ties at the threshold: the first positions win (as a stable descending sort)
        mask[torch.nonzero(mag == thr).reshape(-1)[:need]] = True
    return mask.view(x.shape)


# ---------------------------------------------------------------------------------------- methods
@merge_method(
    "interpolation",
    "Sung et al. 2023, An Empirical Study of Multimodal Model Merging (arXiv 2304.14933); "
    "weight averaging as in Wortsman et al. 2022, Model soups",
)
def interpolation(
    experts: Sequence[Tensor], *, weights: Sequence[float] | None = None, name: str = "tensor"
) -> Tensor:
    """Weighted average ``sum_m w_m W^m`` with non-negative weights summing to 1.

    The paper's ratio ``r`` is expressed through :func:`interpolation_weights`.
    """
    check_experts(experts, name, nan=False)
    ws = _weights(weights, len(experts), name)
    out = torch.zeros(experts[0].shape, dtype=torch.float64)
    for w, t in zip(ws, experts):
        out.add_(t.detach(), alpha=w)  # float64 accumulation, no temporary
    return _finish(out, experts, name)


@merge_method(
    "arithmetic",
    "Ilharco et al. 2023, Editing Models with Task Arithmetic (ICLR); modality "
    "arithmetic of Sung et al. 2023",
    needs_central=True,
)
def arithmetic(
    experts: Sequence[Tensor], *, central: Tensor, lam: float | Sequence[float] = 1.0, name: str = "tensor"
) -> Tensor:
    """Modality arithmetic ``W0 + sum_m lam_m (W^m - W0)`` around the seed weights ``W0``."""
    check_experts(experts, name, central, nan=False)
    lams = _lambdas(lam, len(experts), name)
    out = _f64(central) * (1.0 - sum(lams))  # W0 + sum_m lam_m (W^m - W0), in one pass per expert
    for lm, t in zip(lams, experts):
        out.add_(t.detach(), alpha=lm)
    return _finish(out, experts, name, central)


def regmean_gram(gram: Tensor, alpha: float) -> Tensor:
    """``alpha * G + (1 - alpha) * diag(G)`` in float64 (Jin et al. 2023, Eq. 4 regularisation)."""
    g = _f64(gram)
    if alpha == 1.0:
        return g
    out = g * alpha
    out.diagonal().add_(g.diagonal(), alpha=1.0 - alpha)
    return out


@merge_method(
    "regmean",
    "Jin et al. 2023, Dataless Knowledge Fusion by Merging Weights of Language Models (ICLR), RegMean",
    needs_grams=True,
)
def regmean(
    experts: Sequence[Tensor],
    *,
    grams: Sequence[Tensor] | None = None,
    alpha: float = 1.0,
    name: str = "tensor",
) -> Tensor:
    """RegMean: ``W = (sum_m W^m G~^m)(sum_m G~^m)^-1`` for a linear weight ``[out, in]``.

    ``G~ = alpha G + (1 - alpha) diag(G)``; solved in float64 with ``torch.linalg.solve`` (no
    explicit inverse). Without ``grams`` (biases, norms) it is the plain average, as the official code.
    """
    check_experts(experts, name)
    if grams is None:
        return interpolation(experts, name=name)
    if not 0.0 <= alpha <= 1.0:
        raise MergeError(f"{name}: RegMean alpha must be in [0, 1], got {alpha}")
    if len(grams) != len(experts):
        raise MergeError(f"{name}: {len(grams)} Gram matrices for {len(experts)} experts")
    if experts[0].dim() != 2:
        raise MergeError(
            f"{name}: RegMean needs 2-D linear weights [out, in], got shape {tuple(experts[0].shape)}"
        )
    d_in = experts[0].shape[1]
    num = torch.zeros(experts[0].shape, dtype=torch.float64)
    den = torch.zeros(d_in, d_in, dtype=torch.float64)
    for i, (w, g) in enumerate(zip(experts, grams)):
        if tuple(g.shape) != (d_in, d_in):
            raise MergeError(f"{name}: Gram matrix {i} has shape {tuple(g.shape)}, expected ({d_in}, {d_in})")
        if torch.isnan(g).any():
            raise MergeError(f"{name}: Gram matrix {i} contains NaN")
        gt = regmean_gram(g, alpha)
        num += _f64(w) @ gt
        den += gt
    try:
        out = torch.linalg.solve(den, num, left=False)  # X @ den = num
    except torch.linalg.LinAlgError as exc:
        raise MergeError(f"{name}: summed Gram matrix is singular ({exc}); use alpha < 1") from None
    return out.to(experts[0].dtype)


@merge_method(
    "ties",
    "Yadav et al. 2023, TIES-Merging: Resolving Interference When Merging Models (NeurIPS)",
    needs_central=True,
)
def ties(
    experts: Sequence[Tensor],
    *,
    central: Tensor,
    density: float = 0.5,
    lam: float = 1.0,
    name: str = "tensor",
) -> Tensor:
    """TIES: trim each ``tau^m = W^m - W0`` to its top-``density`` magnitudes, elect the sign of
    ``sum_m tau^m``, average the entries that agree with it (disjoint mean), ``W0 + lam * tau``."""
    check_experts(experts, name, central)
    if not 0.0 <= density <= 1.0:
        raise MergeError(f"{name}: TIES density must be in [0, 1], got {density}")
    c = _f64(central)
    taus = torch.stack([_f64(t) - c for t in experts])  # (M, *shape)
    trimmed = torch.stack([tau * topk_mask(tau, density) for tau in taus])
    sign = torch.sign(trimmed.sum(dim=0))  # elected sign by total mass
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    count = agree.sum(dim=0).clamp(min=1)
    tau = (trimmed * agree).sum(dim=0) / count
    return (c + lam * tau).to(experts[0].dtype)


def _generator(seed: int, name: str, index: int) -> torch.Generator:
    """A CPU generator seeded from (seed, tensor name, expert index), stable across runs."""
    g = torch.Generator(device="cpu")
    g.manual_seed((int(seed) * 1_000_003 + zlib.crc32(name.encode()) * 31 + index) % (2**63 - 1))
    return g


@merge_method(
    "dare",
    "Yu et al. 2024, Language Models are Super Mario: Absorbing Abilities from Homologous "
    "Models as a Free Lunch (ICML), DARE",
    needs_central=True,
)
def dare(
    experts: Sequence[Tensor],
    *,
    central: Tensor,
    drop_rate: float = 0.5,
    lam: float | Sequence[float] = 1.0,
    seed: int = 0,
    name: str = "tensor",
) -> Tensor:
    """DARE: drop each entry of ``tau^m`` with probability ``p``, rescale by ``1/(1-p)``, then
    ``W0 + sum_m lam_m tau~^m``. The masks come from a generator seeded by (seed, name, expert)."""
    check_experts(experts, name, central, nan=False)
    if not 0.0 <= drop_rate < 1.0:
        raise MergeError(f"{name}: DARE drop rate must be in [0, 1), got {drop_rate}")
    lams = _lambdas(lam, len(experts), name)
    c = _f64(central)
    out = c.clone()
    for i, (lm, t) in enumerate(zip(lams, experts)):
        tau = _f64(t) - c
        if drop_rate > 0:
            keep = (
                torch.rand(tau.shape, generator=_generator(seed, name, i), dtype=torch.float64) >= drop_rate
            )
            tau.mul_(keep)
            lm = lm / (1.0 - drop_rate)
        out.add_(tau, alpha=lm)
    return _finish(out, experts, name, central)
