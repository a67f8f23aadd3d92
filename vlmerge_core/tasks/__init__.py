"""Downstream fine-tuning and evaluation (PAPER.md section 6): one module per task, a shared loop.

``finetune_task(task, checkpoint_or_model, cfg, world, out_dir=None) -> metrics`` is the entry point;
``run_task`` returns the fine-tuned model and task too (for figures). Metrics are pure functions in
:mod:`~vlmerge_core.tasks.metrics`; real-format readers in :mod:`~vlmerge_core.tasks.real`.
"""

from __future__ import annotations

from vlmerge_core.tasks.engine import run_finetune, task_config
from vlmerge_core.tasks.metrics import (
    accuracy,
    confusion_matrix,
    retrieval_recalls,
    segmentation_scores,
    vqa_score,
    vqa_targets,
)
from vlmerge_core.tasks.real import RealFormatError
from vlmerge_core.tasks.registry import (
    PAPER_RECIPES,
    TASKS,
    TaskRun,
    build_task,
    finetune_task,
    predictions,
    run_task,
)

__all__ = [
    "PAPER_RECIPES",
    "TASKS",
    "RealFormatError",
    "TaskRun",
    "accuracy",
    "build_task",
    "confusion_matrix",
    "finetune_task",
    "predictions",
    "retrieval_recalls",
    "run_finetune",
    "run_task",
    "segmentation_scores",
    "task_config",
    "vqa_score",
    "vqa_targets",
]
