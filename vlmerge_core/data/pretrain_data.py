"""Image-text pre-training pairs from the official arrow files, the datasets' releases or the micro-world.

One interface, four sources (:data:`DATA_FORMATS`), each a :class:`PretrainPairs` whose item ``i``
is one (image, caption) pair, as the official ``BaseDataset`` indexes them (every caption of every
image is an item):
``{"image": float [3, S, S] in [-1, 1], "ids": Long [T], "mask": Bool [T], "index": image index}``,
the items of :class:`~vlmerge_core.data.loaders.PairDataset`. Images are decoded, resized and
tokenised on access, i.e. in the DataLoader's workers; nothing is held decoded in memory. With
``augment`` (:data:`~vlmerge_core.data.augment.AUGMENT_MODES`) the train transform of
:func:`~vlmerge_core.data.augment.augment_images` is applied: ``official`` crops the full-size image
and resizes the crop, as the official ``square_transform_randaug``; the others resize first.

- ``"arrow"`` (:class:`ArrowPairs`): the files of the official data preparation (ViLT's
  ``write_coco_karpathy.py``, ``write_vg.py``, ``write_conceptual_caption.py``, ``write_sbu.py``,
  which vl-merging's DATA.md runs): pyarrow IPC files with an ``image`` column (encoded image bytes)
  and a ``caption`` column (list of strings), memory-mapped, one table per file stem of
  :data:`ARROW_STEMS`. Repeated captions of an image are dropped (official ``remove_duplicate``; in
  first-seen order here, where the official ``list(set(...))`` order varies between processes).
- ``"coco_karpathy"`` (:class:`KarpathyPairs`): ``karpathy/dataset_coco.json`` and its image folders,
  parsed by :func:`vlmerge_core.data.real.read_karpathy` (train = train + restval).
- ``"released"`` (:class:`ReleasedPairs`): COCO, Visual Genome, Conceptual Captions and SBU as
  released, i.e. in the layouts the official data preparation reads before it writes the arrow files
  (:data:`RELEASED_DATASETS`, one subfolder of a root each):

  - ``coco/``: the Karpathy layout above (train = train + restval);
  - ``vg/``: ``images/VG_100K/<id>.jpg``, ``images/VG_100K_2/<id>.jpg`` and
    ``annotations/region_descriptions.json`` (a list of ``{"regions": [{"image_id", "phrase", ...}],
    "id"}``); an image's captions are its regions' phrases (``write_vg.py``);
  - ``cc/``: ``images_train/<first four characters of name>/<name>`` and ``train_annot.json`` (a list
    of ``[image_file_path, caption]``); an image's id is the last component of ``image_file_path``
    and its captions are grouped by it (``write_conceptual_caption.py``);
  - ``sbu/``: the same as ``cc/`` with ``annot.json`` (``write_sbu.py``).

  As the official scripts, an image without a caption or a caption without an image file is left out;
  repeated captions of an image are dropped as for the arrow files. Images are listed in sorted path
  order (the official scripts shuffle them before writing the arrow files).
- ``"micro"`` (:class:`MicroPairs`): a :class:`~vlmerge_core.data.world.World`'s captions.

:func:`make_pretrain_loader` wraps any of them in a :class:`PretrainLoader`.
"""

from __future__ import annotations

import io
import json
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

DATA_FORMATS = (
    "arrow",
    "coco_karpathy",
    "released",
    "micro",
)  # what a pre-training run read (metrics' data_format)

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

RELEASED_DATASETS = ("coco", "vg", "cc", "sbu")  # the subfolders of a "released" root
RELEASED_ANNOT = {"cc": "train_annot.json", "sbu": "annot.json"}  # [image_file_path, caption] lists
VG_IMAGES = ("VG_100K", "VG_100K_2")  # the folders of Visual Genome's images (under ``images/``)
VG_REGIONS = Path("annotations") / "region_descriptions.json"


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


