"""ADE20k on E0 alone with the per-patch linear decoder reading every block's patch tokens.

A calibration probe (issue 19), not part of the study: it fine-tunes ADE20k from one backbone with
the study's recipe, but the decoder gets the patch tokens of every block concatenated (as BEiT's
UperNet reads blocks 4, 6, 8 and 12) instead of the last block's. Run it in a clone where the study
ran (it reads ``params.yaml``, ``data/micro`` and the ``runs/`` checkpoints) and compare random init
with the pre-trained backbones, fine-tuning seed by seed:

    python benchmarks/ade20k_decoder_probe.py all_blocks random:0 0
    python benchmarks/ade20k_decoder_probe.py all_blocks runs/init/last.safetensors 0
    python benchmarks/ade20k_decoder_probe.py last_block runs/init/last.safetensors 0   # the study's

Prints one JSON line: the mode, backbone, seed, and the test and val mIoU.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types

import torch

from vlmerge_core.config import load_params
from vlmerge_core.data import load_world
from vlmerge_core.tasks import registry
from vlmerge_core.tasks.engine import run_finetune, task_config
from vlmerge_core.tasks.heads import SegDecoder


def all_blocks_decoder(task, model, seed: int) -> None:
    """Replace ``task``'s decoder with one over the concatenated patch tokens of every block."""
    feats: list[torch.Tensor] = []
    for blk in model.blocks:
        blk.register_forward_hook(lambda m, i, o: feats.append(o if torch.is_tensor(o) else o[0]))
    L, D = len(model.blocks), model.cfg.width
    torch.manual_seed(seed)
    task.head = SegDecoder(
        L * D, task.num_classes, model.cfg.image_size // model.cfg.patch_size, model.cfg.image_size
    )

    def forward(self, model, batch):
        feats.clear()
        model.forward_image(batch["images"])
        return self.head(torch.cat([f[:, 1:] for f in feats[-L:]], dim=-1))

    task._forward = types.MethodType(forward, task)


def main(mode: str, spec: str, seed: int) -> dict:
    torch.set_num_threads(1)
    p = load_params("params.yaml")
    cfg = dataclasses.replace(task_config(p.finetune, "ade20k"), rng_seed=seed)
    model = registry.load_backbone(spec, p.model)
    model.set_dropout(cfg.drop_path, cfg.text_dropout)
    torch.manual_seed(seed)
    task = registry.build_task("ade20k", model, cfg, load_world(p.data.root), source=spec)
    if mode == "all_blocks":
        all_blocks_decoder(task, model, seed)
    elif mode != "last_block":
        raise SystemExit(f"mode must be all_blocks or last_block, got {mode!r}")
    res = run_finetune(model, task, cfg)
    return {"mode": mode, "spec": spec, "seed": seed, "test": res["test"]["miou"], "val": res["val"]["miou"]}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
