"""The micro-world generator: determinism, disjoint splits, annotations consistent with the scenes."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmerge_core.data import grammar, load_world
from vlmerge_core.data.grammar import CELL_NAMES, COLOUR_WORDS, NUMBERS, PLURALS, SHAPE_WORDS
from vlmerge_core.data.scenes import COLOURS, RGB, SHAPES, render_scene, sample_scene, scene_key
from vlmerge_core.data.world import _alt

SHAPE_OF = {w: s for s, ws in SHAPE_WORDS.items() for w in ws} | {p: s for s, p in PLURALS.items()}
COLOUR_OF = {w: c for c, ws in COLOUR_WORDS.items() for w in ws}


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.iterdir())
        if p.is_file() and p.name != "run_info.json"
    }


def test_same_seed_same_bytes_in_a_new_process(smoke_world, tmp_path):
    """Generating again (through the CLI, in another process) gives byte-identical files."""
    out = tmp_path / "again"
    subprocess.run(
        [sys.executable, "-m", "vlmerge_core.cli", "data", "--profile", "smoke", "-o", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    first, second = _hashes(smoke_world.root), _hashes(out)
    assert len(first) >= 18
    assert first == second


def test_other_seed_other_world(smoke_params, tmp_path):
    import dataclasses

    from vlmerge_core.data import generate_world

    cfg = dataclasses.replace(
        smoke_params.data, rng_seed=1, n_train=8, n_val=4, n_test=4, n_image_only=16, n_corpus=16
    )
    w = load_world(generate_world(cfg, tmp_path))
    assert w.images("train").shape == (8, 32, 32, 3)
    assert not np.array_equal(
        w.images("val"),
        load_world(generate_world(dataclasses.replace(cfg, rng_seed=2), tmp_path / "s2")).images("val"),
    )


def test_splits_do_not_share_scenes(smoke_world):
    keys = {s: {scene_key(x) for x in smoke_world.scenes(s)} for s in ("train", "val", "test", "image_only")}
    assert (
        not keys["train"] & keys["val"]
        and not keys["train"] & keys["test"]
        and not keys["val"] & keys["test"]
    )
    assert not keys["image_only"] & (keys["val"] | keys["test"])
    texts = {s: {x["text"] for x in smoke_world.text_cls(s)} for s in ("train", "val", "test")}
    assert (
        not texts["train"] & texts["test"]
        and not texts["train"] & texts["val"]
        and not texts["val"] & texts["test"]
    )


def test_arrays_shapes_and_labels(smoke_world, smoke_params):
    w, cfg = smoke_world, smoke_params.data
    for split, n in (("train", cfg.n_train), ("val", cfg.n_val), ("test", cfg.n_test)):
        assert w.images(split).shape == (n, 32, 32, 3) and w.images(split).dtype == np.uint8
        assert w.masks(split).shape == (n, 32, 32) and w.masks(split).dtype == np.uint8
        assert w.labels(split).shape == (n,) and w.labels(split).dtype == np.int64
        assert w.masks(split).max() < w.num_seg_classes
        for scene, label in zip(w.scenes(split), w.labels(split)):
            big = [o for o in scene["objects"] if o["size"] == "large"]
            assert len(big) == 1
            assert label == SHAPES.index(big[0]["shape"]) * len(COLOURS) + COLOURS.index(big[0]["colour"])
    assert w.image_only().shape == (cfg.n_image_only, 32, 32, 3)
    assert (
        w.codebook.shape == (cfg.mim_codebook_size, cfg.mim_patch**2 * 3) and w.codebook.dtype == np.float32
    )
    assert w.num_image_classes == 30 and w.num_seg_classes == 6


def test_masks_and_pixels_match_scene(smoke_world):
    w = smoke_world
    for img, mask, scene in zip(w.images("test"), w.masks("test"), w.scenes("test")):
        want = {0} | {1 + SHAPES.index(o["shape"]) for o in scene["objects"]}
        assert set(np.unique(mask).tolist()) == want
        for o in scene["objects"]:
            y, x = int(o["cy"]), int(o["cx"])
            assert mask[y, x] == 1 + SHAPES.index(o["shape"])
            assert np.abs(img[y, x].astype(int) - np.array(RGB[o["colour"]])).max() < 50


def _objects_named(text: str) -> list[tuple[str, str]]:
    """(shape, colour) of every "colour shape" bigram in a text."""
    words = text.split()
    return [(SHAPE_OF[b], COLOUR_OF[a]) for a, b in zip(words, words[1:]) if a in COLOUR_OF and b in SHAPE_OF]


def test_captions_mention_exactly_the_scene_objects(smoke_world, smoke_params):
    w = smoke_world
    for split in ("train", "test"):
        for style in ("coco", "flickr"):
            caps = w.captions(split, style)
            assert len(caps) == len(w.scenes(split))
            for per, scene in zip(caps, w.scenes(split)):
                assert len(per) == smoke_params.data.captions_per_image
                objs = {(o["shape"], o["colour"]) for o in scene["objects"]}
                for cap in per:
                    named = _objects_named(cap)
                    assert objs <= set(named) and set(named) <= objs, (cap, objs)


def _vqa_answer(q: str, scene: dict) -> str:
    objs = scene["objects"]
    words = q.split()
    shapes = [SHAPE_OF[x] for x in words if x in SHAPE_OF]
    colours = [COLOUR_OF[x] for x in words if x in COLOUR_OF]
    if q.startswith("how many"):
        if shapes:
            return NUMBERS[sum(o["shape"] == shapes[0] for o in objs)]
        if colours:
            return NUMBERS[sum(o["colour"] == colours[0] for o in objs)]
        return NUMBERS[len(objs)]
    if q.startswith("is there"):
        return "yes" if any((o["shape"], o["colour"]) == (shapes[0], colours[0]) for o in objs) else "no"
    if "color" in words:
        return next(o["colour"] for o in objs if o["shape"] == shapes[0])
    if "shape" in words:
        return next(o["shape"] for o in objs if o["colour"] == colours[0])
    o = next(o for o in objs if (o["shape"], o["colour"]) == (shapes[0], colours[0]))
    return CELL_NAMES[o["row"]][o["col"]]


def test_vqa_answers_recomputed_from_scene(smoke_world):
    w = smoke_world
    for split in ("train", "val", "test"):
        for item in w.vqa(split):
            assert item["answer"] in w.answers
            assert _vqa_answer(item["question"], w.scenes(split)[item["image"]]) == item["answer"], item


def _has(scene: dict, shape: str | None, colour: str | None) -> bool:
    return any(
        (shape is None or o["shape"] == shape) and (colour is None or o["colour"] == colour)
        for o in scene["objects"]
    )


def _nlvr2_truth(text: str, left: dict, right: dict) -> bool:
    words = text.split()
    s = next((SHAPE_OF[x] for x in words if x in SHAPE_OF), None)
    c = next((COLOUR_OF[x] for x in words if x in COLOUR_OF), None)
    nl, nr = len(left["objects"]), len(right["objects"])
    if m := re.fullmatch(r"the (left|right) image contains a \w+ \w+", text):
        return _has(left if m.group(1) == "left" else right, s, c)
    if text.startswith("both images"):
        return _has(left, s, c) and _has(right, s, c)
    if m := re.fullmatch(r"there are (\w+) objects in total", text):
        return NUMBERS.index(m.group(1)) == nl + nr
    if text == "the left image has more objects than the right image":
        return nl > nr
    if text == "the right image has more objects than the left image":
        return nr > nl
    if text.startswith("exactly one image"):
        return _has(left, s, c) != _has(right, s, c)
    assert text.startswith("neither image"), text
    return not (_has(left, s, c) or _has(right, s, c))


def test_nlvr2_truth_recomputed_and_balanced(smoke_world):
    w = smoke_world
    for split in ("train", "val", "test"):
        items = w.nlvr2(split)
        n = len(w.images(split))
        assert abs(sum(x["label"] for x in items) * 2 - len(items)) <= 1
        per_cell = Counter((x["kind"], x["label"]) for x in items)
        assert max(per_cell.values()) - min(per_cell.values()) <= 1
        for x in items:
            assert 0 <= x["left"] < n and 0 <= x["right"] < n and x["left"] != x["right"]
            scenes = w.scenes(split)
            assert _nlvr2_truth(x["statement"], scenes[x["left"]], scenes[x["right"]]) == x["label"], x


REL = {
    "left of": "L",
    "to the left of": "L",
    "right of": "R",
    "to the right of": "R",
    "above": "A",
    "below": "B",
    "under": "B",
}
OPP = {"L": "R", "R": "L", "A": "B", "B": "A"}


def test_text_cls_labels_recomputed_and_balanced(smoke_world, smoke_params):
    """The text task: a one-object sentence labelled with its colour; canonical colour words in train,
    synonyms (where a colour has one) in val and test; balanced over the colours; a fraction
    ``data.text_label_noise`` of the labels is another colour (``kind`` keeps the true one)."""
    canonical = {ws[0]: c for c, ws in COLOUR_WORDS.items()}
    synonyms = {ws[-1]: c for c, ws in COLOUR_WORDS.items()}
    noisy = total = 0
    for split in ("train", "val", "test"):
        items = smoke_world.text_cls(split)
        counts = Counter(x["kind"] for x in items)
        assert max(counts.values()) - min(counts.values()) <= 1 and len(counts) == len(COLOURS)
        words = canonical if split == "train" else synonyms
        for x in items:
            named = [words[w] for w in x["text"].split() if w in words]
            assert named == [x["kind"]], x  # exactly one colour word, in the split's form
            noisy += x["label"] != COLOURS.index(x["kind"])
            total += 1
    assert noisy / total == pytest.approx(smoke_params.data.text_label_noise, abs=0.1)
    train = {x["text"] for x in smoke_world.text_cls("train")}
    assert not train & {x["text"] for x in smoke_world.text_cls("test")}


def test_texts_fit_max_text_len(smoke_world, smoke_params):
    tok, w = smoke_world.tokenizer(), smoke_world
    texts = list(w.text_corpus())
    for split in ("train", "val", "test"):
        texts += [c for s in ("coco", "flickr") for per in w.captions(split, s) for c in per]
        texts += [q["question"] for q in w.vqa(split)] + [x["statement"] for x in w.nlvr2(split)]
        texts += [x["text"] for x in w.text_cls(split)]
    lens = [len(ids) for ids in tok(texts)["input_ids"]]
    assert max(lens) <= smoke_params.data.max_text_len
    assert all(t == t.strip().lower() and "  " not in t for t in texts)


def test_stats_chance_levels(smoke_world):
    st = smoke_world.stats
    ch = st["chance"]
    assert ch["nlvr2_majority_acc"] == pytest.approx(0.5, abs=0.05)
    assert ch["text_majority_acc"] == pytest.approx(1 / len(COLOURS), abs=0.1)
    n = st["counts"]["test"]["images"]
    assert ch["retrieval_random"]["r1"]["t2i"] == pytest.approx(1 / n)
    assert 0 < ch["ade20k_majority"]["miou"] < 0.5 and ch["vqa_majority_acc"] < 0.3
    assert st["total_bytes"] == sum(st["file_bytes"].values())


def test_load_errors(tmp_path, smoke_world):
    with pytest.raises(FileNotFoundError, match="meta.json"):
        load_world(tmp_path)
    with pytest.raises(KeyError, match="unknown split"):
        smoke_world.images("dev")
    with pytest.raises(KeyError, match="caption style"):
        smoke_world.captions("train", "cc3m")


# ------------------------------------------------------------- properties on freshly drawn scenes
seeds = st.integers(0, 2**32 - 1)


@settings(max_examples=60, deadline=None)
@given(seed=seeds, max_objects=st.integers(1, 6))
def test_texts_consistent_with_fresh_scenes(seed, max_objects):
    rng = np.random.default_rng(seed)
    scene, other = sample_scene(rng, max_objects, 32), sample_scene(rng, max_objects, 32)
    objs = {(o["shape"], o["colour"]) for o in scene["objects"]}
    assert len(objs) == len(scene["objects"])  # (shape, colour) pairs are unique within a scene
    for style in ("coco", "flickr"):
        (full, compact), (plain, compact2) = _alt(rng, grammar.caption, scene, style)
        assert compact == compact2
        for text in (full, plain, compact):
            assert set(_objects_named(text)) == objs, text
    (q, a, _), (pq, pa, _) = _alt(rng, grammar.vqa_item, scene)
    assert a == pa == _vqa_answer(q, scene) == _vqa_answer(pq, scene)
    assert a in grammar.answer_vocab(max_objects)
    for kind in grammar.NLVR2_KINDS:
        (text, truth), (plain, truth2) = _alt(rng, grammar.nlvr2_statement, scene, other, kind)
        assert truth == truth2 == _nlvr2_truth(text, scene, other) == _nlvr2_truth(plain, scene, other)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, size=st.sampled_from([16, 32, 48]))
def test_render_masks_cover_every_object(seed, size):
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng, 4, size)
    img, mask = render_scene(scene, size, rng, noise_std=6.0)
    assert img.shape == (size, size, 3) and mask.shape == (size, size)
    for o in scene["objects"]:
        assert mask[int(o["cy"]), int(o["cx"])] == 1 + SHAPES.index(o["shape"])
    assert set(np.unique(mask)) == {0} | {1 + SHAPES.index(o["shape"]) for o in scene["objects"]}