def read_image_file(path: Path) -> Image.Image:
    """An image file, decoded; a missing or undecodable file raises an error naming it."""
    try:
        return decode_image(path.read_bytes(), str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None


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
        """Item ``i``'s image: decoded, augmented (``augment``) to the model's size, normalised: float
        [3, S, S].

        ``official`` crops the decoded image at its own size and resizes the crop (the official
        ``square_transform_randaug``: ``RandomResizedCrop(S)`` of the original, then flip and
        RandAugment); the other modes resize first. The augmentation's draws come from a generator
        seeded by (``aug_seed``, ``epoch``, ``i``), so an item looks the same whatever the worker, the
        number of workers or the rank that reads it.
        """
        im = self.load_image(self.image_index[i])
        if self.augment == "none":
            return image_to_tensor(resize_pixels(im, self.image_size)[None])[0]
        state = np.random.SeedSequence([self.aug_seed, self.epoch, i]).generate_state(2, np.uint64)
        g = torch.Generator().manual_seed(int(state[0] >> 1))
        if self.augment == "official":
            x = augment_images(np.asarray(im.convert("RGB"))[None], "official", g, size=self.image_size)
        else:
            x = augment_images(resize_pixels(im, self.image_size)[None], self.augment, g)
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
        return read_image_file(self.paths[j])


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


# ----------------------------------------------------------------------------------------- released
def _released_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PretrainDataError(f"{path}: not valid JSON: {exc}") from None


def read_caption_pairs(root: Path, annot: str) -> tuple[list[Path], list[list[str]]]:
    """Conceptual Captions or SBU as released -> (image files, their captions).

    ``<root>/<annot>`` is a list of ``[image_file_path, caption]``; captions are grouped by the last
    component of ``image_file_path``, the image id, which names a file of ``<root>/images_train/*/*``
    (``<first four characters>/<id>``). Only files with a caption are kept.
    """
    path = root / annot
    records = _released_json(path)
    if not isinstance(records, list):
        raise PretrainDataError(f"{path}: expected a list of [image_file_path, caption] records")
    iid2captions: dict[str, list[str]] = {}
    for i, rec in enumerate(records):
        if not (isinstance(rec, list) and len(rec) == 2 and all(isinstance(x, str) for x in rec)):
            raise PretrainDataError(
                f"{path}: record {i}: expected [image_file_path, caption], got {rec!r:.80}"
            )
        iid2captions.setdefault(rec[0].split("/")[-1], []).append(rec[1])
    files = sorted(f for f in (root / "images_train").glob("*/*") if f.name in iid2captions)
    return files, [iid2captions[f.name] for f in files]


def _vg_regions(path: Path) -> dict[int, list[str]]:
    """image id -> its region phrases, from Visual Genome's ``region_descriptions.json``."""
    records = _released_json(path)
    if not isinstance(records, list):
        raise PretrainDataError(f"{path}: expected a list of {{'regions': [...], 'id': ...}} records")
    iid2captions: dict[int, list[str]] = {}
    for i, rec in enumerate(records):
        regions = rec.get("regions") if isinstance(rec, dict) else None
        if not isinstance(regions, list):
            raise PretrainDataError(f"{path}: record {i}: missing list 'regions'")
        for k, reg in enumerate(regions):
            iid, phrase = (reg.get("image_id"), reg.get("phrase")) if isinstance(reg, dict) else (None, None)
            if not isinstance(iid, int) or isinstance(iid, bool) or not isinstance(phrase, str):
                raise PretrainDataError(
                    f"{path}: record {i} region {k}: expected an int 'image_id' and a str 'phrase', "
                    f"got {reg!r:.80}"
                )
            iid2captions.setdefault(iid, []).append(phrase)
    return iid2captions


def read_vg(root: Path) -> tuple[list[Path], list[list[str]]]:
    """Visual Genome as released -> (image files, their captions: the phrases of their regions).

    An image's id is its file name without ``.jpg`` (``images/VG_100K/<id>.jpg``,
    ``images/VG_100K_2/<id>.jpg``); files whose name is not an id or that have no region are left out.
    """
    iid2captions = _vg_regions(root / VG_REGIONS)
    files = [
        f
        for sub in VG_IMAGES
        for f in sorted((root / "images" / sub).glob("*.jpg"))
        if f.stem.isdigit() and int(f.stem) in iid2captions
    ]
    return files, [iid2captions[int(f.stem)] for f in files]


def released_dataset(root: str | Path, name: str, image_size: int) -> tuple[list[Path], list[list[str]]]:
    """(image files, their captions) of dataset ``name`` (:data:`RELEASED_DATASETS`) under ``root``."""
    if name not in RELEASED_DATASETS:
        raise KeyError(
            f"unknown released pre-training dataset {name!r}; expected one of {list(RELEASED_DATASETS)}"
        )
    folder = Path(root) / name
    if not folder.is_dir():
        raise FileNotFoundError(f"{root}: no folder of the released {name!r} dataset (expected {folder})")
    if name == "coco":
        data = read_karpathy(folder, "train", image_size)
        return data["images"].paths, data["captions"]
    return read_vg(folder) if name == "vg" else read_caption_pairs(folder, RELEASED_ANNOT[name])


class ReleasedPairs(PretrainPairs):
    """Pairs of COCO, VG, CC and SBU in their release layouts (module docstring), one subfolder each."""

    data_format = "released"

    def __init__(
        self,
        root: str | Path,
        datasets: Sequence[str],
        tokenizer: Any,
        max_len: int,
        image_size: int,
        **kw: Any,
    ):
        super().__init__(tokenizer, max_len, image_size, **kw)
        if not datasets:
            raise ValueError("ReleasedPairs: no dataset given")
        self.root = Path(root)
        self.paths: list[Path] = []
        self.counts: dict[str, int] = {}  # dataset -> images
        for name in datasets:
            files, captions = released_dataset(self.root, name, image_size)
            for path, caps in zip(files, captions):
                caps = list(dict.fromkeys(caps))  # repeated captions dropped, first-seen order
                self.texts += caps
                self.image_index += [len(self.paths)] * len(caps)
                self.paths.append(path)
            self.counts[name] = len(files)
        self.num_images = len(self.paths)

    def load_image(self, j: int) -> Image.Image:
        return read_image_file(self.paths[j])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "datasets": dict(self.counts)}


def pretrain_pairs(
    data_format: str, source: Any, tokenizer: Any, max_len: int, image_size: int, **kw: Any
) -> PretrainPairs:
    """The :class:`PretrainPairs` of ``data_format`` over ``source``: arrow file paths (or
    ``(root, datasets)``), a Karpathy root folder, ``(root, datasets)`` of the released layouts, or a
    :class:`World`."""
    if data_format == "arrow":
        paths = arrow_paths(*source) if isinstance(source, tuple) else source
        return ArrowPairs(paths, tokenizer, max_len, image_size, **kw)
    if data_format == "coco_karpathy":
        return KarpathyPairs(source, tokenizer, max_len, image_size, **kw)
    if data_format == "released":
        return ReleasedPairs(*source, tokenizer, max_len, image_size, **kw)
    if data_format == "micro":
        return MicroPairs(source, tokenizer=tokenizer, max_len=max_len, image_size=image_size, **kw)
    raise KeyError(f"unknown pre-training data_format {data_format!r}; expected one of {list(DATA_FORMATS)}")
