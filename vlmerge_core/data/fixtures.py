"""Tiny datasets in every real on-disk format the paper path reads, deterministic for a seed.

:func:`write_fixtures` writes, under one folder (a few hundred KB in all):

- ``arrows/``: the official pre-training arrow files as ViLT's ``write_*.py`` scripts write them
  (pandas DataFrame -> ``pa.Table.from_pandas`` -> ``RecordBatchFileWriter``):
  ``coco_caption_karpathy_{train,restval,val,test}.arrow`` (``image``, ``caption``, ``image_id`` = the
  file name, ``split``; made from ``coco/`` below, as ``write_coco_karpathy.py`` does), ``vg.arrow``
  (``image``, ``caption``, ``width``, ``height``, ``x``, ``y``, ``image_id``),
  ``conceptual_caption_{train,val}_0.arrow`` and ``sbu_0.arrow`` (``image``, ``caption``, ``image_id``,
  ``split``);
- ``released/``: the pre-training datasets as released, before the official conversion to arrow:
  ``coco/`` (a Karpathy COCO folder as below), ``vg/`` (``images/VG_100K{,_2}/<id>.jpg``,
  ``annotations/region_descriptions.json``), ``cc/`` and ``sbu/`` (``images_train/<first4>/<name>``
  with ``train_annot.json`` / ``annot.json``), see :func:`write_released`;
- ``coco/``: ``karpathy/dataset_coco.json`` with ``train2014/`` and ``val2014/`` JPEGs;
  ``flickr/``: ``karpathy/dataset_flickr30k.json`` with ``flickr30k-images/``;
- ``vqa/``: VQAv2 questions and annotations JSON of train2014 and val2014 with their images, and the
  test-dev2015 questions (no annotations) with their ``test2015/`` images;
- ``nlvr2/``: ``nlvr2/data/{train,dev,test1}.json`` (JSON lines) with the PNG image pairs;
- ``imagenet/``: class folders ``{train,val}/<wnid>/*.JPEG``; ``ade20k/``: images and label PNGs;
- ``text/``: GLUE SST-2 ``{train,dev}.tsv``;
- ``tokenizer/vocab.txt``: a BERT-uncased-style vocabulary ([PAD] 0, [unused*], [UNK] 100, [CLS]
  101, [SEP] 102, [MASK] 103, characters, ``##`` characters, the fixtures' words);
- ``beit.safetensors``: a tiny BEiT (timm's ``Beit`` built with the model config's sizes, so its keys
  are timm's: ``blocks.{i}.attn.q_bias``, ``relative_position_bias_table``, ``gamma_1`` ...).

The layouts are those the readers of :mod:`vlmerge_core.data.real`, :mod:`vlmerge_core.data.pretrain_data`,
:func:`~vlmerge_core.data.tokenizer.load_tokenizer` and :func:`~vlmerge_core.model.init.load_timm_into_v`
read; the returned dict maps each to its path (the task names are ``finetune.real_paths`` keys).
"""

from __future__ import annotations

import io
import json
import string
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import timm.models.beit
import torch
from PIL import Image

from vlmerge_core.config import ModelConfig
from vlmerge_core.io import atomic_path, atomic_write, save_safetensors

COLOURS = ("red", "green", "blue", "yellow", "white", "black")
THINGS = ("dog", "cat", "bus", "tree", "boat", "kite")
PLACES = ("street", "field", "beach", "room", "park")
_PURPOSE = ("coco", "flickr", "vg", "cc", "sbu", "vqa", "nlvr2", "imagenet", "ade20k", "text", "released",
            "vqa_testdev")  # fmt: skip


def _rng(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_PURPOSE.index(purpose),)))


