"""Sizes and chance levels of real-format datasets (the rehearsal's fixtures, or the paper's data).

The ``stats.json`` schema of a micro-world (:func:`vlmerge_core.data.stats.compute_stats`) as far as
the study reads it: ``counts`` per task and split, and ``chance``, each task's main metric for a
model that ignores its input, on the split the task reports (test), from the readers the tasks use
(:mod:`vlmerge_core.data.real`): the training majority answer, label or pixel class, and a random
ranking for retrieval.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from vlmerge_core.config import FinetuneConfig
from vlmerge_core.data.real import (
    ADE20K_CLASSES,
    read_ade20k,
    read_image_folders,
    read_karpathy,
    read_nlvr2,
    read_text_tsv,
    read_vqav2,
)
from vlmerge_core.data.stats import majority_acc, majority_miou, random_recall

__all__ = ["real_stats"]


def _vqa(root: Path, size: int, ft: FinetuneConfig) -> tuple[dict, float]:
    kw = {
        "min_answer_count": ft.vqa_min_answer_count,
        "val_images": ft.vqa_val_images,
        "protocol": ft.vqa_protocol,
    }
    train, test = (read_vqav2(root, s, size, **kw) for s in ("train", "test"))
    top = Counter(a for q in train["questions"] for a in q["answers"]).most_common(1)[0][0]
    # VQA score of always answering the training majority answer: min(1, matches / 3), as evaluated
    score = [min(1.0, q["answers"].count(top) / 3) for q in test["questions"]]
    counts = {
        "train": len(train["questions"]),
        "test": len(test["questions"]),
        "answers": len(train["answers"]),
    }
    return counts, float(np.mean(score)) if score else 0.0


def real_stats(paths: dict[str, Path], image_size: int, ft: FinetuneConfig) -> dict[str, Any]:
    """``stats.json`` of the real-format datasets at ``paths`` (``finetune.real_paths`` keys); the
    VQA splits as ``ft`` reads them (protocol, held-out images, answer vocabulary)."""
    counts: dict[str, Any] = {}
    vqa_counts, vqa_chance = _vqa(Path(paths["vqa"]), image_size, ft)
    counts["vqa"] = vqa_counts
    retrieval = {}
    for task in ("coco", "flickr"):
        test = read_karpathy(paths[task], "test", image_size, dataset=task)
        per_image = [len(c) for c in test["captions"]]
        counts[task] = {"test_images": len(per_image), "test_captions": sum(per_image)}
        retrieval[task] = {f"r{k}": random_recall(per_image, k) for k in (1, 5, 10)}
    nlvr2 = {
        s: [p["label"] for p in read_nlvr2(paths["nlvr2"], s, image_size)["pairs"]] for s in ("train", "test")
    }
    imagenet = {
        s: read_image_folders(paths["imagenet"], s, image_size)["labels"].tolist() for s in ("train", "test")
    }
    text = {s: [r["label"] for r in read_text_tsv(paths["text"], s)] for s in ("train", "test")}
    ade = {s: read_ade20k(paths["ade20k"], s, image_size)["masks"] for s in ("train", "test")}
    masks = {s: np.stack([ade[s][i] for i in range(len(ade[s]))]) for s in ade}
    # ignored pixels (ADE20k's "other", 255) count in no class: drop them before the majority
    valid = {s: m[m < ADE20K_CLASSES] for s, m in masks.items()}
    for name, d in (("nlvr2", nlvr2), ("imagenet", imagenet), ("text", text)):
        counts[name] = {s: len(v) for s, v in d.items()}
    counts["ade20k"] = {s: len(m) for s, m in masks.items()}
    chance = {
        "vqa_majority_acc": vqa_chance,
        "nlvr2_majority_acc": majority_acc(nlvr2["train"], nlvr2["test"]),
        "imagenet_majority_acc": majority_acc(imagenet["train"], imagenet["test"]),
        "imagenet_uniform_acc": 1.0 / max(1, len(set(imagenet["train"]))),
        "text_majority_acc": majority_acc(text["train"], text["test"]),
        "ade20k_majority": majority_miou(valid["train"], valid["test"], ADE20K_CLASSES),
        "retrieval_random": retrieval["coco"],
        "retrieval_random_flickr": retrieval["flickr"],
    }
    return {"counts": counts, "chance": chance, "source": "real_format"}
