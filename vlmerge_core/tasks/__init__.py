"""Downstream fine-tuning and evaluation (PAPER.md section 6): one module per task, a shared loop.

``finetune_task(task, backbone, cfg, world, out_dir=None) -> metrics`` is the entry point of one
fine-tuning; ``run_task`` returns the fine-tuned model and task too (for figures);
:func:`~vlmerge_core.tasks.stage.run_finetune_stage` runs a model on every task and fine-tuning seed
and writes the stage's metrics file. Metrics are pure functions of per-example outcomes in
:mod:`~vlmerge_core.tasks.metrics`, their confidence intervals in :mod:`~vlmerge_core.tasks.bootstrap`;
real-format readers in :mod:`~vlmerge_core.data.real`; figures in :mod:`~vlmerge_core.tasks.plots`;
the command line in :mod:`~vlmerge_core.tasks.cli`.
"""

from __future__ import annotations

from vlmerge_core.data.real import RealFormatError
from vlmerge_core.model.experts import TASKS
from vlmerge_core.tasks.bootstrap import bootstrap_ci
from vlmerge_core.tasks.engine import run_finetune, task_config
from vlmerge_core.tasks.metrics import (
    SEG_IGNORE_LABEL,
    Outcomes,
    accuracy,
    retrieval_outcomes,
    retrieval_recalls,
    segmentation_counts,
    segmentation_outcomes,
    vqa_score,
    vqa_targets,
)
from vlmerge_core.tasks.registry import (
    PAPER_RECIPES,
    TaskRun,
    build_task,
    finetune_task,
    load_backbone,
    predictions,
    random_model,
    run_task,
)
from vlmerge_core.tasks.stage import run_finetune_stage

__all__ = [
    "PAPER_RECIPES",
    "SEG_IGNORE_LABEL",
    "TASKS",
    "Outcomes",
    "RealFormatError",
    "TaskRun",
    "accuracy",
    "bootstrap_ci",
    "build_task",
    "finetune_task",
    "load_backbone",
    "predictions",
    "random_model",
    "retrieval_outcomes",
    "retrieval_recalls",
    "run_finetune",
    "run_finetune_stage",
    "run_task",
    "segmentation_counts",
    "segmentation_outcomes",
    "task_config",
    "vqa_score",
    "vqa_targets",
]
