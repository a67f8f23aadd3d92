"""RegMean (Jin et al. 2023): the least-squares merge of linear layers from the Gram matrices of their inputs.

For a linear weight ``W^m`` (``[out, in]``) of each expert with input Gram matrix ``G^m = sum x x^T``
the merged weight minimises ``sum_m ||X^m W^T - X^m W^mT||^2``: ``W = (sum_m W^m G~^m)(sum_m G~^m)^-1``
with ``G~ = alpha G + (1 - alpha) diag(G)`` (Jin et al. 2023, Eq. 4 and §3.2). Biases and norms are
the plain average, as the official ``regmean`` (PAPER.md §4). The official code picks the experts of
the fusion blocks from the task whatever ``only_activate_used_experts``: the method is
``task_dependent`` (one merge per task group, :mod:`vlmerge_core.model.experts`).

The solve: ``G~`` is symmetric positive semi-definite and, for Gram matrices of enough tokens,
positive definite, so ``sum_m G~^m`` is factored by Cholesky (``n^3 / 3`` flops, half of LU) and
``X (sum G~) = sum W G~`` is solved by two triangular solves in float64. Memory: the factor
overwrites the sum with no copy (LAPACK factors the column-major view ``sum.T`` in place, after
its lower triangle is mirrored: the same factor bit for bit), each Gram matrix is read once and
serves both sums (the numerator ``sum W G~`` by column blocks, no float64 copy of a whole one), and
the solve frees each ``[out, in]`` float64 matrix once used: at most two ``[in, in]`` float64
matrices in memory, one while solving. When the factorisation fails
(not positive definite: too few tokens, a dead input feature with ``alpha = 1``) the LU solve
``torch.linalg.solve`` is used and a warning names the tensor; a singular sum raises
:class:`MergeError`. The official code takes the explicit inverse; ``benchmarks/merge.py`` measures
the three.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from vlmerge_core.merge.methods.interpolation import interpolation
from vlmerge_core.merge.methods.registry import (
    Knob,
    MergeError,
    cast,
    check_experts,
    f64,
    has_nan,
    merge_method,
)

log = logging.getLogger(__name__)
SOLVERS = ("cholesky", "lu", "inverse")
_BLOCK = 1 << 20  # float64 entries of one column block of a Gram matrix (8 MiB)


def regmean_gram(gram: Tensor, alpha: float) -> Tensor:
    """``alpha * G + (1 - alpha) * diag(G)`` in float64 (Jin et al. 2023, Eq. 4 regularisation)."""
    g = f64(gram)
    if alpha == 1.0:
        return g
    out = g * alpha
    out.diagonal().add_(g.diagonal(), alpha=1.0 - alpha)
    return out


class NotPositiveDefinite(MergeError):
    """The summed Gram matrix has no Cholesky factor (it was overwritten by the attempt)."""


_TILE = 128  # side of the square tiles _mirror_lower copies (128 KiB of float64: in cache)


def _mirror_lower(den: Tensor) -> None:
    """Copy the strict lower triangle of square ``den`` onto its upper one, in place, tile by tile.

    Each tile below the diagonal is copied, transposed, onto its mirror tile (both stay in cache),
    in numpy: one thread, where torch's two-thread strided copy waited on a busy core (ViT-B fc2,
    3072 x 3072: 44 ms for the previous whole-panel copies, 17 ms for tiles; values are only moved).
    """
    x = den.numpy()
    n = x.shape[0]
    for a in range(0, n, _TILE):
        b = min(a + _TILE, n)
        blk = x[a:b, a:b]
        upper = np.triu_indices(b - a, 1)
        blk[upper] = blk.T[upper]
        for c in range(b, n, _TILE):
            d = min(c + _TILE, n)
            x[a:b, c:d] = x[c:d, a:b].T


def _factor_in_place(den: Tensor) -> tuple[Tensor, Tensor]:
    """``cholesky_ex`` of symmetric row-major ``den`` into its own memory: ``(L, info)``.

    LAPACK factors column-major matrices, so ``cholesky_ex(den, out=den)`` copies ``den`` (one more
    ``[in, in]`` float64 matrix); ``den.T`` is column-major and is factored in place instead. Its lower
    triangle is ``den``'s upper one, so the lower one is mirrored first: LAPACK reads the same entries
    as when factoring ``den`` (the same factor bit for bit), and ``L`` is ``den.T`` (a view).
    """
    _mirror_lower(den)
    dt = den.T
    return torch.linalg.cholesky_ex(dt, out=(dt, torch.empty((), dtype=torch.int32)))


def _cholesky_solve(chol: Tensor, eqs: list[Tensor]) -> Tensor:
    """``X`` with ``X L L^T = num`` for the Cholesky factor ``chol = L``: ``Z L^T = num``, then
    ``X L = Z``. ``num`` is taken out of ``eqs`` (its only holder), so it is freed once ``Z`` exists."""
    num = eqs.pop()
    z = torch.linalg.solve_triangular(chol.T, num, upper=True, left=False)  # Z L^T = num
    del num
    return torch.linalg.solve_triangular(chol, z, upper=False, left=False)  # X L = Z


def _solve_owned(eqs: list[Tensor], name: str, dtype: torch.dtype) -> Tensor:
    """The Cholesky solve of ``eqs = [num, den]``, ``den`` factored in place, cast to ``dtype``; both are
    taken out of the list, so each is freed as soon as it is used up (the peak is ``den`` and two
    ``[out, in]`` float64 matrices). Raises :class:`NotPositiveDefinite` (``den`` is then overwritten)."""
    den = eqs.pop()
    chol, info = _factor_in_place(den)
    if int(info) != 0:
        raise NotPositiveDefinite(f"{name}: summed Gram matrix is not positive definite")
    x = _cholesky_solve(chol, eqs)
    del chol, den
    return cast(x, dtype)


def solve_normal(num: Tensor, den: Tensor, name: str, solver: str = "cholesky") -> Tensor:
    """``X`` with ``X @ den = num`` for a symmetric ``den`` (float64).

    ``cholesky``: ``den = L L^T``, then two triangular solves ``Z L^T = num``, ``X L = Z``; LU
    fallback with a warning when ``den`` is not positive definite. ``lu``: ``torch.linalg.solve``.
    ``inverse``: ``num @ inv(den)`` (the official code). The in-place form that RegMean uses, which
    keeps no second ``[in, in]`` matrix, is :func:`_solve_owned`.
    """
    if solver not in SOLVERS:
        raise MergeError(f"{name}: RegMean solver must be one of {list(SOLVERS)}, got {solver!r}")
    if solver == "cholesky":
        chol, info = torch.linalg.cholesky_ex(den)
        if int(info) == 0:
            return _cholesky_solve(chol, [num])
        log.warning(
            "%s: summed Gram matrix is not positive definite (leading minor %d); using the LU solve",
            name,
            int(info),
        )
    try:
        if solver == "inverse":
            return num @ torch.linalg.inv(den)
        return torch.linalg.solve(den, num, left=False)  # X @ den = num
    except torch.linalg.LinAlgError as exc:
        raise MergeError(f"{name}: summed Gram matrix is singular ({exc}); use alpha < 1") from None


def _gram_columns(g: Tensor, alpha: float, a: int, b: int) -> Tensor:
    """Columns ``a:b`` of :func:`regmean_gram` ``(g)``, in float64 (the same entries, without the rest)."""
    part = f64(g[:, a:b])
    if alpha == 1.0:
        return part
    out = part * alpha
    out.diagonal(-a).add_(part.diagonal(-a), alpha=1.0 - alpha)  # entries (a + j, j)
    return out


def _normal_equations(
    experts: Sequence[Tensor], grams: Sequence[Tensor], alpha: float, name: str
) -> tuple[Tensor, Tensor]:
    """``(sum_m W^m G~^m, sum_m G~^m)`` in float64, reading each Gram matrix once.

    Column block by column block of ``G~^m`` (``num[:, a:b] += W^m G~^m[:, a:b]``, every entry the
    same dot product over the whole ``in`` as one product: no float64 copy of a whole Gram matrix),
    and the same block is added into the sum (element-wise, in the experts' order): each Gram matrix
    is read once, and two ``[in, in]`` matrices (the sum and one Gram matrix) are alive while it is
    used (the streaming merge runs the groups of the largest ``in`` first, while the output is small:
    :func:`~vlmerge_core.merge.unify._largest_grams_first`). A NaN in any Gram matrix reaches the sum;
    only then are they read again, to name the first.
    """
    d_in = experts[0].shape[1]
    num = torch.zeros(experts[0].shape, dtype=torch.float64)
    den = torch.zeros(d_in, d_in, dtype=torch.float64)
    dn = den.numpy()
    step = max(64, (_BLOCK // d_in) // 64 * 64)
    for i, w in enumerate(experts):
        g = grams[i]  # grams may read lazily: one [in, in] matrix held at a time
        if tuple(g.shape) != (d_in, d_in):
            raise MergeError(f"{name}: Gram matrix {i} has shape {tuple(g.shape)}, expected ({d_in}, {d_in})")
        w64 = cast(w, torch.float64)
        for a in range(0, d_in, step):
            b = min(a + step, d_in)
            cols = _gram_columns(g, alpha, a, b)
            num[:, a:b].addmm_(w64, cols)  # num += W^m G~^m, by columns
            np.add(dn[:, a:b], cols.numpy(), out=dn[:, a:b])  # one thread (see _mirror_lower)
        del w64, g, cols
    if has_nan(den):
        bad = next((i for i in range(len(grams)) if has_nan(grams[i])), None)
        if bad is not None:
            raise MergeError(f"{name}: Gram matrix {bad} contains NaN")
    return num, den


@merge_method(
    "regmean",
    "Jin et al. 2023, Dataless Knowledge Fusion by Merging Weights of Language Models (ICLR), RegMean",
    needs_grams=True,
    task_dependent=True,
    knobs=(
        Knob(
            "alpha",
            float,
            1.0,
            "regmean: scale of the off-diagonal Gram entries (alpha_R)",
            lo=0.0,
            hi=1.0,
            params_key="merge.regmean_alphas",
            sweep=True,
        ),
    ),
    extra_params=("solver",),
)
def regmean(
    experts: Sequence[Tensor],
    *,
    grams: Sequence[Tensor] | None = None,
    alpha: float = 1.0,
    solver: str = "cholesky",
    name: str = "tensor",
) -> Tensor:
    """RegMean: ``W = (sum_m W^m G~^m)(sum_m G~^m)^-1`` for a linear weight ``[out, in]``.

    Without ``grams`` (biases, norms) it is the plain average, as the official code. ``solver``:
    see :func:`solve_normal`.
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
    if solver == "cholesky":
        try:
            return _solve_owned([*_normal_equations(experts, grams, alpha, name)], name, experts[0].dtype)
        except NotPositiveDefinite:
            log.warning("%s: summed Gram matrix is not positive definite; using the LU solve", name)
            solver = "lu"
    num, den = _normal_equations(experts, grams, alpha, name)  # (again: den was factored in place)
    return cast(solve_normal(num, den, name, solver), experts[0].dtype)
