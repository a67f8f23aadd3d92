"""Shared pieces of the task modules: the task base class, subsampling, tokenising, image batches.

A task object holds its splits (raw images as an indexable uint8 source, pre-tokenised texts, labels),
its head (the new parameters) and the methods used by :func:`~vlmerge_core.tasks.engine.run_finetune`:
``train_batch(idx, generator)`` (the global batch's inputs on the CPU: every random draw of the step),
``batch_loss(model, batch)`` (the loss of a batch or of a share of it, :func:`take`, on the task's
device), ``outcomes(model, split)`` (per-example outcomes, from which ``evaluate(model, split)``
computes the metrics and the bootstrap their intervals; under several processes each rank evaluates
its share and the results are all-gathered, :meth:`BaseTask._eval_rows`) and ``examples(model, split,
n)`` (a few predictions for the figures).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlmerge_core.config import FinetuneConfig
from vlmerge_core.data.augment import augment_images
from vlmerge_core.data.loaders import encode_text, image_to_tensor
from vlmerge_core.data.real import ImageFiles
from vlmerge_core.tasks.metrics import Outcomes, accuracy_from_predictions
from vlmerge_core.tasks.parallel import Runtime, gather_parts, split_rows

SPLITS = ("train", "val", "test")
EVAL_BATCH = 256  # default evaluation batch size (finetune.eval_batch_size)
IMAGE_KEYS = ("images", "left", "right")  # batch entries holding uint8 images [B, H, W, 3]


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
    return image_to_tensor(np.ascontiguousarray(images))


def tokenize(tokenizer: Any, texts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[N, T]`` and mask ``[N, T]`` (True = real token) of ``texts``."""
    if not len(texts):
        return torch.zeros(0, max_len, dtype=torch.long), torch.zeros(0, max_len, dtype=torch.bool)
    return encode_text(tokenizer, list(texts), max_len)


def augment_batch(
    images: np.ndarray, cfg: FinetuneConfig, generator: torch.Generator | None, photometric_only: bool = False
) -> np.ndarray:
    """uint8 images ``[B, H, W, 3]``; with a ``generator`` (training) after the train transform
    ``cfg.augment`` (:func:`~vlmerge_core.data.augment.augment_images`, one image after the other)."""
    if generator is None:
        return images
    return augment_images(np.ascontiguousarray(images), cfg.augment, generator, photometric_only)


def train_images(
    src: Any, rows: np.ndarray, cfg: FinetuneConfig, generator: torch.Generator | None,
    photometric_only: bool = False,
) -> np.ndarray:  # fmt: skip
    """uint8 images ``src[rows]`` ``[B, S, S, 3]``, as :func:`augment_batch`; but real files
    (:class:`~vlmerge_core.data.real.ImageFiles`) under the ``official`` transform are cropped from the
    decoded original and the crop resized to the task's size, as the official
    ``square_transform_randaug`` (one image after the other: the same draws as :func:`augment_batch`)."""
    if generator is None or cfg.augment != "official" or photometric_only or not isinstance(src, ImageFiles):
        return augment_batch(src[rows], cfg, generator, photometric_only)
    return np.stack(
        [augment_images(src.original(int(i))[None], "official", generator, size=src.size)[0] for i in rows]
    ) if len(rows) else src[rows]  # fmt: skip


def image_batch(
    images: np.ndarray, cfg: FinetuneConfig, generator: torch.Generator | None, photometric_only: bool = False
) -> torch.Tensor:
    """uint8 images ``[B, H, W, 3]`` -> normalised float ``[B, 3, H, W]`` (:func:`augment_batch` first)."""
    return images_to_tensor(augment_batch(images, cfg, generator, photometric_only))


def _trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(1, int(mask.sum(1).max())) if len(mask) else 1
    return ids[:, :T], mask[:, :T]


