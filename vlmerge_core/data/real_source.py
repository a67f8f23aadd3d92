"""Real pre-training data behind the interface the pre-training loop reads of a micro-world.

:func:`open_source` is what a pre-training stage opens: the micro-world (``data.pretrain_format:
micro``, :func:`~vlmerge_core.data.world.ensure_world`) or a :class:`RealSource` over the official
arrow files, COCO's Karpathy release or the released COCO/VG/CC/SBU folders (``arrow``,
``coco_karpathy``, ``released``). Both answer what the loop and its zero-shot evaluation ask:
``tokenizer()``, ``tokenizer_identity``, ``root``, ``data_format``, ``captions(split, style)`` and
``images(split)`` of the evaluation split, and ``pairs(...)``, the training pairs as a
:class:`~vlmerge_core.data.pretrain_data.PretrainPairs` for the DataLoader.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from vlmerge_core.config import DataConfig
from vlmerge_core.data.pretrain_data import (
    ArrowPairs,
    KarpathyPairs,
    PretrainPairs,
    ReleasedPairs,
    arrow_paths,
    decode_image,
    open_arrow,
    resize_pixels,
)
from vlmerge_core.data.real import read_karpathy
from vlmerge_core.data.tokenizer import load_identified_tokenizer
from vlmerge_core.data.world import World, ensure_world
from vlmerge_core.paths import resolve

__all__ = ["EVAL_ARROW", "RealSource", "open_source", "task_world"]

EVAL_ARROW = "coco_caption_karpathy_val"  # the zero-shot evaluation split of the arrow files


class RealSource:
    """The official arrow files (``arrow``), a Karpathy COCO folder (``coco_karpathy``) or a root of
    the released datasets' folders (``released``: ``coco/``, ``vg/``, ``cc/``, ``sbu/``).

    Training pairs are read lazily by the DataLoader's workers; the evaluation split (the Karpathy
    val images, at most ``data.eval_images``; ``released``: those of ``coco/``) is decoded once, on
    first use.
    """

    def __init__(self, cfg: DataConfig):
        if cfg.pretrain_format not in ("arrow", "coco_karpathy", "released"):
            raise ValueError(f"RealSource: data.pretrain_format {cfg.pretrain_format!r} is not real data")
        self.config = cfg
        self.data_format = cfg.pretrain_format
        self.root = resolve(cfg.pretrain_path)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.pretrain_path: {self.root} is not a folder")
        self._tok, self.tokenizer_identity = load_identified_tokenizer(resolve(cfg.tokenizer))

    def tokenizer(self) -> Any:
        """The study's tokenizer (``data.tokenizer``)."""
        return self._tok

    def pairs(self, max_len: int, image_size: int, augment: str = "none") -> PretrainPairs:
        """The training pairs (every caption of every image an item), decoded on access."""
        kw = {"augment": augment}
        if self.data_format == "arrow":
            return ArrowPairs(
                arrow_paths(self.root, self.config.pretrain_datasets), self._tok, max_len, image_size, **kw
            )
        if self.data_format == "released":
            return ReleasedPairs(
                self.root, self.config.pretrain_datasets, self._tok, max_len, image_size, **kw
            )
        return KarpathyPairs(self.root, self._tok, max_len, image_size, split="train", **kw)

    @cached_property
    def _eval(self) -> tuple[np.ndarray, list[list[str]]]:
        """(uint8 [N, S, S, 3] images, their captions) of the Karpathy val split, N <= eval_images."""
        n, size = self.config.eval_images, self.config.image_size
        if self.data_format == "arrow":
            path = self.root / f"{EVAL_ARROW}.arrow"
            table = open_arrow(path)
            rows = range(min(n, table.num_rows))
            caps = [list(dict.fromkeys(c)) for c in table.column("caption").slice(0, len(rows)).to_pylist()]
            images = [
                resize_pixels(decode_image(table.column("image")[r].as_py(), f"{path}: row {r}"), size)
                for r in rows
            ]
        else:
            val = read_karpathy(
                self.root / "coco" if self.data_format == "released" else self.root, "val", size
            )
            caps = val["captions"][:n]
            images = list(val["images"][np.arange(len(caps))])
        if not images:
            raise ValueError(f"{self.root}: the Karpathy val split (zero-shot evaluation) has no image")
        return np.stack(images), caps

    def images(self, split: str) -> np.ndarray:
        """The evaluation split's images (``split`` must be ``"val"``)."""
        self._check(split)
        return self._eval[0]

    def captions(self, split: str, style: str = "coco") -> list[list[str]]:
        """The evaluation split's captions per image (one caption style: COCO's)."""
        self._check(split)
        return self._eval[1] if style == "coco" else []

    @staticmethod
    def _check(split: str) -> None:
        if split != "val":
            raise ValueError(
                f"real pre-training data: zero-shot evaluation reads the val split, not {split!r}"
            )

    def describe(self) -> dict[str, Any]:
        return {"data_format": self.data_format, "root": str(self.config.pretrain_path)}


def task_world(cfg: DataConfig, world_dir: str | Path | None = None) -> World | None:
    """The micro-world that tasks without a ``finetune.real_paths`` entry read; ``None`` where the
    data are real (``data.source`` ``fixtures`` or ``real``: every task reads its path)."""
    if cfg.source != "micro":
        return None
    return ensure_world(cfg, world_dir or None)


def open_source(cfg: DataConfig, world_dir: str | Path | None = None) -> World | RealSource:
    """What pre-training reads: ``data.pretrain_format``'s source (micro: the world at ``world_dir``
    or ``data.root``, generated if missing)."""
    if cfg.pretrain_format == "micro":
        return ensure_world(cfg, world_dir or None)
    return RealSource(cfg)
