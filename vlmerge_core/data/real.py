"""Readers of the real downstream datasets in their own release formats.

Each reader returns the same raw form as the micro-world accessors (see :mod:`vlmerge_core.data`), so
that one code path per task turns either into tensors: images come as an :class:`ImageFiles` source
(indexable like a uint8 ``[N, H, W, 3]`` array, files decoded on access and resized to the model's
image size), texts as strings. Layouts (those of the official vl-merging ``write_*.py`` scripts):

- VQAv2: ``v2_OpenEnded_mscoco_{train2014,val2014}_questions.json`` (``questions``: ``image_id``,
  ``question``, ``question_id``), ``v2_mscoco_{..}_annotations.json`` (``annotations``: ``question_id``,
  ``answers`` [{``answer``}] x 10, ``multiple_choice_answer``), images ``{sub}/COCO_{sub}_{id:012d}.jpg``.
  train = train2014; val2014 is split by image: its last ``val_images`` images are ``val`` (the
  official ``rest_val``), the others ``test`` (test-dev answers are not public).
- COCO / Flickr30k: Karpathy ``karpathy/dataset_{coco,flickr30k}.json`` (``images``: ``filename``,
  ``filepath``, ``split``, ``sentences`` [{``raw``}]); images ``{filepath}/{filename}`` (COCO) or
  ``flickr30k-images/{filename}``; train = train + restval.
- NLVR2: JSON lines ``nlvr2/data/{train,dev,test1}.json`` (``identifier``, ``sentence``, ``label``
  "True"/"False", ``directory`` for train); images ``images/train/{directory}/{pair}-img{0,1}.png`` or
  ``{dev,test1}/{pair}-img{0,1}.png`` where ``pair`` is the identifier without its sentence index.
- ImageNet: class folders ``{train,val}/<wnid>/*``; with a labelled ``test/`` folder val = ``val/``
  and test = ``test/``; without one (the usual release) test = ``val/`` and val is held out of train.
- ADE20k: ``images/{training,validation}/*.jpg`` with ``annotations/{..}/*.png`` (0 = ignore, class c
  stored as c + 1: mmsegmentation's ``reduce_zero_label``); test = validation, val held out of training.
- Text classification (GLUE SST-2 style): ``{train,dev}.tsv`` with ``sentence`` and ``label`` columns;
  with a labelled ``test.tsv`` val = dev and test = test; without one (GLUE's test labels are not
  public) test = dev and val is held out of train.

A held-out val (:func:`heldout_split`, ours: the release has no labelled split besides the one
reported) is a seeded random subset of the training examples (``HELDOUT_VAL[dataset]`` of them, at
most a tenth, seed :data:`HELDOUT_SEED`), removed from train, so that the epoch is never picked on
the examples that are reported.
"""

from __future__ import annotations

import csv
import functools
import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# label of pixels that no class owns (ADE20k's "other" after ``reduce_zero_label``); not the MLM
# ignore index of the data package
SEG_IGNORE_LABEL = 255
ADE20K_CLASSES = 150  # ADE20k's classes after reduce_zero_label (the segmentation head's outputs)

_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
HELDOUT_SEED = 0  # RNG seed of the validation examples held out of train (ours)
HELDOUT_VAL = {"imagenet": 10000, "ade20k": 2000, "text": 872}  # held-out val size (SST-2: its dev size)
_TSV_LABELLED = {"train": "train", "val": "dev", "test": "test"}  # text files when test.tsv has labels


class RealFormatError(ValueError):
    """A real dataset file has a malformed record (the message names the file and the record)."""