def text_batch(ids: torch.Tensor, mask: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``idx`` of pre-tokenised texts, padding columns beyond the batch's longest text dropped
    (masked keys change nothing but cost time)."""
    return _trim(ids[idx], mask[idx])


def batches(n: int, size: int = EVAL_BATCH):
    """Consecutive index ranges covering ``0..n``."""
    for s in range(0, n, size):
        yield torch.arange(s, min(n, s + size))


def take(batch: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
    """Rows ``rows`` of every array of a batch (a rank's share, a micro-batch), text padding beyond the
    share's longest text dropped as :func:`text_batch` does."""
    out = {k: v[rows.numpy()] if isinstance(v, np.ndarray) else v[rows] for k, v in batch.items()}
    if "mask" in out:
        out["ids"], out["mask"] = _trim(out["ids"], out["mask"])
    return out


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A batch for the model: uint8 images normalised (:func:`images_to_tensor`), tensors on ``device``
    (on the CPU the very same tensors)."""
    out = {}
    for k, v in batch.items():
        if k in IMAGE_KEYS:
            v = images_to_tensor(v)
        out[k] = v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
    return out


class BaseTask:
    """Common state of a task: config, model geometry, tokenizer and the kept examples per split.

    Subclasses set ``name``, ``select_metric`` (val metric for best-epoch selection), ``main_metric``
    (the headline number) and ``metric_names``, build ``self.head`` and implement ``n_train``,
    ``train_batch``, ``batch_loss``, ``outcomes`` and ``examples``. ``runtime`` (device, ranks) is set
    by the engine; ``global_loss`` is True when ``batch_loss`` is the whole global batch's loss on every
    rank (retrieval's contrastive loss over all-gathered embeddings) rather than a mean over the rows
    it is given (:meth:`loss_weight` of them).
    """

    name = ""
    select_metric = ""
    main_metric = ""
    global_loss = False  # batch_loss is the global batch's loss on every rank (no share weighting)

    def __init__(self, model: nn.Module, data: dict[str, Any], cfg: FinetuneConfig, tokenizer: Any) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.max_len = model.cfg.max_text_len
        self.dim = model.cfg.width
        self.data = data
        self.head: nn.Module = nn.Module()
        self.runtime = Runtime()

    @property
    def n_train(self) -> int:
        raise NotImplementedError

    def train_batch(self, idx: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
        """The inputs of training rows ``idx`` on the CPU (uint8 images augmented with ``generator``)."""
        raise NotImplementedError

    def batch_loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """The loss of a batch from :meth:`train_batch` (or rows of it, :func:`take`), on the device."""
        raise NotImplementedError

    def loss_weight(self, batch: dict[str, Any]) -> int:
        """How many terms the mean of :meth:`batch_loss` is over (rows; segmentation: labelled pixels)."""
        return len(batch["ids"] if "ids" in batch else batch["images"])

    def train_loss(self, model: nn.Module, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The loss of training rows ``idx`` in one piece (one process)."""
        return self.batch_loss(model, self.train_batch(idx, generator))

    def _device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return to_device(batch, self.runtime.device)

    def _eval_rows(self, n: int, fn: Any) -> tuple[torch.Tensor, ...] | None:
        """``fn(idx)`` (a tuple of CPU tensors) over ``0..n`` in batches of ``cfg.eval_batch_size``, each
        rank over its share (:func:`~vlmerge_core.tasks.parallel.split_rows`), concatenated in rank
        order on every rank; None when ``n`` is 0."""
        rt, size = self.runtime, self.cfg.eval_batch_size
        rows = split_rows(n, rt.world_size)[rt.rank]
        with rt.autocast():
            parts = [fn(rows[s : s + size]) for s in range(0, len(rows), size)]
        parts = gather_parts(parts, rt)
        return tuple(torch.cat(col) for col in zip(*parts)) if parts else None

    def outcomes(self, model: nn.Module, split: str) -> Outcomes:
        """Per-example outcomes of ``split`` (model and head already in eval mode, no gradients)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        """The metrics of ``split`` (percent)."""
        return self.outcomes(model, split).metrics()

    def write_submission(self, model: nn.Module, name: str) -> Path | None:
        """The answers of an unlabelled test split for its evaluation server, when the task has one
        and ``cfg`` asks for it (VQA's test-dev); the file written, else None."""
        return None

    def examples(self, model: nn.Module, split: str = "test", n: int = 4) -> list[dict[str, Any]]:
        """A few test predictions: ``[{"images": [uint8 HxWx3, ...], "text": str, "pred": str,
        "truth": str, optional "mask_pred"/"mask_true"}]``."""
        raise NotImplementedError


class ClassifierTask(BaseTask):
    """A task scored by cross-entropy over ``_forward(model, batch)`` and accuracy against
    ``split_data["labels"]``; subclasses implement ``_inputs``, ``_forward`` and ``examples``."""

    accuracy_name = "accuracy"

    @property
    def n_train(self) -> int:
        return len(self.splits["train"]["labels"])

    def _inputs(
        self, s: dict[str, Any], idx: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        """The CPU inputs of rows ``idx``; ``generator`` (training only) draws the image augmentation."""
        raise NotImplementedError

    def _forward(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """Logits of a batch already on the device."""
        raise NotImplementedError

    def _logits(
        self, model: nn.Module, s: dict[str, Any], idx: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Logits of rows ``idx`` (on the device)."""
        return self._forward(model, self._device(self._inputs(s, idx, generator)))

    def train_batch(self, idx: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
        s = self.splits["train"]
        return {**self._inputs(s, idx, generator), "labels": s["labels"][idx]}

    def batch_loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        b = self._device(batch)
        return F.cross_entropy(self._forward(model, b), b["labels"])

    def loss_weight(self, batch: dict[str, Any]) -> int:
        return len(batch["labels"])

    def outcomes(self, model: nn.Module, split: str) -> Outcomes:
        s = self.splits[split]
        rows = self._eval_rows(len(s["labels"]), lambda idx: (self._logits(model, s, idx).argmax(-1).cpu(),))
        pred = rows[0] if rows else torch.zeros(0, dtype=torch.long)
        return accuracy_from_predictions(pred, s["labels"], self.accuracy_name)

    @torch.no_grad()
    def _first_predictions(
        self, model: nn.Module, split: str, n: int
    ) -> tuple[dict[str, Any], list[int], list[int]]:
        """The split data, the first ``n`` indices and their predicted classes (for ``examples``)."""
        s = self.splits[split]
        idx = torch.arange(min(n, len(s["labels"])))
        return s, idx.tolist(), self._logits(model, s, idx).argmax(1).tolist()
