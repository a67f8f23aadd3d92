"""Run alone or by ``torchrun --nproc_per_node 2`` in test_pretrain_real_data: a seed run on the arrow fixtures."""

from __future__ import annotations

import dataclasses
import sys

import torch

from vlmerge_core.config import profile_params
from vlmerge_core.data.real_source import RealSource
from vlmerge_core.pretrain import run_pretrain
from vlmerge_core.pretrain.distributed import cleanup_distributed

if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)  # as _ddp_worker: summation-order noise vanishes in float64
    fixtures, out_dir = sys.argv[1:3]
    p = profile_params("rehearsal")
    data = dataclasses.replace(p.data, pretrain_path=f"{fixtures}/arrows", tokenizer=f"{fixtures}/tokenizer")
    # exact ITC gradients: the official ones are 1/world-size of them, by design not those of one process
    cfg = dataclasses.replace(
        p.seed_pretrain, steps=3, batch_size=8, grad_accum=2, augment="none", itc_grad="exact"
    )
    model = dataclasses.replace(p.model, drop_path=0.0, text_dropout=0.0)
    run_pretrain(cfg, model, RealSource(data), out_dir, stage="seed", device="cpu")
    cleanup_distributed()