class ImageFiles:
    """Images on disk, read on access: ``src[idx]`` -> uint8 ``[len(idx), size, size, 3]`` (or masks)."""

    def __init__(self, paths: Sequence[Path], size: int, mask: bool = False) -> None:
        self.paths, self.size, self.mask = list(paths), size, mask

    def __len__(self) -> int:
        return len(self.paths)

    def _decode(self, i: int, convert: Any) -> np.ndarray:
        """``convert(image)`` of file ``i``; a missing or undecodable file raises an error naming it."""
        path = self.paths[i]
        try:
            with Image.open(path) as im:
                return convert(im)
        except FileNotFoundError:
            raise FileNotFoundError(f"image file not found: {path}") from None
        except OSError as exc:
            raise RealFormatError(f"{path}: cannot decode image: {exc}") from None

    def _load(self, i: int) -> np.ndarray:
        S = (self.size, self.size)
        if self.mask:
            return self._decode(i, lambda im: np.asarray(im.resize(S, Image.NEAREST), dtype=np.uint8))
        return self._decode(i, lambda im: np.asarray(im.convert("RGB").resize(S, Image.BICUBIC)))

    def original(self, i: int) -> np.ndarray:
        """Image ``i`` decoded at its own size: uint8 ``[H, W, 3]`` (the official train transform crops
        it before resizing)."""
        return self._decode(i, lambda im: np.asarray(im.convert("RGB")))

    def __getitem__(self, idx: Any) -> np.ndarray:
        idx = np.asarray(idx)
        if idx.ndim == 0:
            return self._load(int(idx))
        return (
            np.stack([self._load(int(i)) for i in idx])
            if len(idx)
            else np.zeros((0, self.size, self.size) + (() if self.mask else (3,)), np.uint8)
        )


def _need(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"real dataset file not found: {path}")
    return path


def _load_json(path: Path) -> Any:
    try:
        return json.loads(_need(path).read_text())
    except json.JSONDecodeError as exc:
        raise RealFormatError(f"{path}: not valid JSON: {exc}") from None


def _field(rec: Any, key: str, path: Path, where: str) -> Any:
    if not isinstance(rec, dict) or key not in rec:
        raise RealFormatError(f"{path}: {where}: missing key {key!r}")
    return rec[key]


def _check_images(paths: Sequence[Path], file: Path, names: Sequence[str]) -> None:
    for p, name in zip(paths, names):
        if not p.exists():
            raise FileNotFoundError(f"{file}: {name}: image file not found: {p}")


_ARTICLES = {"a", "an", "the"}


def normalize_answer(ans: str) -> str:
    """A light VQA answer normalisation (lower case, punctuation and articles removed)."""
    words = re.sub(r"[^\w\s']", " ", ans.lower()).split()
    return " ".join(w for w in words if w not in _ARTICLES)


# ----------------------------------------------------------------------------------------------- VQA
VQA_PROTOCOLS = ("heldout", "official")  # finetune.vqa_protocol
VQA_TEST_DEV = "test-dev2015"  # the official test split: questions only, scored by the EvalAI server


_VQA_SUBS = ("train2014", "val2014")  # the labelled sub-sets (annotation files)


def _vqa_annotations(root: Path, need: tuple[str, ...]) -> tuple[Counter, dict[str, dict[int, list[str]]]]:
    """multiple_choice_answer counts over train2014 + val2014 (the official vocabulary) and each
    sub-set's question id -> its ten normalised answers; the files of ``need`` must exist.

    A task reads three splits and the data stage two, each from the same files: they are parsed once
    while unchanged (the cache key holds each file's size and modification time). Read-only results.
    """
    files = [root / f"v2_mscoco_{sub}_annotations.json" for sub in _VQA_SUBS]
    for sub, path in zip(_VQA_SUBS, files):
        if sub in need:
            _need(path)
    stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files if p.exists())
    return _parse_vqa_annotations(root, stamp)


@functools.lru_cache(maxsize=1)
def _parse_vqa_annotations(root: Path, stamp: tuple) -> tuple[Counter, dict[str, dict[int, list[str]]]]:
    counter: Counter = Counter()
    ann_by_sub: dict[str, dict[int, list[str]]] = {}
    for sub in _VQA_SUBS:
        path = root / f"v2_mscoco_{sub}_annotations.json"
        if not path.exists():
            continue
        anns = _field(_load_json(path), "annotations", path, "top level")
        by_q = {}
        for i, a in enumerate(anns):
            qid = _field(a, "question_id", path, f"annotation {i}")
            where = f"annotation {i} (question_id {qid})"
            counter[normalize_answer(str(_field(a, "multiple_choice_answer", path, where)))] += 1
            answers = _field(a, "answers", path, where)
            if not isinstance(answers, list):
                raise RealFormatError(f"{path}: {where}: 'answers' must be a list")
            by_q[qid] = [
                normalize_answer(str(_field(x, "answer", path, f"{where} answer {j}")))
                for j, x in enumerate(answers)
            ]
        ann_by_sub[sub] = by_q
    return counter, ann_by_sub


