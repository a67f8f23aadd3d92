"""Merge methods: pure tensor functions in a registry, one file per method, each citing its paper.

Every method takes the list of expert tensors of one parameter (``v``, ``l`` and possibly ``vl``
copies of the same weight, in that order) and returns the merged tensor, with the dtype and shape of
the inputs. Arithmetic is done in float64 and cast back at the end, in a fixed order, so that the
same inputs give the same output bit for bit. No I/O happens here; :mod:`vlmerge_core.merge.unify`
maps the methods over the parameter names of a checkpoint. The registration of each method
(:class:`MergeMethod`, :class:`Knob`) is the one description of it that every caller reads.

Methods (``METHODS``):
    interpolation       weighted average; the paper's ratio r (Sung et al. 2023, PAPER.md §4).
    arithmetic          modality arithmetic as the official code computes it (in-place sequence).
    arithmetic_formula  task arithmetic W0 + lam sum tau (Ilharco et al. 2023).
    regmean             RegMean (Jin et al. 2023), closed-form least squares with Gram matrices.
    ties                TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint mean.
    dare                DARE (Yu et al. 2024): random drop and rescale, then summed arithmetic.
"""

from __future__ import annotations

import importlib

# One module per method; importing it registers it. This order is the order of METHODS (CLI, grid).
MODULES = ("interpolation", "arithmetic", "arithmetic_formula", "regmean", "ties", "dare")
for _module in MODULES:
    importlib.import_module(f"vlmerge_core.merge.methods.{_module}")

from vlmerge_core.merge.methods.interpolation import interpolation_weights  # noqa: E402
from vlmerge_core.merge.methods.registry import (  # noqa: E402
    METHODS,
    Knob,
    MergeError,
    MergeMethod,
    check_experts,
    get_method,
    merge_method,
)
from vlmerge_core.merge.methods.regmean import regmean_gram, solve_normal  # noqa: E402
from vlmerge_core.merge.methods.ties_topk import topk_mask  # noqa: E402

__all__ = [
    "METHODS",
    "Knob",
    "MergeError",
    "MergeMethod",
    "check_experts",
    "get_method",
    "interpolation_weights",
    "merge_method",
    "regmean_gram",
    "solve_normal",
    "topk_mask",
]
