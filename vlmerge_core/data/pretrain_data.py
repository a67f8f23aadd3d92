"""Image-text pre-training pairs from the official arrow files, COCO's release format or the micro-world.

One interface, three sources (:data:`DATA_FORMATS`), each a :class:`PretrainPairs` whose item ``i``
is one (image, caption) pair, as the official ``BaseDataset`` indexes them (every caption of every
image is an item):
``{"image": float [3, S, S] in [-1, 1], "ids": Long [T], "mask": Bool [T], "index": image index}``,
the items of :class:`~vlmerge_core.data.loaders.PairDataset`. Images are decoded, resized and
tokenised on access, i.e. in the DataLoader's workers; nothing is held decoded in memory. With
``augment`` (:data:`~vlmerge_core.data.augment.AUGMENT_MODES`) the train transform of
:func:`~vlmerge_core.data.augment.augment_images` is applied after the resize to the model's size
(the official ``square_transform_randaug`` crops the full-size image before resizing).

- ``"arrow"`` (:class:`ArrowPairs`): the files of the official data preparation (ViLT's
  ``write_coco_karpathy.py``, ``write_vg.py``, ``write_conceptual_caption.py``, ``write_sbu.py``,
  which vl-merging's DATA.md runs): pyarrow IPC files with an ``image`` column (encoded image bytes)
  and a ``caption`` column (list of strings), memory-mapped, one table per file stem of
  :data:`ARROW_STEMS`. Repeated captions of an image are dropped (official ``remove_duplicate``; in
  first-seen order here, where the official ``list(set(...))`` order varies between processes).
- ``"coco_karpathy"`` (:class:`KarpathyPairs`): ``karpathy/dataset_coco.json`` and its image folders,
  parsed by :func:`vlmerge_core.data.real.read_karpathy` (train = train + restval).
- ``"micro"`` (:class:`MicroPairs`): a :class:`~vlmerge_core.data.world.World`'s captions.

:func:`make_pretrain_loader` wraps any of them in a :class:`PretrainLoader`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import Dataset

from vlmerge_core.data.augment import AUGMENT_MODES, augment_images
from vlmerge_core.data.loaders import encode_text, image_to_tensor
from vlmerge_core.data.real import read_karpathy

DATA_FORMATS = ("arrow", "coco_karpathy", "micro")  # what a pre-training run read (metrics' data_format)

# file stems (``<root>/<stem>.arrow``) the official dataset classes read for their train split
# (vl-merging's ``coco_caption_karpathy_dataset.py`` reads train only, ViLT's train + restval: both here)
ARROW_STEMS: dict[str, tuple[str, ...]] = {
    "coco": ("coco_caption_karpathy_train",),
    "coco_restval": ("coco_caption_karpathy_restval",),
    "vg": ("vg",),
    "cc": tuple(f"conceptual_caption_train_{i}" for i in range(30)),
    "sbu": tuple(f"sbu_{i}" for i in range(9)),
}
ARROW_PREFIX = (
    "code224_"  # vl-merging's name of the same files (``code224_vg.arrow``, ``code224_sbu_0.arrow``)
)
ARROW_COLUMNS = ("image", "caption")  # the columns every pre-training arrow file must have


class PretrainDataError(ValueError):
    """A pre-training data file is malformed (the message names the file and the record)."""


def resize_pixels(im: Image.Image, size: int) -> np.ndarray:
    """RGB, bicubic resize to ``size`` x ``size`` (as :class:`~vlmerge_core.data.real.ImageFiles`): uint8 [S, S, 3]."""
    im = im.convert("RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC)
    return np.array(im)


def decode_image(data: bytes, where: str) -> Image.Image:
    """Encoded image bytes -> a loaded PIL image; undecodable bytes raise an error naming ``where``."""
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except OSError as exc:
        raise PretrainDataError(f"{where}: cannot decode image: {exc}") from None
    return im


class PretrainPairs(Dataset):
    """Base of the pre-training sources: ``texts[i]`` is caption ``i``, ``image_index[i]`` its image.

    Subclasses fill ``texts``, ``image_index``, ``num_images`` and ``data_format`` and define
    :meth:`load_image`.
    """

    data_format = ""

    def __init__(self, tokenizer: Any, max_len: int, image_size: int, augment: str = "none"):
        if augment not in AUGMENT_MODES:
            raise ValueError(f"augment must be one of {list(AUGMENT_MODES)}, got {augment!r}")
        self.tokenizer, self.max_len, self.image_size, self.augment = tokenizer, max_len, image_size, augment
        self.aug_seed, self.epoch = 0, 0  # set by the loader (PretrainLoader.set_epoch)
        self.texts: list[str] = []
        self.image_index: list[int] = []
        self.num_images = 0

    def load_image(self, j: int) -> Image.Image:
        """Image ``j``, decoded."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.texts)

    def image(self, i: int) -> torch.Tensor:
        """Item ``i``'s image: decoded, resized, augmented (``augment``), normalised: float [3, S, S].

        The augmentation's draws come from a generator seeded by (``aug_seed``, ``epoch``, ``i``), so
        an item looks the same whatever the worker, the number of workers or the rank that reads it.
        """
        x = resize_pixels(self.load_image(self.image_index[i]), self.image_size)[None]  # (1, S, S, 3)
        if self.augment != "none":
            state = np.random.SeedSequence([self.aug_seed, self.epoch, i]).generate_state(2, np.uint64)
            x = augment_images(x, self.augment, torch.Generator().manual_seed(int(state[0] >> 1)))
        return image_to_tensor(x)[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = self.image_index[i]
        ids, mask = encode_text(self.tokenizer, [self.texts[i]], self.max_len)
        return {
            "image": self.image(i),
            "ids": ids[0],
            "mask": mask[0],
            "index": torch.tensor(j),
        }

    def describe(self) -> dict[str, Any]:
        """What the source holds, for metrics and run records."""
        return {
            "data_format": self.data_format,
            "n_pairs": len(self),
            "n_images": self.num_images,
            "augment": self.augment,
        }


# -------------------------------------------------------------------------------------------- arrow
def arrow_paths(root: str | Path, datasets: Sequence[str]) -> list[Path]:
    """The arrow files of ``datasets`` (keys of :data:`ARROW_STEMS`) under ``root``.

    A stem is read from ``<stem>.arrow`` (ViLT's ``write_*.py`` name) or else from
    ``code224_<stem>.arrow`` (vl-merging's). As the official dataset classes, shards that are absent
    are skipped (the CC and SBU shard counts depend on how many images were downloaded), but a
    dataset without any file is an error.
    """
    root, out = Path(root), []
    for name in datasets:
        if name not in ARROW_STEMS:
            raise KeyError(f"unknown pre-training dataset {name!r}; expected one of {sorted(ARROW_STEMS)}")
        names = [
            next((n for n in (s, ARROW_PREFIX + s) if (root / f"{n}.arrow").is_file()), None)
            for s in ARROW_STEMS[name]
        ]
        found = [root / f"{n}.arrow" for n in names if n]
        if not found:
            raise FileNotFoundError(
                f"{root}: no arrow file of {name!r} (expected {ARROW_STEMS[name][0]}.arrow)"
            )
        out += found
    return out


def open_arrow(path: Path) -> pa.Table:
    """A memory-mapped arrow IPC file (nothing is read until a column is used)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: arrow file not found")
    try:
        return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise PretrainDataError(f"{path}: not a readable arrow file ({exc})") from None


def _arrow_captions(table: pa.Table, path: Path) -> list[list[str]]:
    missing = [c for c in ARROW_COLUMNS if c not in table.column_names]
    if missing:
        raise PretrainDataError(f"{path}: missing column(s) {missing}; has {table.column_names}")
    captions = table.column("caption").to_pylist()
    for row, caps in enumerate(captions):
        if not isinstance(caps, list) or not caps or not all(isinstance(c, str) for c in caps):
            raise PretrainDataError(f"{path}: row {row}: 'caption' must be a non-empty list of strings")
    return [list(dict.fromkeys(caps)) for caps in captions]


class ArrowPairs(PretrainPairs):
    """Pairs of the official arrow files (:func:`arrow_paths`), memory-mapped per process."""

    data_format = "arrow"

    def __init__(self, paths: Sequence[str | Path], tokenizer: Any, max_len: int, image_size: int, **kw: Any):
        super().__init__(tokenizer, max_len, image_size, **kw)
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("ArrowPairs: no arrow file given")
        self.rows: list[tuple[int, int]] = []  # image j -> (file, row)
        for f, path in enumerate(self.paths):
            for row, caps in enumerate(_arrow_captions(open_arrow(path), path)):
                self.texts += caps
                self.image_index += [len(self.rows)] * len(caps)
                self.rows.append((f, row))
        self.num_images = len(self.rows)
        self._tables: dict[int, pa.Table] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tables": {}}  # a worker maps the files itself

    def load_image(self, j: int) -> Image.Image:
        f, row = self.rows[j]
        if f not in self._tables:
            self._tables[f] = open_arrow(self.paths[f])
        data = self._tables[f].column("image")[row].as_py()
        return decode_image(data, f"{self.paths[f]}: row {row}")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "files": [p.name for p in self.paths]}


# ----------------------------------------------------------------------------------- COCO, micro
class KarpathyPairs(PretrainPairs):
    """Pairs of COCO (or Flickr30k) in the Karpathy release format (``karpathy/dataset_coco.json``)."""

    data_format = "coco_karpathy"

    def __init__(
        self, root: str | Path, tokenizer: Any, max_len: int, image_size: int, split: str = "train",
        dataset: str = "coco", **kw: Any,
    ):  # fmt: skip
        super().__init__(tokenizer, max_len, image_size, **kw)
        data = read_karpathy(root, split, image_size, dataset)
        self.paths = data["images"].paths
        for j, caps in enumerate(data["captions"]):
            self.texts += caps
            self.image_index += [j] * len(caps)
        self.num_images = len(self.paths)

    def load_image(self, j: int) -> Image.Image:
        path = self.paths[j]
        try:
            return decode_image(path.read_bytes(), str(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"image file not found: {path}") from None


class MicroPairs(PretrainPairs):
    """Pairs of a micro-world split (the items of :class:`~vlmerge_core.data.loaders.PairDataset`)."""

    data_format = "micro"

    def __init__(
        self, world: Any, split: str = "train", style: str = "coco", tokenizer: Any = None,
        max_len: int | None = None, image_size: int | None = None, **kw: Any,
    ):  # fmt: skip
        cfg = world.config
        super().__init__(
            tokenizer or world.tokenizer(), max_len or cfg.max_text_len, image_size or cfg.image_size, **kw
        )
        self.images = world.images(split)
        for s in ("coco", "flickr") if style == "both" else (style,):
            for j, caps in enumerate(world.captions(split, s)):
                self.texts += caps
                self.image_index += [j] * len(caps)
        self.num_images = len(self.images)

    def load_image(self, j: int) -> Image.Image:
        return Image.fromarray(self.images[j])


def pretrain_pairs(
    data_format: str, source: Any, tokenizer: Any, max_len: int, image_size: int, **kw: Any
) -> PretrainPairs:
    """The :class:`PretrainPairs` of ``data_format`` over ``source``: arrow file paths (or
    ``(root, datasets)``), a Karpathy root folder, or a :class:`World`."""
    if data_format == "arrow":
        paths = arrow_paths(*source) if isinstance(source, tuple) else source
        return ArrowPairs(paths, tokenizer, max_len, image_size, **kw)
    if data_format == "coco_karpathy":
        return KarpathyPairs(source, tokenizer, max_len, image_size, **kw)
    if data_format == "micro":
        return MicroPairs(source, tokenizer=tokenizer, max_len=max_len, image_size=image_size, **kw)
    raise KeyError(f"unknown pre-training data_format {data_format!r}; expected one of {list(DATA_FORMATS)}")
