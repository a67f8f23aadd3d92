"""vlmerge: reference reproduction of *An Empirical Study of Multimodal Model Merging*.

The public API is re-exported here by name; subpackages hold the implementation:
``data`` (micro-world, tokenizer, real readers), ``model`` (multiway transformer), ``pretrain``
(objectives and loop), ``merge`` (methods, unification, Gram matrices, conversion), ``analysis``
(weight distances), ``tasks`` (fine-tuning and evaluation), ``report`` (tables, figures, claims).
"""

from __future__ import annotations

from vlmerge_core.config import Params, ParamsError, load_params, profile_params
from vlmerge_core.io import atomic_write, read_json, write_json, write_run_info
from vlmerge_core.paths import metrics_dir, repo_root, runs_dir

__version__ = "0.1.0"

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
]
