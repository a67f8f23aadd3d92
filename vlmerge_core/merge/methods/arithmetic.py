"""Modality arithmetic as the official code computes it (``sum_task_vectors`` of ``vilt_module.py``).

The official function sets ``w = central[k]`` and then, for the experts in the order ``v, l (, vl)``,
adds ``lam * (W^m - central[k])`` to ``w`` *in place*; ``central[k]`` is ``w`` itself, so each step
starts from the previous result: ``w <- w + lam (W^m - w)``. For two experts that is
``(1-lam)^2 W0 + lam (1-lam) W^v + lam W^l`` (PAPER.md §4), not the task-arithmetic formula
(see :mod:`~vlmerge_core.merge.methods.arithmetic_formula`). The published numbers come from this form.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from vlmerge_core.merge.methods.registry import (
    Knob,
    by_slices,
    check_experts,
    f64,
    flat,
    lambdas,
    merge_method,
)

LAMBDA = Knob(
    "lam",
    float,
    0.5,
    "scale of the modality vectors (lambda)",
    params_key="merge.lambdas",
    sweep=True,
    flag="--lambda",
)


@merge_method(
    "arithmetic",
    "Sung et al. 2023, An Empirical Study of Multimodal Model Merging (arXiv 2304.14933), modality "
    "arithmetic as the official sum_task_vectors computes it (in-place sequence)",
    needs_central=True,
    symmetric=False,
    knobs=(LAMBDA,),
)
def arithmetic(
    experts: Sequence[Tensor], *, central: Tensor, lam: float | Sequence[float] = 0.5, name: str = "tensor"
) -> Tensor:
    """The official sequence ``w <- w + lam_m (W^m - w)`` from ``w = W0``, over the experts in order.

    The experts must come in the official order ``v, l, vl`` (the result depends on it). Computed
    in float64 in the official expression form and cast back at the end.
    """
    check_experts(experts, name, central, nan=False)
    lams = lambdas(lam, len(experts), name)
    ts, c = [flat(t) for t in experts], flat(central)

    def body(s: slice) -> Tensor:
        out = f64(c[s]).clone()
        for lm, t in zip(lams, ts):
            step = f64(t[s]) - out  # W^m - w, w already holding the previous steps
            out.add_(step, alpha=lm)
        return out

    return by_slices(experts, name, body, central)
