"""Figures and tables of the micro-world for the ``01_data`` notebook.

Every figure function is pure in its inputs and returns a ``matplotlib`` Figure.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from vlmerge_core.data.scenes import SHAPES
from vlmerge_core.figstyle import new_figure


def _figure(w: float, h: float) -> Figure:
    return new_figure(w, h)


def _wrap(text: str, width: int = 26) -> str:
    return "\n".join(textwrap.wrap(text, width))


def fig_gallery(world, split: str = "train", n: int = 6) -> Figure:
    """Images (top), segmentation masks (middle) and one caption of each style plus a VQA pair."""
    n = min(n, len(world.images(split)))
    fig = _figure(2.3 * n, 7.2)
    axes = fig.subplots(2, n, squeeze=False)
    vqa = {}
    for q in world.vqa(split):
        vqa.setdefault(q["image"], q)
    for i in range(n):
        axes[0, i].imshow(world.images(split)[i], interpolation="nearest")
        axes[0, i].set_title(f"#{i} class {int(world.labels(split)[i])}", fontsize=8)
        axes[1, i].imshow(world.masks(split)[i], cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
        q = vqa.get(i)
        text = (
            f"COCO: {world.captions(split, 'coco')[i][0]}\n\nFlickr: {world.captions(split, 'flickr')[i][0]}"
            + (f"\n\nQ: {q['question']}\nA: {q['answer']}" if q else "")
        )
        axes[1, i].set_xlabel("\n".join(_wrap(t) for t in text.split("\n")), fontsize=7, loc="left")
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[1, 0].set_ylabel("mask: " + ", ".join(f"{k + 1}={s}" for k, s in enumerate(SHAPES)), fontsize=7)
    fig.suptitle(f"micro-world, {split} split", fontsize=10)
    return fig


def fig_nlvr2(world, split: str = "train", n: int = 4) -> Figure:
    """NLVR2 stand-in: image pairs with their statement and truth value."""
    items = world.nlvr2(split)[:n]
    fig = _figure(2.2 * len(items), 2.4)
    axes = fig.subplots(1, 2 * len(items), squeeze=False)[0]
    for k, x in enumerate(items):
        for j, side in enumerate(("left", "right")):
            ax = axes[2 * k + j]
            ax.imshow(world.images(split)[x[side]], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[2 * k].set_xlabel(_wrap(f"{x['statement']} -> {x['label']}", 40), fontsize=7, loc="left")
    fig.suptitle("NLVR2 stand-in (left, right, statement -> label)", fontsize=10)
    return fig


def fig_distributions(stats: dict, split: str = "train") -> Figure:
    """Answer, question-type, image-class, objects-per-scene and pixel-class distributions."""
    d = stats["distributions"][split]
    panels = [
        ("VQA answers", d["vqa_answer"]),
        ("VQA question types", d["vqa_qtype"]),
        ("image classes", d["image_class"]),
        ("objects per scene", d["objects_per_scene"]),
        ("text-cls kinds", d["text_cls_kind"]),
        ("test pixels per seg class", stats["distributions"]["test"]["seg_pixels"]),
    ]
    fig = _figure(14, 6.5)
    axes = fig.subplots(2, 3).ravel()
    for ax, (title, dist) in zip(axes, panels):
        keys = sorted(dist, key=lambda k: (len(k), k)) if all(k.isdigit() for k in dist) else sorted(dist)
        ax.bar(range(len(keys)), [dist[k] for k in keys], color="#4c72b0")
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(keys, rotation=90 if len(keys) > 8 else 0, fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"label distributions ({split})", fontsize=10)
    return fig


def fig_text_lengths(world, split: str = "train") -> Figure:
    """Histograms of token counts ([CLS] and [SEP] included) per text kind."""
    tok = world.tokenizer()
    kinds = {
        "COCO captions": [c for per in world.captions(split, "coco") for c in per],
        "Flickr captions": [c for per in world.captions(split, "flickr") for c in per],
        "VQA questions": [q["question"] for q in world.vqa(split)],
        "NLVR2 statements": [x["statement"] for x in world.nlvr2(split)],
        "text-cls sentences": [x["text"] for x in world.text_cls(split)],
        "text corpus": world.text_corpus(),
    }
    fig = _figure(12, 3.2)
    ax = fig.subplots()
    bins = np.arange(0, world.config.max_text_len + 2) - 0.5
    for name, texts in kinds.items():
        lens = [len(ids) for ids in tok(texts)["input_ids"]]
        ax.hist(lens, bins=bins, histtype="step", density=True, label=f"{name} (mean {np.mean(lens):.1f})")
    ax.axvline(world.config.max_text_len + 0.5, color="k", ls="--", lw=0.8)
    ax.set_xlabel("tokens")
    ax.set_ylabel("fraction")
    ax.legend(fontsize=7)
    return fig


def counts_table(stats: dict) -> pd.DataFrame:
    """Examples per split and task."""
    return pd.DataFrame({s: stats["counts"][s] for s in ("train", "val", "test")})


def chance_table(stats: dict) -> pd.DataFrame:
    """Chance levels of every task on the test split (one row per metric)."""
    ch = stats["chance"]
    rows = {
        "VQA accuracy (majority answer)": ch["vqa_majority_acc"],
        "NLVR2 accuracy (majority)": ch["nlvr2_majority_acc"],
        "ImageNet top-1 (majority class)": ch["imagenet_majority_acc"],
        "ImageNet top-1 (uniform)": ch["imagenet_uniform_acc"],
        "ADE20k mIoU (majority pixel class)": ch["ade20k_majority"]["miou"],
        "text accuracy (majority)": ch["text_majority_acc"],
    }
    for k, v in ch["retrieval_random"].items():
        rows[f"retrieval {k.upper()} text->image (random)"] = v["t2i"]
        rows[f"retrieval {k.upper()} image->text (random)"] = v["i2t"]
    return pd.DataFrame({"chance": rows}).round(4)


def examples_table(world, split: str = "train", n: int = 4) -> pd.DataFrame:
    """A few texts of every kind with their labels."""
    rows = [
        {"task": "vqa", "image": q["image"], "text": q["question"], "label": q["answer"]}
        for q in world.vqa(split)[:n]
    ]
    rows += [
        {"task": "nlvr2", "image": f"{x['left']},{x['right']}", "text": x["statement"], "label": x["label"]}
        for x in world.nlvr2(split)[:n]
    ]
    rows += [
        {"task": f"text ({x['kind']})", "image": "", "text": x["text"], "label": x["label"]}
        for x in world.text_cls(split)[:n]
    ]
    rows += [{"task": "corpus", "image": "", "text": t, "label": ""} for t in world.text_corpus()[:n]]
    return pd.DataFrame(rows)


def data_views(data) -> list:
    """What notebook 01 shows of the data stage's output, in order: of a micro-world its counts,
    chance levels, galleries, examples and distributions; of the rehearsal's fixtures (no
    ``scenes``) the counts per dataset and the chance levels."""
    st = data.stats
    if not hasattr(data, "scenes"):
        counts = pd.DataFrame.from_dict(st["counts"], orient="index")
        return [counts, chance_table(st)]
    return [
        counts_table(st), chance_table(st), fig_gallery(data, "train", 6), fig_nlvr2(data, "train", 4),
        examples_table(data, "train", 4), fig_distributions(st), fig_text_lengths(data),
    ]  # fmt: skip
