"""Image-text retrieval (COCO and Flickr30k Karpathy splits; the micro-world's two caption styles).

Model path: dual encoder, as ``compute_irtr`` / ``compute_irtr_recall`` of the official code: the image
alone through the ``v`` path (``forward_image``), the caption alone through the ``l`` path
(``forward_text``), their [CLS] features through the backbone's bias-free ITC projections
(``heads.itc_image`` / ``heads.itc_text``) and L2-normalised. Loss: symmetric InfoNCE (CLIP, Radford
et al. 2021) at the backbone's learnable temperature ``exp(logit_scale)``; as the official data
module, every caption is a training item (with its image), so an epoch visits each caption once.
Metric: recall@1/5/10 of
image retrieval (text query, ``ir_r*``) and text retrieval (image query, ``tr_r*``) over the whole
split, top-K with ties by index as the official code (pessimistic ties as extra ``*_pessimistic``
fields; :func:`~vlmerge_core.tasks.metrics.retrieval_outcomes`); the best epoch is chosen on IR@1 +
TR@1 (``r1_sum``), the headline is the mean of the six recalls (``r_mean``). The bootstrap unit is
a test image with its captions. Under N processes the InfoNCE is over the embeddings of every rank,
all-gathered with gradients (the official ``all_gather_with_grad``); every rank holds the global loss
and DDP averages the ranks' gradients, so the step is exactly one process's (not scaled by 1/N).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlmerge_core.config import FinetuneConfig
from vlmerge_core.data.real import read_karpathy
from vlmerge_core.tasks.base import (
    BaseTask,
    images_to_tensor,
    subsample,
    subsample_size,
    text_batch,
    tokenize,
    train_images,
)
from vlmerge_core.tasks.heads import ProjectionPair
from vlmerge_core.tasks.metrics import Outcomes, retrieval_outcomes
from vlmerge_core.tasks.parallel import gather_rows_with_grad


def load_split(world: Any, cfg: FinetuneConfig, image_size: int, split: str, task: str) -> dict[str, Any]:
    """Raw split: ``{"images", "captions": list[list[str]]}`` (``task`` is ``"coco"`` or ``"flickr"``)."""
    root = cfg.real_paths.get(task)
    if root:
        return read_karpathy(root, split, image_size, dataset=task)
    return {"images": world.images(split), "captions": world.captions(split, style=task)}


class RetrievalTask(BaseTask):
    select_metric = "r1_sum"
    main_metric = "r_mean"
    global_loss = True  # the InfoNCE over all-gathered embeddings: the global batch's loss on every rank

    def __init__(
        self, model: nn.Module, data: dict[str, Any], cfg: FinetuneConfig, tokenizer: Any, name: str = "coco"
    ) -> None:
        super().__init__(model, data, cfg, tokenizer)
        self.name = name
        heads = getattr(model, "heads", None)
        # the backbone's pre-trained ITC projections are fine-tuned as backbone parameters; a
        # backbone without them gets fresh ones as the task head
        self.head = nn.Module() if hasattr(heads, "itc_image") else ProjectionPair(self.dim)
        self.splits: dict[str, dict[str, Any]] = {}
        for split, raw in data.items():
            keep = subsample(len(raw["captions"]), subsample_size(cfg, split), split, cfg.rng_seed)
            caps = [raw["captions"][i] for i in keep]
            flat = [c for cs in caps for c in cs]
            ids, mask = tokenize(tokenizer, flat, self.max_len)
            counts = torch.tensor([len(cs) for cs in caps])
            self.splits[split] = {
                "images": raw["images"],
                "image": np.asarray(keep, np.int64),
                "ids": ids,
                "mask": mask,
                "text_image": torch.repeat_interleave(torch.arange(len(caps)), counts),
                "offset": torch.cumsum(counts, 0) - counts,
                "count": counts,
                "captions": flat,
            }

    @property
    def n_train(self) -> int:
        """Training items: every caption of the kept training images."""
        return len(self.splits["train"]["captions"])

    def _proj(self, model: nn.Module) -> nn.Module:
        return model.heads if hasattr(getattr(model, "heads", None), "itc_image") else self.head

    def embed_images(
        self, model: nn.Module, s: dict[str, Any], idx: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        images = train_images(s["images"], s["image"][idx.numpy()], self.cfg, generator)
        return self._embed_images(model, images_to_tensor(images).to(self.runtime.device))

    def _embed_images(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._proj(model).itc_image(model.forward_image(images)["cls"]), dim=-1)

    def embed_texts(self, model: nn.Module, s: dict[str, Any], tidx: torch.Tensor) -> torch.Tensor:
        ids, mask = (t.to(self.runtime.device) for t in text_batch(s["ids"], s["mask"], tidx))
        return self._embed_texts(model, ids, mask)

    def _embed_texts(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._proj(model).itc_text(model.forward_text(ids, mask)["cls"]), dim=-1)

    def train_batch(self, idx: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
        """Captions ``idx`` and their images (an image may recur in a batch through two of its
        captions, as in the official data module)."""
        s = self.splits["train"]
        ids, mask = text_batch(s["ids"], s["mask"], idx)
        images = train_images(s["images"], s["image"][s["text_image"][idx].numpy()], self.cfg, generator)
        return {"images": images, "ids": ids, "mask": mask}

    def batch_loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """Symmetric InfoNCE over the global batch; under several processes over the embeddings of
        every rank, all-gathered with gradients (``batch["rank_rows"]``: each rank's rows), so each rank
        holds the global loss (:attr:`global_loss`)."""
        b = self._device(batch)
        img = self._embed_images(model, b["images"]).float()
        txt = self._embed_texts(model, b["ids"], b["mask"]).float()
        if "rank_rows" in b:
            img = gather_rows_with_grad(img, b["rank_rows"], self.runtime.rank)
            txt = gather_rows_with_grad(txt, b["rank_rows"], self.runtime.rank)
        logits = model.logit_scale.exp() * img @ txt.t()  # (B, B)
        target = torch.arange(len(img), device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2

    def _sim(self, model: nn.Module, split: str) -> torch.Tensor:
        s = self.splits[split]
        img = self._eval_rows(len(s["image"]), lambda i: (self.embed_images(model, s, i).float().cpu(),))
        txt = self._eval_rows(len(s["captions"]), lambda t: (self.embed_texts(model, s, t).float().cpu(),))
        empty = torch.zeros(0, self.dim)
        return (img[0] if img else empty) @ (txt[0] if txt else empty).t()

    def outcomes(self, model: nn.Module, split: str) -> Outcomes:
        return retrieval_outcomes(self._sim(model, split), self.splits[split]["text_image"])

    @torch.no_grad()
    def examples(self, model: nn.Module, split: str = "test", n: int = 4) -> list[dict[str, Any]]:
        s = self.splits[split]
        top = self._sim(model, split).argmax(1).tolist()
        return [
            {
                "images": [s["images"][int(s["image"][i])]],
                "text": "image -> text (top 1)",
                "pred": s["captions"][top[i]],
                "truth": s["captions"][int(s["offset"][i])],
            }
            for i in range(min(n, len(s["image"])))
        ]


def gram_batches(
    world: Any, cfg: FinetuneConfig, tokenizer: Any, image_size: int, max_len: int, batch_size: int = 32
) -> Iterator[dict[str, torch.Tensor]]:
    """COCO retrieval's training pairs (``finetune.real_paths.coco``, else the micro-world's COCO-style
    captions) as image-caption batches in order, the first caption of each image: the official source
    of RegMean's Gram matrices (``cache_gram_matrices.py`` runs COCO retrieval), for
    :func:`~vlmerge_core.merge.gram.collect_grams`."""
    split = load_split(world, cfg, image_size, "train", "coco")
    images, captions = split["images"], split["captions"]
    for start in range(0, len(captions), batch_size):
        idx = np.arange(start, min(start + batch_size, len(captions)))
        enc = tokenizer([captions[i][0] for i in idx], padding="max_length", truncation=True,
                        max_length=max_len, return_tensors="pt")  # fmt: skip
        yield {"images": images_to_tensor(np.asarray(images[idx])), "ids": enc["input_ids"],
               "mask": enc["attention_mask"].bool()}  # fmt: skip
