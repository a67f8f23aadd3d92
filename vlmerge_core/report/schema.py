"""The study-metrics contract: the columns of ``metrics/study/*.csv``, their types, and display names.

The pipeline's ``collect`` stage (:mod:`vlmerge_core.study.collect`) writes four tidy CSV files and
``design.json`` (the roles of the runs, :mod:`.design`); this module is the one description of the
files that the report reads. A missing file or row means "not run".

The unit of replication is a pre-training run (DESIGN.md §11): ``pt_seed`` is its RNG seed. Rows of
the untrained model, the random init and the init have no pre-training replicate (``pt_seed`` empty);
their units are fine-tuning seeds.
"""

from __future__ import annotations


class StudyError(ValueError):
    """A study metrics file that breaks the contract (the message names the file and column)."""


# identity of a pre-trained unit: replicate (RNG seed), steps of the run, the MS run's own RNG seed
# and learning-rate multiplier (collect.UNIT)
UNIT_COLUMNS = ("pt_seed", "pt_steps", "ms_seed", "lr_mult")
# column -> kind: "str" (may be empty), "int" (non-null), "Int" (nullable int), "float" (NaN allowed),
# "bool"
RESULTS_COLUMNS: dict[str, str] = {
    "model_id": "str",
    "kind": "str",
    "seed_steps": "Int",
    "variant": "str",
    "pt_seed": "Int",
    "pt_steps": "Int",
    "ms_seed": "Int",
    "lr_mult": "float",
    "method": "str",
    "knob": "str",
    "knob_value": "float",
    "option": "str",
    "task": "str",
    "metric": "str",
    "is_main": "bool",
    "split": "str",
    "ft_seed": "int",
    "value": "float",
    "ci_low": "float",
    "ci_high": "float",
    "experiments": "str",
}
CHANCE_COLUMNS: dict[str, str] = {"task": "str", "metric": "str", "value": "float"}
DISTANCES_COLUMNS: dict[str, str] = {
    "model_id": "str",
    "seed_steps": "Int",
    "variant": "str",
    "pt_seed": "Int",
    "pt_steps": "Int",
    "ms_seed": "Int",
    "lr_mult": "float",
    "metric": "str",
    "scope": "str",
    "value": "float",
}
PRETRAIN_COLUMNS: dict[str, str] = {
    "model_id": "str",
    "kind": "str",
    "seed_steps": "Int",
    "variant": "str",
    "pt_seed": "Int",
    "pt_steps": "Int",
    "ms_seed": "Int",
    "lr_mult": "float",
    "steps": "Int",
    "metric": "str",
    "value": "float",
}
FILES: dict[str, dict[str, str]] = {
    "results": RESULTS_COLUMNS,
    "chance": CHANCE_COLUMNS,
    "distances": DISTANCES_COLUMNS,
    "pretrain": PRETRAIN_COLUMNS,
}
DESIGN_FILE = "design.json"
# the columns that identify one row of each file (duplicates are an error)
KEYS: dict[str, tuple[str, ...]] = {
    "results": ("model_id", "task", "metric", "split", "ft_seed"),
    "chance": ("task", "metric"),
    "distances": ("model_id", "metric", "scope"),
    "pretrain": ("model_id", "steps", "metric"),
}
KINDS = ("untrained", "random", "init", "ma", "ms", "merged")
PRETRAIN_KINDS = ("init", "seed", "ma", "ms")
SPLITS = ("test", "val")
EXPERIMENTS = ("E0", "E1", "E2", "E3", "E4", "E5", "E6")
VARIANTS = ("all", "attn", "ffn", "ln")
# l2_rms = L2 / sqrt(number of parameters compared): the per-parameter L2; cosine, SSD and TSSD are
# per-coordinate means already
DISTANCE_METRICS = ("l2_rms", "tssd", "l2", "cosine", "ssd")
# PAPER.md §5: "L2 and TSSD are the paper's two" is our best reading, not a fact; C3 judges L2 per
# parameter (l2_rms), so that models with fewer merged parameters (the LN variant) are comparable
PAPER_DISTANCE_METRICS = ("l2_rms", "tssd")
CONVERGENCE_METRIC = "val_last_gain"

# display order of tasks and of each task's metrics (PAPER.md §6); unknown ones follow, sorted
TASKS = ("vqa", "coco", "flickr", "nlvr2", "imagenet", "ade20k", "text")
TASK_NAMES = {
    "vqa": "VQA",
    "coco": "COCO",
    "flickr": "Flickr30k",
    "nlvr2": "NLVR2",
    "imagenet": "ImageNet",
    "ade20k": "ADE20k",
    "text": "Text",
}
METRIC_ORDER = (
    "vqa_score",
    "ir_r1",
    "ir_r5",
    "ir_r10",
    "tr_r1",
    "tr_r5",
    "tr_r10",
    "r_mean",
    "accuracy",
    "top1",
    "miou",
    "pixel_acc",
)
# merge methods: the official in-place arithmetic vs the task-arithmetic formula (PAPER.md §4)
METHODS = ("interpolation", "arithmetic", "arithmetic_formula", "regmean", "ties", "dare")
METHOD_NAMES = {
    "interpolation": "interpolation",
    "arithmetic": "arithmetic (official in-place)",
    "arithmetic_formula": "arithmetic (Ilharco formula)",
    "regmean": "RegMean",
    "ties": "TIES",
    "dare": "DARE",
}
METHOD_DESCRIPTIONS = {
    "interpolation": "alpha * W^v + (1 - alpha) * W^l (three experts: 2/3 alpha, 2/3 (1 - alpha), 1/3)",
    "arithmetic": "the official code's in-place loop w <- w + lam * (W^m - w) over m = v, l (, vl)",
    "arithmetic_formula": "task arithmetic (Ilharco et al. 2023): W^0 + lam * sum_m (W^m - W^0)",
    "regmean": "RegMean (Jin et al. 2023) on the linear layers, plain mean elsewhere",
    "ties": "TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint mean",
    "dare": "DARE (Yu et al. 2024): random drop and rescale of modality vectors",
}
# methods that are not the paper's (PAPER.md §7, E6)
OURS_METHODS = ("arithmetic_formula", "ties", "dare")
VARIANT_NAMES = {"all": "No sharing", "attn": "Custom Attn", "ffn": "Custom FFN", "ln": "Custom LN"}
KIND_NAMES = {
    "untrained": "untrained (random init, no fine-tuning)",
    "random": "random init",
    "init": "init (MIM)",
    "ma": "MA",
    "ms": "MS (unmerged)",
    "merged": "merged",
}
NOT_FOUND = "not found"
NOT_RUN = "not run"


def order_key(values: list[str] | tuple[str, ...], order: tuple[str, ...]) -> list[str]:
    """``values`` deduplicated, in ``order`` first, then the unknown ones sorted."""
    seen = list(dict.fromkeys(v for v in values if v == v))  # drops NaN
    known = [v for v in order if v in seen]
    return known + sorted(v for v in seen if v not in order)
