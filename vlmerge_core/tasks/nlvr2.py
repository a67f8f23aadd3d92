"""Natural-language visual reasoning over image pairs (NLVR2, Suhr et al. 2019; micro-world pairs).

Model path, as ``compute_nlvr2`` of the official code: the statement is run through the fusion path
twice, once with the left and once with the right image (``forward_fused``; both passes share one
batch of size 2B here), the two pooled features are concatenated and classified by
:class:`MLPClassifier` (2D -> 2D -> LN -> GELU -> 2); cross-entropy on true/false. Metric: accuracy,
reported on ``val`` (NLVR2 dev) and ``test`` (NLVR2 test-P). Deviation: the official code marks the
second image with its own token type (``image_token_type_idx = 2``); our backbone has one image token
type, so the two images are told apart only by their slot in the concatenation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from vlmerge_core.config import FinetuneConfig
from vlmerge_core.tasks.base import (
    ClassifierTask,
    images_to_tensor,
    subsample,
    subsample_size,
    text_batch,
    tokenize,
)
from vlmerge_core.tasks.heads import MLPClassifier
from vlmerge_core.tasks.real import read_nlvr2


def load_split(world: Any, cfg: FinetuneConfig, image_size: int, split: str) -> dict[str, Any]:
    """Raw split: ``{"images", "pairs": [{left, right, statement, label: bool}]}``."""
    root = cfg.real_paths.get("nlvr2")
    if root:
        return read_nlvr2(root, split, image_size)
    return {"images": world.images(split), "pairs": world.nlvr2(split)}


class NLVR2Task(ClassifierTask):
    name = "nlvr2"
    select_metric = "accuracy"
    main_metric = "accuracy"

    def __init__(self, model: nn.Module, data: dict[str, Any], cfg: FinetuneConfig, tokenizer: Any) -> None:
        super().__init__(model, data, cfg, tokenizer)
        self.splits: dict[str, dict[str, Any]] = {}
        for split, raw in data.items():
            pairs = raw["pairs"]
            pairs = [pairs[i] for i in subsample(len(pairs), subsample_size(cfg, split), split, cfg.rng_seed)]
            ids, mask = tokenize(tokenizer, [p["statement"] for p in pairs], self.max_len)
            self.splits[split] = {
                "images": raw["images"],
                "ids": ids,
                "mask": mask,
                "left": np.asarray([p["left"] for p in pairs], np.int64),
                "right": np.asarray([p["right"] for p in pairs], np.int64),
                "labels": torch.tensor([int(bool(p["label"])) for p in pairs], dtype=torch.long),
                "statements": [p["statement"] for p in pairs],
            }
        self.head = MLPClassifier(2 * self.dim, 2 * self.dim, 2)

    def _logits(self, model: nn.Module, s: dict[str, Any], idx: torch.Tensor) -> torch.Tensor:
        i = idx.numpy()
        B = len(i)
        images = images_to_tensor(np.concatenate([s["images"][s["left"][i]], s["images"][s["right"][i]]]))
        ids, mask = text_batch(s["ids"], s["mask"], idx)
        pooled = model.forward_fused(images, ids.repeat(2, 1), mask.repeat(2, 1))["cls"]  # (2B, D)
        return self.head(torch.cat([pooled[:B], pooled[B:]], dim=-1))  # (B, 2D) -> (B, 2)

    def examples(self, model: nn.Module, split: str = "test", n: int = 4) -> list[dict[str, Any]]:
        s, idx, pred = self._first_predictions(model, split, n)
        return [
            {
                "images": [s["images"][int(s["left"][i])], s["images"][int(s["right"][i])]],
                "text": s["statements"][i],
                "pred": str(bool(p)),
                "truth": str(bool(s["labels"][i])),
            }
            for i, p in zip(idx, pred)
        ]
