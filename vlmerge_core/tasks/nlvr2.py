"""Natural-language visual reasoning over image pairs (NLVR2, Suhr et al. 2019; micro-world pairs).

Model path, as ``compute_nlvr2`` of the official code: the statement is run through the fusion path
twice, once with the left and once with the right image (``forward_fused``; both passes share one
batch of size 2B here), the two pooled features are concatenated and classified by
:class:`MLPClassifier` (2D -> 2D -> LN -> GELU -> 2); cross-entropy on true/false. Metric: accuracy,
reported on ``val`` (NLVR2 dev) and ``test`` (NLVR2 test-P). As the official code, the second image
gets its own token type (``image_token_type_idx = 2``): the backbone's token-type table grows a third
row, initialised from the image row (:meth:`~vlmerge_core.model.multiway.MultiwayTransformer.add_token_type`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from vlmerge_core.config import FinetuneConfig
from vlmerge_core.data.real import read_nlvr2
from vlmerge_core.tasks.base import (
    ClassifierTask,
    subsample,
    subsample_size,
    text_batch,
    tokenize,
    train_images,
)
from vlmerge_core.tasks.heads import MLPClassifier


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
        self.second_type = model.add_token_type() if model.token_type_embed.num_embeddings < 3 else 2

    def _inputs(
        self, s: dict[str, Any], idx: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        i = idx.numpy()
        ids, mask = text_batch(s["ids"], s["mask"], idx)
        left = train_images(s["images"], s["left"][i], self.cfg, generator)
        right = train_images(s["images"], s["right"][i], self.cfg, generator)
        return {"ids": ids, "mask": mask, "left": left, "right": right}

    def _forward(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        ids, mask = batch["ids"], batch["mask"]
        left = model.forward_fused(batch["left"], ids, mask)
        right = model.forward_fused(batch["right"], ids, mask, self.second_type)
        return self.head(torch.cat([left["cls"], right["cls"]], dim=-1))  # (B, 2D) -> (B, 2)

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