def _pixels(rng: np.random.Generator, w: int = 24, h: int = 16) -> np.ndarray:
    """uint8 [h, w, 3]: a 4 x 4 grid of random colours, upscaled (compresses to a few hundred bytes)."""
    grid = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return np.kron(grid, np.ones((-(-h // 4), -(-w // 4), 1), np.uint8))[:h, :w]


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _write(path: Path, data: bytes | str) -> Path:
    with atomic_write(path, "wb" if isinstance(data, bytes) else "w") as fh:
        fh.write(data)
    return path


def _caption(rng: np.random.Generator) -> str:
    c, t, p = (str(rng.choice(x)) for x in (COLOURS, THINGS, PLACES))
    return f"A {c} {t} in the {p}."


def _captions(rng: np.random.Generator, lo: int = 2, hi: int = 4) -> list[str]:
    return [_caption(rng) for _ in range(int(rng.integers(lo, hi + 1)))]


# ------------------------------------------------------------------------------------------- arrow
def write_arrow(path: Path, rows: list[list[Any]], columns: list[str]) -> Path:
    """Rows -> an arrow IPC file, as the official ``make_arrow`` writes it (pandas, then pyarrow)."""
    table = pa.Table.from_pandas(pd.DataFrame(rows, columns=columns))
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink:
        with pa.RecordBatchFileWriter(sink, table.schema) as writer:
            writer.write_table(table)
    return path


def write_coco_arrows(coco: Path, out: Path) -> None:
    """``coco_caption_karpathy_{split}.arrow`` from a Karpathy COCO folder (``write_coco_karpathy.py``)."""
    images = json.loads((coco / "karpathy" / "dataset_coco.json").read_text())["images"]
    for split in ("train", "val", "restval", "test"):
        rows = [
            [
                (coco / r["filepath"] / r["filename"]).read_bytes(),
                [s["raw"] for s in r["sentences"]],
                r["filename"],
                split,
            ]
            for r in images
            if r["split"] == split
        ]
        write_arrow(
            out / f"coco_caption_karpathy_{split}.arrow", rows, ["image", "caption", "image_id", "split"]
        )


def write_caption_arrows(out: Path, seed: int, n: int = 4) -> None:
    """``vg.arrow``, ``conceptual_caption_{train,val}_0.arrow`` and ``sbu_0.arrow`` of ``n`` images each."""
    rng = _rng(seed, "vg")
    rows = []
    for i in range(n):
        caps = _captions(rng, 3, 5)
        boxes = rng.integers(0, 16, size=(4, len(caps))).tolist()  # width, height, x, y per region
        rows.append([_encode(_pixels(rng), "JPEG"), caps, *boxes, str(i + 1)])
    write_arrow(out / "vg.arrow", rows, ["image", "caption", "width", "height", "x", "y", "image_id"])
    for name, stem, splits in (("cc", "conceptual_caption", ("train", "val")), ("sbu", "sbu", ("train",))):
        rng = _rng(seed, name)
        for split in splits:
            rows = [[_encode(_pixels(rng), "JPEG"), [_caption(rng)], f"{i:07d}", split] for i in range(n)]
            file = f"{stem}_{split}_0.arrow" if name == "cc" else f"{stem}_0.arrow"
            write_arrow(out / file, rows, ["image", "caption", "image_id", "split"])


# ------------------------------------------------------------------------------ released VG, CC, SBU
def _write_vg(root: Path, rng: np.random.Generator) -> None:
    """Visual Genome: images 1, 2 (``VG_100K``) and 3 (``VG_100K_2``) with 3-5 region phrases each
    (the first phrase repeated), the regions of an image not downloaded (4), an image without regions (5)."""
    records, region = [], 0
    for iid in (1, 2, 3, 4, 5):
        if iid != 4:
            sub = "VG_100K_2" if iid == 3 else "VG_100K"
            _write(root / "images" / sub / f"{iid}.jpg", _encode(_pixels(rng), "JPEG"))
        if iid == 5:
            continue
        regions = []
        for phrase in (caps := _captions(rng, 3, 5)) + caps[:1]:
            region += 1
            box = dict(zip(("width", "height", "x", "y"), rng.integers(0, 16, size=4).tolist()))
            regions.append({"region_id": region, "image_id": iid, "phrase": phrase, **box})
        records.append({"regions": regions, "id": iid})
    _write(root / "annotations" / "region_descriptions.json", json.dumps(records))


def _write_caption_folder(root: Path, annot: str, rng: np.random.Generator) -> None:
    """CC or SBU: ``images_train/<first4>/<name>`` and ``annot``, a list of ``[image_file_path,
    caption]``: images 0-2 with a caption each, image 0 a second one (records apart), image 1 its
    caption twice, a caption of an image not downloaded (3) and an image without caption (4)."""
    names = [f"{100000 * i + 7:07d}" for i in range(5)]
    for name in names[:3] + names[4:]:
        _write(root / "images_train" / name[:4] / name, _encode(_pixels(rng), "JPEG"))
    caps = [_caption(rng) for _ in range(4)]
    second = _caption(rng)
    while second == caps[0]:
        second = _caption(rng)
    recs = [*zip(names, caps), (names[0], second), (names[1], caps[1])]
    pairs = [[f"./images_train/{name[:4]}/{name}", cap] for name, cap in recs]
    _write(root / annot, json.dumps(pairs))


def write_released(out: Path, seed: int) -> None:
    """``vg/``, ``cc/`` and ``sbu/`` under ``out`` in the layouts the official data preparation reads
    (ViLT's ``write_vg.py``, ``write_conceptual_caption.py``, ``write_sbu.py``), 3 usable images each."""
    rng = _rng(seed, "released")
    _write_vg(out / "vg", rng)
    _write_caption_folder(out / "cc", "train_annot.json", rng)
    _write_caption_folder(out / "sbu", "annot.json", rng)


# ---------------------------------------------------------------------------------- Karpathy JSON
def write_karpathy_folder(root: Path, seed: int, dataset: str = "coco") -> None:
    """``karpathy/dataset_{coco,flickr30k}.json`` and its images: 3 train, 2 restval, 2 val, 2 test."""
    rng = _rng(seed, dataset)
    recs = []
    for i, split in enumerate(["train"] * 3 + ["restval"] * 2 + ["val"] * 2 + ["test"] * 2):
        sub = ("train2014" if split == "train" else "val2014") if dataset == "coco" else "flickr30k-images"
        name = f"COCO_{sub}_{i + 1:012d}.jpg" if dataset == "coco" else f"{1000 + i}.jpg"
        _write(root / sub / name, _encode(_pixels(rng), "JPEG"))
        sents = [
            {"tokens": c.lower().rstrip(".").split(), "raw": c, "imgid": i, "sentid": 5 * i + k}
            for k, c in enumerate(_captions(rng))
        ]
        rec = {"filename": name, "imgid": i, "split": split, "sentences": sents}
        rec["sentids"] = [s["sentid"] for s in sents]
        rec.update({"filepath": sub, "cocoid": i + 1} if dataset == "coco" else {})
        recs.append(rec)
    file = "dataset_coco.json" if dataset == "coco" else "dataset_flickr30k.json"
    _write(root / "karpathy" / file, json.dumps({"images": recs, "dataset": dataset}))


# ------------------------------------------------------------------------------------- VQAv2, NLVR2
def write_vqav2(root: Path, seed: int) -> None:
    """VQAv2 questions + annotations (ten answers each) of train2014 (3 images) and val2014 (4)."""
    rng = _rng(seed, "vqa")
    qid = 0
    for sub, n in (("train2014", 3), ("val2014", 4)):
        qs, anns = [], []
        for k in range(n):
            iid = 100 * (sub == "val2014") + k + 1
            _write(root / sub / f"COCO_{sub}_{iid:012d}.jpg", _encode(_pixels(rng), "JPEG"))
            for _ in range(2):
                qid += 1
                truth = str(rng.choice(COLOURS))
                answers = [truth if rng.random() < 0.8 else str(rng.choice(COLOURS)) for _ in range(10)]
                qs.append(
                    {
                        "image_id": iid,
                        "question": f"What colour is the {rng.choice(THINGS)}?",
                        "question_id": qid,
                    }
                )
                anns.append({
                    "question_id": qid, "image_id": iid, "question_type": "what color is the",
                    "answer_type": "other", "multiple_choice_answer": truth,
                    "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(answers)],
                })  # fmt: skip
        questions = {
            "info": {},
            "task_type": "Open-Ended",
            "data_type": "mscoco",
            "data_subtype": sub,
            "questions": qs,
        }
        _write(root / f"v2_OpenEnded_mscoco_{sub}_questions.json", json.dumps(questions))
        _write(root / f"v2_mscoco_{sub}_annotations.json", json.dumps({"info": {}, "annotations": anns}))
    write_vqa_testdev(root, seed)


def write_vqa_testdev(root: Path, seed: int) -> None:
    """The official test split: ``v2_OpenEnded_mscoco_test-dev2015_questions.json`` (2 images, 2
    questions each, no annotations) with its ``test2015/`` images."""
    rng = _rng(seed, "vqa_testdev")
    qs = []
    for k in range(2):
        iid = 1000 + k
        _write(root / "test2015" / f"COCO_test2015_{iid:012d}.jpg", _encode(_pixels(rng), "JPEG"))
        qs += [
            {
                "image_id": iid,
                "question": f"What colour is the {rng.choice(THINGS)}?",
                "question_id": 9000 + 2 * k + j,
            }
            for j in range(2)
        ]
    doc = {
        "info": {},
        "task_type": "Open-Ended",
        "data_type": "mscoco",
        "data_subtype": "test-dev2015",
        "questions": qs,
    }
    _write(root / "v2_OpenEnded_mscoco_test-dev2015_questions.json", json.dumps(doc))


def write_nlvr2(root: Path, seed: int) -> None:
    """NLVR2 JSON lines of train (3 pairs), dev (2) and test1 (2), with the image pairs as PNG."""
    rng = _rng(seed, "nlvr2")
    for split, n in (("train", 3), ("dev", 2), ("test1", 2)):
        lines = []
        for k in range(n):
            pair = f"{split}-{100 + k}-{k % 2}"
            rec = {"identifier": f"{pair}-0", "label": str(bool(rng.random() < 0.5)), "synset": "dog"}
            rec.update({"sentence": f"There is a {rng.choice(COLOURS)} dog in one image.", "query": "dogs"})
            folder = root / split
            if split == "train":
                rec["directory"] = k % 2
                folder = root / "images" / "train" / str(k % 2)
            for side in (0, 1):
                _write(folder / f"{pair}-img{side}.png", _encode(_pixels(rng), "PNG"))
            lines.append(json.dumps(rec))
        _write(root / "nlvr2" / "data" / f"{split}.json", "\n".join(lines) + "\n")


# ------------------------------------------------------------------------ ImageNet, ADE20k, SST-2
def write_imagenet(root: Path, seed: int, wnids: tuple[str, ...] = ("n01440764", "n01443537")) -> None:
    """Class folders ``{train,val}/<wnid>/`` with 3 and 1 JPEGs per class."""
    rng = _rng(seed, "imagenet")
    for split, n in (("train", 3), ("val", 1)):
        for wnid in wnids:
            for k in range(n):
                _write(root / split / wnid / f"{wnid}_{k + 1}.JPEG", _encode(_pixels(rng), "JPEG"))


def write_ade20k(root: Path, seed: int, classes: int = 4) -> None:
    """``images/{training,validation}/*.jpg`` with ``annotations/..png`` (0 = other, 1..classes)."""
    rng = _rng(seed, "ade20k")
    for sub, n in (("training", 3), ("validation", 2)):
        for k in range(n):
            name = f"ADE_{'train' if sub == 'training' else 'val'}_{k + 1:08d}"
            _write(root / "images" / sub / f"{name}.jpg", _encode(_pixels(rng), "JPEG"))
            grid = rng.integers(0, classes + 1, size=(4, 4), dtype=np.uint8)
            mask = np.kron(grid, np.ones((4, 6), np.uint8))  # (16, 24), the image's size
            buf = io.BytesIO()
            Image.fromarray(mask, mode="L").save(buf, format="PNG")
            _write(root / "annotations" / sub / f"{name}.png", buf.getvalue())


def write_sst2(root: Path, seed: int) -> None:
    """GLUE SST-2 ``train.tsv`` (8 rows) and ``dev.tsv`` (4): ``sentence`` and ``label`` columns."""
    rng = _rng(seed, "text")
    for name, n in (("train", 8), ("dev", 4)):
        rows = ["sentence\tlabel"]
        for _ in range(n):
            label = int(rng.integers(2))
            rows.append(f"a {('dull', 'charming')[label]} film about a {rng.choice(THINGS)} \t{label}")
        _write(root / f"{name}.tsv", "\n".join(rows) + "\n")


# --------------------------------------------------------------------------- vocab.txt, BEiT
def bert_vocab(words: list[str]) -> list[str]:
    """BERT-uncased's layout: [PAD], [unused0-98], [UNK], [CLS], [SEP], [MASK], then characters,
    their ``##`` continuations and ``words`` (so every lower-case ASCII word is tokenisable)."""
    chars = list(string.punctuation + string.digits + string.ascii_lowercase)
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += chars + [f"##{c}" for c in string.digits + string.ascii_lowercase]
    return vocab + sorted(set(words) - set(vocab))


def write_beit(path: Path, cfg: ModelConfig, seed: int) -> Path:
    """A tiny BEiT with timm's keys (relative position bias per block, layer scale, no absolute
    positions, a 10-class head as the hub's fine-tuned files have), sized by ``cfg``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.models.beit.Beit(
            img_size=cfg.image_size, patch_size=cfg.patch_size, num_classes=10, embed_dim=cfg.width,
            depth=cfg.depth, num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
            init_values=cfg.layer_scale_init or None, use_abs_pos_emb=False, use_rel_pos_bias=True,
        )  # fmt: skip
    return save_safetensors(path, model.state_dict(), {"format": "pt"})


def write_fixtures(
    out_dir: str | Path, seed: int = 0, model_cfg: ModelConfig | None = None
) -> dict[str, Path]:
    """Write every real-format fixture under ``out_dir`` (module docstring); same bytes for a seed.

    Args:
        out_dir: the folder to fill (created).
        seed: RNG seed of images, texts and weights.
        model_cfg: sizes of the BEiT checkpoint (default: :class:`ModelConfig`'s defaults).

    Returns:
        ``{"arrows", "released", "coco", "flickr", "vqa", "nlvr2", "imagenet", "ade20k", "text", "tokenizer",
        "beit"}`` -> path (folders; ``beit`` a file), the keys of ``finetune.real_paths`` included.
    """
    out = Path(out_dir)
    p = fixture_paths(out)
    write_karpathy_folder(p["coco"], seed, "coco")
    write_karpathy_folder(p["flickr"], seed, "flickr")
    write_coco_arrows(p["coco"], p["arrows"])
    write_caption_arrows(p["arrows"], seed)
    write_karpathy_folder(p["released"] / "coco", seed, "coco")
    write_released(p["released"], seed)
    write_vqav2(p["vqa"], seed)
    write_nlvr2(p["nlvr2"], seed)
    write_imagenet(p["imagenet"], seed)
    write_ade20k(p["ade20k"], seed)
    write_sst2(p["text"], seed)
    words = [*COLOURS, *THINGS, *PLACES, "a", "the", "in", "what", "colour", "is", "there", "one", "image"]
    _write(p["tokenizer"] / "vocab.txt", "\n".join(bert_vocab(words)) + "\n")
    write_beit(p["beit"], model_cfg or ModelConfig(), seed)
    return p


def fixture_paths(out_dir: str | Path) -> dict[str, Path]:
    """Where :func:`write_fixtures` puts each dataset under ``out_dir`` (the keys it returns)."""
    out = Path(out_dir)
    names = (
        "arrows",
        "released",
        "coco",
        "flickr",
        "vqa",
        "nlvr2",
        "imagenet",
        "ade20k",
        "text",
        "tokenizer",
    )
    return {**{k: out / k for k in names}, "beit": out / "beit.safetensors"}
