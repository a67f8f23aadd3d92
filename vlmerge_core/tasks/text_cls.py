"""Text-only classification on the ``l`` path (a GLUE stand-in; SST-2-style TSV for real data).

Not in the official code nor, as far as found, in the paper (PAPER.md section 6): ours, to show damage
to the language expert. Model path: the text alone through the ``l`` path (``forward_text``), its
[CLS] feature -> one linear layer; cross-entropy; metric accuracy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlmerge_core.config import FinetuneConfig
from vlmerge_core.data.real import read_text_tsv
from vlmerge_core.tasks.base import ClassifierTask, subsample, subsample_size, text_batch, tokenize
from vlmerge_core.tasks.heads import LinearClassifier


def load_split(world: Any, cfg: FinetuneConfig, image_size: int, split: str) -> dict[str, Any]:
    """Raw split: ``{"items": [{text, label}]}``."""
    root = cfg.real_paths.get("text")
    return {"items": read_text_tsv(root, split) if root else list(world.text_cls(split))}


class TextClsTask(ClassifierTask):
    name = "text"
    select_metric = "accuracy"
    main_metric = "accuracy"

    def __init__(self, model: nn.Module, data: dict[str, Any], cfg: FinetuneConfig, tokenizer: Any) -> None:
        super().__init__(model, data, cfg, tokenizer)
        self.num_classes = 1 + max(int(x["label"]) for x in data["train"]["items"])
        self.splits = {}
        for split, raw in data.items():
            items = raw["items"]
            items = [items[i] for i in subsample(len(items), subsample_size(cfg, split), split, cfg.rng_seed)]
            ids, mask = tokenize(tokenizer, [x["text"] for x in items], self.max_len)
            self.splits[split] = {
                "ids": ids,
                "mask": mask,
                "texts": [x["text"] for x in items],
                "labels": torch.tensor([int(x["label"]) for x in items], dtype=torch.long),
            }
        self.head = LinearClassifier(self.dim, self.num_classes)

    def _inputs(
        self, s: dict[str, Any], idx: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        ids, mask = text_batch(s["ids"], s["mask"], idx)
        return {"ids": ids, "mask": mask}

    def _forward(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return self.head(model.forward_text(batch["ids"], batch["mask"])["cls"])

    def examples(self, model: nn.Module, split: str = "test", n: int = 4) -> list[dict[str, Any]]:
        s, idx, pred = self._first_predictions(model, split, n)
        return [
            {"images": [], "text": s["texts"][i], "pred": str(p), "truth": str(int(s["labels"][i]))}
            for i, p in zip(idx, pred)
        ]
