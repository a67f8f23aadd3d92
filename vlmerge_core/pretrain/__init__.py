"""Pre-training: objectives (MLM, ITC, ITC-vl, ITM with hard negatives, MIM, text-only MLM) and the loop."""

from __future__ import annotations

from vlmerge_core.pretrain.evaluate import evaluate_retrieval, retrieval_recalls
from vlmerge_core.pretrain.loop import (
    STAGES,
    NonFiniteLossError,
    build_stage_model,
    run_pretrain,
    stage_configs,
)
from vlmerge_core.pretrain.objectives import LOSS_NAMES, compute_losses
from vlmerge_core.pretrain.plots import fig_pretrain_losses

__all__ = [
    "LOSS_NAMES",
    "STAGES",
    "NonFiniteLossError",
    "build_stage_model",
    "compute_losses",
    "evaluate_retrieval",
    "fig_pretrain_losses",
    "retrieval_recalls",
    "run_pretrain",
    "stage_configs",
]