def _vqa_questions(root: Path, sub: str, answers: dict[int, list[str]] | None) -> list[tuple]:
    """``(sub, image_id, question, answers, question_id)`` of ``sub``'s questions file, in file order
    (``answers`` None: an unlabelled split, every question's answers empty)."""
    qpath = root / f"v2_OpenEnded_mscoco_{sub}_questions.json"
    out = []
    for i, q in enumerate(_field(_load_json(qpath), "questions", qpath, "top level")):
        qid = _field(q, "question_id", qpath, f"question {i}")
        where = f"question {i} (question_id {qid})"
        iid, text = _field(q, "image_id", qpath, where), _field(q, "question", qpath, where)
        if answers is not None and qid not in answers:
            raise RealFormatError(f"{qpath}: {where}: no annotation with this question_id")
        out.append((sub, iid, str(text), [] if answers is None else answers[qid], qid))
    return out


def _vqa_split(root: Path, records: list[tuple], size: int, vocab: list[str]) -> dict[str, Any]:
    """The reader's dict of ``records``: their images (one per (sub-set, image id)), in order."""
    keys = list(dict.fromkeys((sub, iid) for sub, iid, *_ in records))
    pos = {k: n for n, k in enumerate(keys)}
    folder = {VQA_TEST_DEV: "test2015"}
    paths = [root / folder.get(sub, sub) / f"COCO_{folder.get(sub, sub)}_{iid:012d}.jpg" for sub, iid in keys]
    _check_images(paths, root, [f"{sub} image_id {iid}" for sub, iid in keys])
    questions = [
        {"image": pos[(sub, iid)], "question": t, "answers": a, "question_id": qid}
        for sub, iid, t, a, qid in records
    ]
    return {"images": ImageFiles(paths, size), "answers": vocab, "questions": questions}


def read_vqav2(
    root: str | Path, split: str, size: int, min_answer_count: int = 9, val_images: int = 1000,
    protocol: str = "heldout",
) -> dict[str, Any]:  # fmt: skip
    """VQAv2 -> ``{"images", "questions": [{image, question, answers, question_id}], "answers": vocab}``.

    ``heldout`` (ours): train = train2014; val = the last ``val_images`` images of val2014; test = the
    rest of val2014 (labelled, scored here). ``official``: train = train2014 + val2014 but its last
    2 x ``val_images`` images (the official ``trainable_val``), val = the first half of those, test the
    other half (the official code keeps ``val_images`` = 1000 for val and reports test-dev through the
    EvalAI server: :func:`read_vqav2_testdev` and :func:`vqa_submission` write its file; the labelled
    local test is ours). The answer vocabulary: ``multiple_choice_answer`` seen at least
    ``min_answer_count`` times in train + val (official).
    """
    root = Path(root)
    if split not in ("train", "val", "test"):
        raise KeyError(f"VQAv2 split {split!r}: expected train, val or test")
    if protocol not in VQA_PROTOCOLS:
        raise KeyError(f"VQAv2 protocol {protocol!r}: expected one of {list(VQA_PROTOCOLS)}")
    official = protocol == "official"
    need = ("train2014",) if split == "train" and not official else ("val2014",)
    counter, ann = _vqa_annotations(root, ("train2014", *need) if split == "train" else need)
    vocab = sorted(a for a, c in counter.items() if c >= min_answer_count)
    if split == "train" and not official:
        return _vqa_split(root, _vqa_questions(root, "train2014", ann["train2014"]), size, vocab)
    val = _vqa_questions(root, "val2014", ann["val2014"])
    ids = list(dict.fromkeys(r[1] for r in val))
    held = ids[-2 * val_images :] if official else ids
    keep = {
        "train": set(ids[: len(ids) - len(held)]),
        "val": set(held[-val_images:] if not official else held[:val_images]),
        "test": set(held[:-val_images] if not official else held[val_images:]),
    }[split]
    records = [r for r in val if r[1] in keep]
    if split == "train":
        records = _vqa_questions(root, "train2014", ann["train2014"]) + records
    return _vqa_split(root, records, size, vocab)


def read_vqav2_testdev(root: str | Path, size: int) -> dict[str, Any]:
    """The official test split (``v2_OpenEnded_mscoco_test-dev2015_questions.json``, ``test2015/``
    images): questions without answers, for the EvalAI submission file."""
    return _vqa_split(Path(root), _vqa_questions(Path(root), VQA_TEST_DEV, None), size, [])


