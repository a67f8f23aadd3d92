"""Fine-tune tasks under ``torchrun`` (one rank of N) and write rank 0's metrics: a helper of
``test_tasks_ddp.py``, run as ``torchrun --standalone --nproc_per_node N ddp_worker.py WORLD OUT CFG``
(CFG: JSON of ``{"finetune": {...}, "model": {...}, "tasks": [...]}``)."""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from vlmerge_core.config import FinetuneConfig, ModelConfig
from vlmerge_core.data import load_world
from vlmerge_core.io import write_json
from vlmerge_core.tasks import run_task


def main(world_dir: str, out: str, spec_json: str) -> None:
    torch.set_num_threads(1)
    spec = json.loads(spec_json)
    cfg, model_cfg = FinetuneConfig(**spec["finetune"]), ModelConfig(**spec["model"])
    world = load_world(world_dir)
    res = {}
    for task in spec["tasks"]:
        m = run_task(task, "random:0", cfg, world, model_cfg=model_cfg).metrics
        res[task] = {k: v for k, v in m.items() if k != "seconds"}
    if dist.get_rank() == 0:
        write_json(out, {"world_size": dist.get_world_size(), "metrics": res}, digits=12)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
