"""vlmerge: reference reproduction of *An Empirical Study of Multimodal Model Merging*.

The public API is re-exported here by name; subpackages hold the implementation:
``data`` (micro-world, tokenizer, loaders), ``model`` (multiway transformer), ``pretrain``
(objectives and loop), ``merge`` (methods, unification, Gram matrices, conversion), ``analysis``
(weight distances, correlations), ``tasks`` (fine-tuning and evaluation).

Names from the torch-heavy subpackages are imported on first use (PEP 562), so that
``import vlmerge_core`` and ``vlmerge params`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from vlmerge_core.config import Params, ParamsError, load_params, profile_params
from vlmerge_core.io import atomic_write, read_json, write_json, write_run_info
from vlmerge_core.paths import metrics_dir, repo_root, runs_dir

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    # data
    "generate_world": "data",
    "load_world": "data",
    "World": "data",
    "load_tokenizer": "data",
    "PairDataset": "data",
    "encode_text": "data",
    "image_to_tensor": "data",
    "mask_tokens": "data",
    "whole_word_mask": "data",
    "patch_codes": "data",
    # model
    "MultiwayTransformer": "model",
    "MS_VARIANTS": "model",
    "save_model": "model",
    "load_model": "model",
    "model_config_of": "model",
    "init_ms_from_ma": "model",
    "load_timm_into_v": "model",
    "CheckpointMismatchError": "model",
    # pre-training
    "run_pretrain": "pretrain",
    "evaluate_retrieval": "pretrain",
    "NonFiniteLossError": "pretrain",
    # merging
    "METHODS": "merge",
    "get_method": "merge",
    "unify_state_dict": "merge",
    "merge_checkpoint": "merge",
    "collect_grams": "merge",
    "convert_file": "merge",
    "MergeError": "merge",
    "ConvertError": "merge",
    # analysis
    "weight_distances": "analysis",
    "rank_correlation": "analysis",
    # tasks
    "TASKS": "tasks",
    "finetune_task": "tasks",
    "run_finetune": "tasks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"vlmerge_core.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vlmerge_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Params",
    "ParamsError",
    "__version__",
    "atomic_write",
    "load_params",
    "metrics_dir",
    "profile_params",
    "read_json",
    "repo_root",
    "runs_dir",
    "write_json",
    "write_run_info",
    *_LAZY,
]