# ----------------------------------------------------------------------------------------- retrieval
def read_karpathy(root: str | Path, split: str, size: int, dataset: str = "coco") -> dict[str, Any]:
    """Karpathy split JSON -> ``{"images", "captions": list[list[str]], "filenames"}``."""
    root = Path(root)
    name = {"coco": "dataset_coco.json", "flickr": "dataset_flickr30k.json"}[dataset]
    path = root / "karpathy" / name
    wanted = {"train": {"train", "restval"}, "val": {"val"}, "test": {"test"}}[split]
    images = _field(_load_json(path), "images", path, "top level")
    paths, captions, names = [], [], []
    for i, rec in enumerate(images):
        fname = _field(rec, "filename", path, f"image {i}")
        where = f"image {i} ({fname})"
        if _field(rec, "split", path, where) not in wanted:
            continue
        sents = _field(rec, "sentences", path, where)
        if not isinstance(sents, list) or not sents:
            raise RealFormatError(f"{path}: {where}: 'sentences' must be a non-empty list")
        captions.append([str(_field(s, "raw", path, f"{where} sentence {j}")) for j, s in enumerate(sents)])
        folder = rec.get("filepath") or ("flickr30k-images" if dataset == "flickr" else "")
        paths.append(root / folder / fname)
        names.append(where)
    _check_images(paths, path, names)
    return {"images": ImageFiles(paths, size), "captions": captions, "filenames": [p.name for p in paths]}


# --------------------------------------------------------------------------------------------- NLVR2
def read_nlvr2(root: str | Path, split: str, size: int) -> dict[str, Any]:
    """NLVR2 JSON lines -> ``{"images", "pairs": [{left, right, statement, label}]}``."""
    root = Path(root)
    name = {"train": "train", "val": "dev", "test": "test1"}[split]
    path = _need(root / "nlvr2" / "data" / f"{name}.json")
    paths: list[Path] = []
    index: dict[Path, int] = {}
    pairs = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RealFormatError(f"{path}: line {i + 1}: not valid JSON: {exc}") from None
        ident = _field(rec, "identifier", path, f"line {i + 1}")
        where = f"line {i + 1} (identifier {ident})"
        label = _field(rec, "label", path, where)
        if label not in ("True", "False"):
            raise RealFormatError(f"{path}: {where}: label must be 'True' or 'False', got {label!r}")
        pair = "-".join(str(ident).split("-")[:-1])
        folder = (
            root / "images" / "train" / str(_field(rec, "directory", path, where))
            if split == "train"
            else root / name
        )
        sides = []
        for side in (0, 1):
            p = folder / f"{pair}-img{side}.png"
            if p not in index:
                if not p.exists():
                    raise FileNotFoundError(f"{path}: {where}: image file not found: {p}")
                index[p] = len(paths)
                paths.append(p)
            sides.append(index[p])
        pairs.append(
            {
                "left": sides[0],
                "right": sides[1],
                "label": label == "True",
                "statement": str(_field(rec, "sentence", path, where)),
            }
        )
    return {"images": ImageFiles(paths, size), "pairs": pairs}


