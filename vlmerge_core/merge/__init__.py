"""Merging MS experts into one MA model: methods, unification, Gram matrices, streaming, conversion."""

from __future__ import annotations

from vlmerge_core.merge.convert import ConvertError, convert_file, convert_grams, convert_state_dict
from vlmerge_core.merge.gram import collect_grams, load_grams, save_grams
from vlmerge_core.merge.grid import MergeJob, merge_jobs, method_grid, run_name
from vlmerge_core.merge.methods import (
    METHODS,
    Knob,
    MergeError,
    MergeMethod,
    get_method,
    interpolation_weights,
    merge_method,
)
from vlmerge_core.merge.stream import merge_checkpoint
from vlmerge_core.merge.unify import unify_state_dict, used_experts

__all__ = [
    "METHODS",
    "ConvertError",
    "Knob",
    "MergeError",
    "MergeJob",
    "MergeMethod",
    "collect_grams",
    "convert_file",
    "convert_grams",
    "convert_state_dict",
    "get_method",
    "interpolation_weights",
    "load_grams",
    "merge_checkpoint",
    "merge_jobs",
    "merge_method",
    "method_grid",
    "run_name",
    "save_grams",
    "unify_state_dict",
    "used_experts",
]
