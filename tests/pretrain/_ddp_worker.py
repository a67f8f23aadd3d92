"""Run by ``torchrun --nproc_per_node 2`` in test_pretrain_ddp: a smoke seed run on gloo/CPU."""

from __future__ import annotations

import dataclasses
import sys

import torch

from vlmerge_core.config import profile_params
from vlmerge_core.data import load_world
from vlmerge_core.pretrain import run_pretrain
from vlmerge_core.pretrain.distributed import cleanup_distributed

if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)  # float32 summation-order noise is amplified by Adam's
    # normalisation where gradients nearly cancel (a pico model at init); float64 makes it vanish
    world_root, out_dir, init = sys.argv[1:4]
    p = profile_params("smoke")
    cfg = dataclasses.replace(p.seed_pretrain, steps=3, batch_size=8, grad_accum=2, save_steps=[])
    run_pretrain(cfg, p.model, load_world(world_root), out_dir, init=init, stage="seed", device="cpu")
    cleanup_distributed()