def heldout_split(
    n: int, k: int, seed: int = HELDOUT_SEED, what: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (kept train, held-out val) indices of ``n`` training examples: ``min(k, n // 10)`` (at
    least 1) drawn by a permutation seeded with ``seed``.

    Raises:
        RealFormatError: fewer than 2 examples in ``what`` (nothing to hold out).
    """
    if n < 2:
        raise RealFormatError(
            f"{what}: {n} training example(s); at least 2 are needed to hold out a val split"
        )
    k = max(1, min(k, n // 10))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])


def _heldout(split: str, n: int, dataset: str, what: str) -> np.ndarray:
    """The training rows that ``split`` (``train`` or ``val``) keeps when val is held out of train."""
    train, val = heldout_split(n, HELDOUT_VAL[dataset], what=what)
    return train if split == "train" else val


# ------------------------------------------------------------------------------------------ ImageNet
def read_image_folders(root: str | Path, split: str, size: int) -> dict[str, Any]:
    """ImageNet class-folder tree -> ``{"images", "labels": int64 [N], "classes": wnids}`` (module
    docstring: without ``test/``, test = ``val/`` and val is held out of ``train/``)."""
    root = Path(root)
    if split not in ("train", "val", "test"):
        raise KeyError(f"ImageNet split {split!r}: expected train, val or test")
    classes = sorted(d.name for d in _need(root / "train").iterdir() if d.is_dir())
    if (root / "test").is_dir():
        paths, labels = _class_images(_need(root / split), classes)
    elif split == "test":
        paths, labels = _class_images(_need(root / "val"), classes)
    else:
        paths, labels = _class_images(root / "train", classes)
        keep = _heldout(split, len(paths), "imagenet", str(root / "train"))
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    return {"images": ImageFiles(paths, size), "labels": np.asarray(labels, np.int64), "classes": classes}


def _class_images(folder: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """Image files and class indices of a class-folder tree (sorted)."""
    paths, labels = [], []
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        if d.name not in classes:
            raise RealFormatError(f"{d}: class folder {d.name!r} is not a class of the train folder")
        for f in sorted(d.iterdir()):
            if f.suffix.lower() in _IMAGE_EXT:
                paths.append(f)
                labels.append(classes.index(d.name))
    if not paths:
        raise RealFormatError(f"{folder}: no images in class folders")
    return paths, labels


# -------------------------------------------------------------------------------------------- ADE20k
def read_ade20k(root: str | Path, split: str, size: int) -> dict[str, Any]:
    """ADE20k -> ``{"images", "masks"}``; masks hold class - 1, ``SEG_IGNORE_LABEL`` where the file has 0.
    test = validation; train and val split training (module docstring)."""
    root = Path(root)
    if split not in ("train", "val", "test"):
        raise KeyError(f"ADE20k split {split!r}: expected train, val or test")
    sub = {"train": "training", "val": "training", "test": "validation"}[split]
    img_dir, ann_dir = _need(root / "images" / sub), _need(root / "annotations" / sub)
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in _IMAGE_EXT)
    masks = []
    for p in images:
        m = ann_dir / f"{p.stem}.png"
        if not m.exists():
            raise FileNotFoundError(f"{img_dir}: image {p.name}: annotation file not found: {m}")
        masks.append(m)
    if not images:
        raise RealFormatError(f"{img_dir}: no images")
    if split != "test":
        keep = _heldout(split, len(images), "ade20k", str(img_dir))
        images, masks = [images[i] for i in keep], [masks[i] for i in keep]
    return {"images": ImageFiles(images, size), "masks": _ReducedMasks(ImageFiles(masks, size, mask=True))}


class _ReducedMasks:
    """``reduce_zero_label``: stored 0 -> ``SEG_IGNORE_LABEL``, stored c -> c - 1."""

    def __init__(self, src: ImageFiles) -> None:
        self.src = src

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, idx: Any) -> np.ndarray:
        m = self.src[idx].astype(np.int64)
        return np.where(m == 0, SEG_IGNORE_LABEL, m - 1).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- text
def read_text_tsv(root: str | Path, split: str) -> list[dict[str, Any]]:
    """GLUE-style TSV (``sentence``, ``label`` columns) -> ``[{text, label}]`` (module docstring: without
    a labelled ``test.tsv``, test = dev and val is held out of train)."""
    root = Path(root)
    if split not in ("train", "val", "test"):
        raise KeyError(f"text split {split!r}: expected train, val or test")
    if _labelled(root / "test.tsv"):
        return _read_tsv(root / f"{_TSV_LABELLED[split]}.tsv")
    if split == "test":
        return _read_tsv(root / "dev.tsv")
    rows = _read_tsv(root / "train.tsv")
    return [rows[i] for i in _heldout(split, len(rows), "text", str(root / "train.tsv"))]


def _labelled(path: Path) -> bool:
    """Whether a TSV file exists and has a ``label`` column."""
    if not path.exists():
        return False
    with open(path, newline="") as fh:
        return "label" in (csv.DictReader(fh, delimiter="\t").fieldnames or [])


def _read_tsv(path: Path) -> list[dict[str, Any]]:
    path = _need(path)
    out = []
    with open(path, newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)):
            where = f"row {i + 1}"
            text, label = _field(row, "sentence", path, where), _field(row, "label", path, where)
            try:
                out.append({"text": text, "label": int(label)})
            except (TypeError, ValueError):
                raise RealFormatError(f"{path}: {where}: label {label!r} is not an integer") from None
    return out
