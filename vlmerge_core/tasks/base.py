"""Shared pieces of the task modules: the task base class, subsampling, tokenising, image batches.

A task object holds its splits (raw images as an indexable uint8 source, pre-tokenised texts, labels),
its head (the new parameters) and the methods used by :func:`~vlmerge_core.tasks.engine.run_finetune`:
``train_loss(model, idx, generator)``, ``outcomes(model, split)`` (per-example outcomes, from which
``evaluate(model, split)`` computes the metrics and the bootstrap their intervals) and
``examples(model, split, n)`` (a few predictions for the figures).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlmerge_core.config import FinetuneConfig
from vlmerge_core.tasks.metrics import Outcomes, accuracy_outcomes

SPLITS = ("train", "val", "test")
EVAL_BATCH = 256  # evaluation batch size (no gradients)


def init_head_weights(module: nn.Module) -> None:
    """Head initialisation of the official code (``objectives.init_weights``): N(0, 0.02), zero bias."""
    if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv2d, nn.ConvTranspose2d)):
        module.weight.data.normal_(mean=0.0, std=0.02)
        if getattr(module, "bias", None) is not None:
            module.bias.data.zero_()
    elif isinstance(module, nn.LayerNorm):
        module.bias.data.zero_()
        module.weight.data.fill_(1.0)


def subsample(n: int, k: int, split: str, rng_seed: int) -> np.ndarray:
    """Indices kept of ``n`` examples: all when ``k`` is 0 or >= n; else a seeded subset (train) or the
    first ``k`` (val/test, so that every model is evaluated on the same examples)."""
    if k <= 0 or k >= n:
        return np.arange(n)
    if split == "train":
        g = torch.Generator().manual_seed(rng_seed)
        return np.sort(torch.randperm(n, generator=g)[:k].numpy())
    return np.arange(k)


def subsample_size(cfg: FinetuneConfig, split: str) -> int:
    """How many examples of ``split`` a task keeps (0 = all): the val set, used only to pick the
    epoch, may be cut further than the test set (``val_subsample``)."""
    if split == "train":
        return cfg.train_subsample
    if split == "val" and cfg.val_subsample:
        return cfg.val_subsample
    return cfg.eval_subsample


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> normalised float ``[B, 3, H, W]`` (the data module's transform)."""
    from vlmerge_core.data.loaders import image_to_tensor

    return image_to_tensor(np.ascontiguousarray(images))


def tokenize(tokenizer: Any, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[N, T]`` and mask ``[N, T]`` (True = real token) of ``texts``."""
    from vlmerge_core.data.loaders import encode_text

    if not len(texts):
        return torch.zeros(0, max_len, dtype=torch.long), torch.zeros(0, max_len, dtype=torch.bool)
    return encode_text(tokenizer, list(texts), max_len)


def image_batch(
    images: np.ndarray, cfg: FinetuneConfig, generator: torch.Generator | None, photometric_only: bool = False
) -> torch.Tensor:
    """uint8 images ``[B, H, W, 3]`` -> normalised float ``[B, 3, H, W]``; with a ``generator`` (training)
    first the train transform ``cfg.augment`` (:func:`~vlmerge_core.data.augment.augment_images`)."""
    if generator is not None:
        from vlmerge_core.data.augment import augment_images

        images = augment_images(np.ascontiguousarray(images), cfg.augment, generator, photometric_only)
    return images_to_tensor(images)


def text_batch(ids: torch.Tensor, mask: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``idx`` of pre-tokenised texts, padding columns beyond the batch's longest text dropped
    (masked keys change nothing but cost time)."""
    ids, mask = ids[idx], mask[idx]
    T = max(1, int(mask.sum(1).max())) if len(idx) else 1
    return ids[:, :T], mask[:, :T]


def batches(n: int, size: int = EVAL_BATCH):
    """Consecutive index ranges covering ``0..n``."""
    for s in range(0, n, size):
        yield torch.arange(s, min(n, s + size))


class BaseTask:
    """Common state of a task: config, model geometry, tokenizer and the kept examples per split.

    Subclasses set ``name``, ``select_metric`` (val metric for best-epoch selection), ``main_metric``
    (the headline number) and ``metric_names``, build ``self.head`` and implement the three methods.
    """

    name = ""
    select_metric = ""
    main_metric = ""

    def __init__(self, model: nn.Module, data: dict[str, Any], cfg: FinetuneConfig, tokenizer: Any) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.max_len = model.cfg.max_text_len
        self.dim = model.cfg.width
        self.data = data
        self.head: nn.Module = nn.Module()

    @property
    def n_train(self) -> int:
        raise NotImplementedError

    def train_loss(self, model: nn.Module, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def outcomes(self, model: nn.Module, split: str) -> Outcomes:
        """Per-example outcomes of ``split`` (model and head already in eval mode, no gradients)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        """The metrics of ``split`` (percent)."""
        return self.outcomes(model, split).metrics()

    def examples(self, model: nn.Module, split: str = "test", n: int = 4) -> list[dict[str, Any]]:
        """A few test predictions: ``[{"images": [uint8 HxWx3, ...], "text": str, "pred": str,
        "truth": str, optional "mask_pred"/"mask_true"}]``."""
        raise NotImplementedError


class ClassifierTask(BaseTask):
    """A task scored by cross-entropy over ``_logits(model, split_data, idx)`` and accuracy against
    ``split_data["labels"]``; subclasses implement ``_logits`` and ``examples``."""

    accuracy_name = "accuracy"

    @property
    def n_train(self) -> int:
        return len(self.splits["train"]["labels"])

    def _logits(
        self, model: nn.Module, s: dict[str, Any], idx: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Logits of rows ``idx``; ``generator`` (training only) draws the image augmentation."""
        raise NotImplementedError

    def train_loss(self, model: nn.Module, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        s = self.splits["train"]
        return F.cross_entropy(self._logits(model, s, idx, generator), s["labels"][idx])

    def outcomes(self, model: nn.Module, split: str) -> Outcomes:
        s = self.splits[split]
        logits = torch.cat([self._logits(model, s, idx) for idx in batches(len(s["labels"]))])
        return accuracy_outcomes(logits, s["labels"], self.accuracy_name)

    @torch.no_grad()
    def _first_predictions(
        self, model: nn.Module, split: str, n: int
    ) -> tuple[dict[str, Any], list[int], list[int]]:
        """The split data, the first ``n`` indices and their predicted classes (for ``examples``)."""
        s = self.splits[split]
        idx = torch.arange(min(n, len(s["labels"])))
        return s, idx.tolist(), self._logits(model, s, idx).argmax(1).tolist()
