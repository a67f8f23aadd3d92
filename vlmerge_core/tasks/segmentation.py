"""Semantic segmentation (ADE20k, Zhou et al. 2017; the micro-world's shape masks).

Model path: the image alone through the ``v`` path, its patch tokens on their grid ->
:class:`SegDecoder` (a per-patch linear decoder, pixel-shuffled onto the image). The official code has
no segmentation recipe; BEiT fine-tunes UperNet on the outputs of blocks 4, 6, 8 and 12 of 12. As
BEiT, the decoder reads several blocks when ``seg_out_blocks`` names them (their patch tokens
concatenated, :meth:`~vlmerge_core.model.multiway.MultiwayTransformer.image_block_tokens`); with
``[]`` it reads the last block after the final norm (``forward_image``).
Loss: per-pixel cross-entropy, ignoring :data:`~vlmerge_core.tasks.metrics.SEG_IGNORE_LABEL` (ADE20k's
"other", ``reduce_zero_label``). Metric: mIoU over the classes present in the ground truth or the
predictions of the split, and pixel accuracy, from per-image intersection and union counts (the
bootstrap unit is an image). The micro-world's background (0) is a class of its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlmerge_core.config import FinetuneConfig
from vlmerge_core.data.real import ADE20K_CLASSES, read_ade20k
from vlmerge_core.tasks.base import BaseTask, augment_batch, subsample, subsample_size
from vlmerge_core.tasks.heads import SegDecoder
from vlmerge_core.tasks.metrics import SEG_IGNORE_LABEL, Outcomes, segmentation_counts, segmentation_outcomes


def load_split(world: Any, cfg: FinetuneConfig, image_size: int, split: str) -> dict[str, Any]:
    """Raw split: ``{"images", "masks": uint8 [N, S, S] (SEG_IGNORE_LABEL = ignore), "num_classes"}``."""
    root = cfg.real_paths.get("ade20k")
    if root:
        return {**read_ade20k(root, split, image_size), "num_classes": ADE20K_CLASSES}
    return {"images": world.images(split), "masks": world.masks(split), "num_classes": world.num_seg_classes}


class SegmentationTask(BaseTask):
    name = "ade20k"
    select_metric = "miou"
    main_metric = "miou"

    def __init__(self, model: nn.Module, data: dict[str, Any], cfg: FinetuneConfig, tokenizer: Any) -> None:
        super().__init__(model, data, cfg, tokenizer)
        self.num_classes = int(data["train"]["num_classes"])
        self.splits = {}
        for split, raw in data.items():
            keep = subsample(len(raw["images"]), subsample_size(cfg, split), split, cfg.rng_seed)
            self.splits[split] = {
                "images": raw["images"],
                "masks": raw["masks"],
                "image": keep.astype(np.int64),
            }
        grid = model.cfg.image_size // model.cfg.patch_size
        self.out_blocks = list(cfg.seg_out_blocks)
        depth = len(model.blocks)
        if any(b >= depth for b in self.out_blocks):
            raise ValueError(
                f"finetune seg_out_blocks {self.out_blocks}: the model has blocks 0..{depth - 1}"
            )
        width = self.dim * max(1, len(self.out_blocks))
        self.head = SegDecoder(width, self.num_classes, grid, model.cfg.image_size)

    @property
    def n_train(self) -> int:
        return len(self.splits["train"]["image"])

    def _inputs(
        self, s: dict[str, Any], idx: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        # masks are not transformed, so training images get the photometric ops only
        images = augment_batch(
            s["images"][s["image"][idx.numpy()]], self.cfg, generator, photometric_only=True
        )
        return {"images": images, "masks": self._masks(s, idx)}

    def _forward(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        if not self.out_blocks:  # the last block's patch tokens -> (B, C, S, S)
            return self.head(model.forward_image(batch["images"])["tokens"][:, 1:])
        feats = model.image_block_tokens(batch["images"], self.out_blocks)
        return self.head(torch.cat([f[:, 1:] for f in feats], dim=-1))  # (B, N, |blocks| D) -> (B, C, S, S)

    def _logits(
        self, model: nn.Module, s: dict[str, Any], idx: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self._forward(model, self._device(self._inputs(s, idx, generator)))

    def _masks(self, s: dict[str, Any], idx: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(np.asarray(s["masks"][s["image"][idx.numpy()]]), dtype=torch.long)

    def train_batch(self, idx: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
        return self._inputs(self.splits["train"], idx, generator)

    def batch_loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        b = self._device(batch)
        return F.cross_entropy(self._forward(model, b), b["masks"], ignore_index=SEG_IGNORE_LABEL)

    def loss_weight(self, batch: dict[str, Any]) -> int:
        """Labelled pixels: the cross-entropy is their mean."""
        return int((batch["masks"] != SEG_IGNORE_LABEL).sum())

    def _counts(
        self, model: nn.Module, s: dict[str, Any], idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self._logits(model, s, idx).argmax(1).cpu()
        return segmentation_counts(pred, self._masks(s, idx), self.num_classes, SEG_IGNORE_LABEL)

    def outcomes(self, model: nn.Module, split: str) -> Outcomes:
        s = self.splits[split]
        rows = self._eval_rows(len(s["image"]), lambda idx: self._counts(model, s, idx))
        empty = torch.zeros(0, self.num_classes, dtype=torch.long)
        return segmentation_outcomes(*(rows if rows else (empty, empty)))

    @torch.no_grad()
    def examples(self, model: nn.Module, split: str = "test", n: int = 4) -> list[dict[str, Any]]:
        s = self.splits[split]
        idx = torch.arange(min(n, len(s["image"])))
        pred, true = self._logits(model, s, idx).argmax(1).cpu(), self._masks(s, idx)
        out = []
        for k, i in enumerate(idx.tolist()):
            acc = 100.0 * (pred[k] == true[k]).float().mean().item()
            out.append(
                {
                    "images": [s["images"][int(s["image"][i])]],
                    "text": "segmentation",
                    "pred": f"pixel acc {acc:.0f}%",
                    "truth": "",
                    "mask_pred": pred[k].numpy(),
                    "mask_true": true[k].numpy(),
                }
            )
        return out
