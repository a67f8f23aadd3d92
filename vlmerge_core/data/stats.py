"""Statistics of a generated world: sizes, label distributions, text lengths and chance levels.

Chance levels are what a model that ignores its input scores on the test split: the training
majority answer / class / label, random ranking for retrieval (R@K), and the training majority pixel
class for segmentation (mIoU over the classes that occur in the test masks, background included).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from math import comb
from typing import Any

import numpy as np

from vlmerge_core.data.layout import SPLITS, STYLES, world_files
from vlmerge_core.data.loaders import encode_text


def _dist(values: list) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(values).items(), key=lambda kv: str(kv[0]))}


def majority_acc(train: list, test: list) -> float:
    """Accuracy on ``test`` of always answering ``train``'s most common label (0 when either is empty)."""
    if not train or not test:
        return 0.0
    top = Counter(train).most_common(1)[0][0]
    return float(np.mean([t == top for t in test]))


def _lengths(lens: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(lens.mean()),
        "min": int(lens.min()),
        "max": int(lens.max()),
        "p95": float(np.percentile(lens, 95)),
    }


def random_recall(captions_per_image: Sequence[int], k: int) -> dict[str, float]:
    """Expected R@K of a random ranking, the one retrieval chance level of the suite (fractions).

    ``t2i`` (image retrieval): the one right image is in the top ``k`` of ``n_images`` with
    probability ``min(k, n) / n``. ``i2t`` (text retrieval): some of the ``c_i`` captions of image
    ``i`` is in the top ``k`` of the ``n_text = sum c`` captions with probability
    ``1 - C(n_text - c_i, k) / C(n_text, k)``, averaged over the images.

    Args:
        captions_per_image: the number of captions of each image.
        k: the rank cut-off.
    """
    counts = Counter(int(c) for c in captions_per_image)
    n_images, n_text = sum(counts.values()), sum(c * m for c, m in counts.items())
    k_i, k_t = min(k, n_images), min(k, n_text)
    i2t = sum(m * (1.0 - comb(n_text - c, k_t) / comb(n_text, k_t)) for c, m in counts.items()) / n_images
    return {"t2i": k_i / n_images, "i2t": i2t}


def majority_miou(train_masks: np.ndarray, test_masks: np.ndarray, num_classes: int) -> dict[str, float]:
    """mIoU and pixel accuracy of predicting the training majority pixel class everywhere."""
    top = int(np.bincount(train_masks.ravel(), minlength=num_classes).argmax())
    gt = np.bincount(test_masks.ravel(), minlength=num_classes)
    present = gt > 0
    iou = np.zeros(num_classes)
    iou[top] = gt[top] / test_masks.size  # intersection = gt[top]; union = every pixel
    return {
        "miou": float(iou[present].mean()),
        "pixel_acc": float(gt[top] / test_masks.size),
        "majority_class": top,
    }


def compute_stats(world) -> dict[str, Any]:
    """The ``stats.json`` of a world (deterministic: no timings)."""
    tok = world.tokenizer()
    cfg = world.config
    counts, dists, lengths = {}, {}, {}
    for split in SPLITS:
        counts[split] = {
            "images": len(world.labels(split)),
            "vqa": len(world.vqa(split)),
            "nlvr2": len(world.nlvr2(split)),
            "text_cls": len(world.text_cls(split)),
            **{f"captions_{s}": sum(map(len, world.captions(split, s))) for s in STYLES},
        }
        dists[split] = {
            "vqa_answer": _dist([q["answer"] for q in world.vqa(split)]),
            "vqa_qtype": _dist([q["qtype"] for q in world.vqa(split)]),
            "nlvr2_label": _dist([x["label"] for x in world.nlvr2(split)]),
            "nlvr2_kind": _dist([x["kind"] for x in world.nlvr2(split)]),
            "text_cls_label": _dist([x["label"] for x in world.text_cls(split)]),
            "text_cls_kind": _dist([x["kind"] for x in world.text_cls(split)]),
            "image_class": _dist(world.labels(split).tolist()),
            "objects_per_scene": _dist([len(s["objects"]) for s in world.scenes(split)]),
            "seg_pixels": {
                str(c): int(v)
                for c, v in enumerate(
                    np.bincount(world.masks(split).ravel(), minlength=world.num_seg_classes)
                )
            },
        }
    for name, texts in (
        ("coco", [c for caps in world.captions("train", "coco") for c in caps]),
        ("flickr", [c for caps in world.captions("train", "flickr") for c in caps]),
        ("vqa_question", [q["question"] for q in world.vqa("train")]),
        ("nlvr2_statement", [x["statement"] for x in world.nlvr2("train")]),
        ("text_cls", [x["text"] for x in world.text_cls("train")]),
        ("corpus", world.text_corpus()),
    ):
        _, mask = encode_text(tok, texts, cfg.max_text_len + 1)
        lengths[name] = {
            "tokens": _lengths(mask.sum(1).numpy()),
            "words": _lengths(np.array([len(t.split()) for t in texts])),
        }
    n_test = len(world.labels("test"))
    chance = {
        "vqa_majority_acc": majority_acc(
            [q["answer"] for q in world.vqa("train")], [q["answer"] for q in world.vqa("test")]
        ),
        "nlvr2_majority_acc": majority_acc(
            [x["label"] for x in world.nlvr2("train")], [x["label"] for x in world.nlvr2("test")]
        ),
        "imagenet_majority_acc": majority_acc(world.labels("train").tolist(), world.labels("test").tolist()),
        "text_majority_acc": majority_acc(
            [x["label"] for x in world.text_cls("train")], [x["label"] for x in world.text_cls("test")]
        ),
        "imagenet_uniform_acc": 1.0 / world.num_image_classes,
        "ade20k_majority": majority_miou(world.masks("train"), world.masks("test"), world.num_seg_classes),
        "retrieval_random": {
            f"r{k}": random_recall([cfg.captions_per_image] * n_test, k) for k in (1, 5, 10)
        },
    }
    files = {name: (world.root / name).stat().st_size for name in world_files()}
    return {
        "counts": {
            **counts,
            "image_only": len(world.image_only()),
            "corpus": len(world.text_corpus()),
            "answers": len(world.answers),
            "vocab_size": len(tok),
        },
        "distributions": dists,
        "lengths": lengths,
        "chance": chance,
        "file_bytes": files,
        "total_bytes": sum(files.values()),
        "num_image_classes": world.num_image_classes,
        "num_seg_classes": world.num_seg_classes,
    }
