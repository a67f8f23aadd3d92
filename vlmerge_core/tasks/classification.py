"""Image classification (ImageNet-1k, Deng et al. 2009; the micro-world's image classes).

Model path, as ``compute_img_cls`` of the official code: the image alone through the ``v`` path
(``forward_image``), the mean of all its output tokens ([CLS] included, as the official
``image_feats.mean(1)``) -> one linear layer; cross-entropy; metric top-1 accuracy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from vlmerge_core.config import FinetuneConfig
from vlmerge_core.data.real import read_image_folders
from vlmerge_core.tasks.base import ClassifierTask, subsample, subsample_size, train_images
from vlmerge_core.tasks.heads import LinearClassifier


def load_split(world: Any, cfg: FinetuneConfig, image_size: int, split: str) -> dict[str, Any]:
    """Raw split: ``{"images", "labels": int64 [N], "classes": list[str]}``."""
    root = cfg.real_paths.get("imagenet")
    if root:
        return read_image_folders(root, split, image_size)
    return {
        "images": world.images(split),
        "labels": np.asarray(world.labels(split), np.int64),
        "classes": [str(c) for c in range(world.num_image_classes)],
    }


class ClassificationTask(ClassifierTask):
    name = "imagenet"
    select_metric = "top1"
    main_metric = "top1"
    accuracy_name = "top1"

    def __init__(self, model: nn.Module, data: dict[str, Any], cfg: FinetuneConfig, tokenizer: Any) -> None:
        super().__init__(model, data, cfg, tokenizer)
        self.classes = list(data["train"]["classes"])
        self.splits = {}
        for split, raw in data.items():
            keep = subsample(len(raw["labels"]), subsample_size(cfg, split), split, cfg.rng_seed)
            self.splits[split] = {
                "images": raw["images"],
                "image": keep.astype(np.int64),
                "labels": torch.as_tensor(np.asarray(raw["labels"])[keep], dtype=torch.long),
            }
        self.head = LinearClassifier(self.dim, len(self.classes))

    def _inputs(
        self, s: dict[str, Any], idx: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        return {"images": train_images(s["images"], s["image"][idx.numpy()], self.cfg, generator)}

    def _forward(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return self.head(model.forward_image(batch["images"])["tokens"].mean(1))  # (B, 1+N, D) -> (B, D)

    def examples(self, model: nn.Module, split: str = "test", n: int = 4) -> list[dict[str, Any]]:
        s, idx, pred = self._first_predictions(model, split, n)
        return [
            {
                "images": [s["images"][int(s["image"][i])]],
                "text": "class",
                "pred": self.classes[p],
                "truth": self.classes[int(s["labels"][i])],
            }
            for i, p in zip(idx, pred)
        ]
