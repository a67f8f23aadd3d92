"""Task arithmetic (Ilharco et al. 2023): ``W0 + lam * sum_m (W^m - W0)``, the published formula.

The formula that the name "modality arithmetic" and the official README's "modality vectors"
describe; the official code computes the in-place sequence of
:mod:`~vlmerge_core.merge.methods.arithmetic` instead (PAPER.md §4). Both are registered; the
report says which one each number used.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from vlmerge_core.merge.methods.arithmetic import LAMBDA
from vlmerge_core.merge.methods.registry import by_slices, check_experts, f64, flat, lambdas, merge_method


@merge_method(
    "arithmetic_formula",
    "Ilharco et al. 2023, Editing Models with Task Arithmetic (ICLR); the modality-vector formula of "
    "Sung et al. 2023",
    needs_central=True,
    knobs=(LAMBDA,),
)
def arithmetic_formula(
    experts: Sequence[Tensor], *, central: Tensor, lam: float | Sequence[float] = 0.5, name: str = "tensor"
) -> Tensor:
    """``W0 + sum_m lam_m (W^m - W0)`` around the seed weights ``W0``, in float64."""
    check_experts(experts, name, central, nan=False)
    lams = lambdas(lam, len(experts), name)
    ts, c = [flat(t) for t in experts], flat(central)

    def body(s: slice) -> Tensor:
        out = f64(c[s]) * (1.0 - sum(lams))  # W0 + sum_m lam_m (W^m - W0), in one pass per expert
        for lm, t in zip(lams, ts):
            out.add_(t[s], alpha=lm)
        return out

    return by_slices(experts, name, body, central)
