"""Real-format readers on tiny fixture files written in exactly the datasets' release formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmerge_core.data.real import (
    RealFormatError,
    heldout_split,
    read_ade20k,
    read_image_folders,
    read_karpathy,
    read_nlvr2,
    read_text_tsv,
    read_vqav2,
)
from vlmerge_core.tasks.metrics import SEG_IGNORE_LABEL

SIZE = 16


def _img(path: Path, colour=(200, 10, 10), size=(20, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def write_vqav2(root: Path) -> None:
    for sub, iids in (("train2014", [9, 25]), ("val2014", [42, 7, 3])):
        qs, anns = [], []
        for k, iid in enumerate(iids):
            _img(root / sub / f"COCO_{sub}_{iid:012d}.jpg")
            qid = iid * 1000 + k
            qs.append({"image_id": iid, "question": f"What colour is thing {k}?", "question_id": qid})
            answers = ["red"] * 7 + ["Red."] * 1 + ["blue"] * 2
            anns.append(
                {
                    "question_id": qid,
                    "image_id": iid,
                    "multiple_choice_answer": "red",
                    "answer_type": "other",
                    "question_type": "what color is the",
                    "answers": [
                        {"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                        for j, a in enumerate(answers)
                    ],
                }
            )
        (root / f"v2_OpenEnded_mscoco_{sub}_questions.json").write_text(
            json.dumps({"task_type": "Open-Ended", "data_type": "mscoco", "questions": qs})
        )
        (root / f"v2_mscoco_{sub}_annotations.json").write_text(json.dumps({"annotations": anns}))


def test_vqav2_reader(tmp_path):
    write_vqav2(tmp_path)
    tr = read_vqav2(tmp_path, "train", SIZE, min_answer_count=1)
    assert tr["answers"] == ["red"]  # multiple_choice_answer vocabulary
    assert len(tr["questions"]) == 2 and tr["questions"][1]["image"] == 1
    assert tr["questions"][0]["answers"].count("red") == 8  # "Red." normalised
    imgs = tr["images"][np.array([0, 1])]
    assert imgs.shape == (2, SIZE, SIZE, 3) and imgs.dtype == np.uint8 and imgs[0, 0, 0, 0] > 150
    val = read_vqav2(tmp_path, "val", SIZE, min_answer_count=1, val_images=1)
    test = read_vqav2(tmp_path, "test", SIZE, min_answer_count=1, val_images=1)
    assert [q["question_id"] for q in val["questions"]] == [3002]
    assert len(test["questions"]) == 2 and len(test["images"]) == 2


def test_vqav2_errors_name_file_and_record(tmp_path):
    write_vqav2(tmp_path)
    path = tmp_path / "v2_OpenEnded_mscoco_train2014_questions.json"
    data = json.loads(path.read_text())
    del data["questions"][1]["question"]
    path.write_text(json.dumps(data))
    with pytest.raises(
        RealFormatError, match=r"train2014_questions\.json: question 1 \(question_id 25001\).*'question'"
    ):
        read_vqav2(tmp_path, "train", SIZE, min_answer_count=1)
    with pytest.raises(FileNotFoundError, match="v2_mscoco_train2014_annotations.json"):
        read_vqav2(tmp_path / "nowhere", "train", SIZE)


def write_karpathy(root: Path, dataset: str) -> None:
    recs = []
    for i, split in enumerate(["train", "restval", "val", "test", "test"]):
        fname = f"img_{i}.jpg"
        folder = ("train2014" if i % 2 else "val2014") if dataset == "coco" else "flickr30k-images"
        _img(root / folder / fname)
        rec = {
            "filename": fname,
            "split": split,
            "imgid": i,
            "sentids": [2 * i, 2 * i + 1],
            "sentences": [
                {"raw": f"A photo number {i}.", "tokens": ["a"], "imgid": i, "sentid": 2 * i},
                {"raw": f"Another caption {i}.", "tokens": ["a"], "imgid": i, "sentid": 2 * i + 1},
            ],
        }
        if dataset == "coco":
            rec["filepath"] = folder
        recs.append(rec)
    name = "dataset_coco.json" if dataset == "coco" else "dataset_flickr30k.json"
    (root / "karpathy").mkdir(parents=True, exist_ok=True)
    (root / "karpathy" / name).write_text(json.dumps({"images": recs, "dataset": dataset}))


@pytest.mark.parametrize("dataset", ["coco", "flickr"])
def test_karpathy_reader(tmp_path, dataset):
    write_karpathy(tmp_path, dataset)
    tr = read_karpathy(tmp_path, "train", SIZE, dataset)
    assert len(tr["captions"]) == 2 and tr["captions"][1] == ["A photo number 1.", "Another caption 1."]
    te = read_karpathy(tmp_path, "test", SIZE, dataset)
    assert te["filenames"] == ["img_3.jpg", "img_4.jpg"] and te["images"][np.arange(2)].shape == (
        2,
        SIZE,
        SIZE,
        3,
    )


def test_karpathy_errors(tmp_path):
    write_karpathy(tmp_path, "coco")
    path = tmp_path / "karpathy" / "dataset_coco.json"
    data = json.loads(path.read_text())
    del data["images"][2]["sentences"][0]["raw"]
    path.write_text(json.dumps(data))
    with pytest.raises(
        RealFormatError, match=r"dataset_coco\.json: image 2 \(img_2\.jpg\) sentence 0: missing key 'raw'"
    ):
        read_karpathy(tmp_path, "val", SIZE, "coco")
    (tmp_path / "train2014" / "img_1.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"image 1 \(img_1\.jpg\).*img_1\.jpg"):
        read_karpathy(tmp_path, "train", SIZE, "coco")


def write_nlvr2(root: Path) -> None:
    rows = {
        "train": [
            ("train-10171-0-0", "True", "One image shows exactly two dogs."),
            ("train-10171-0-1", "False", "Both images show cats."),
        ],
        "dev": [("dev-850-0-0", "False", "There are three birds.")],
        "test1": [("test1-77-1-0", "True", "A dog is on the left.")],
    }
    for split, recs in rows.items():
        lines = []
        for ident, label, sent in recs:
            pair = "-".join(ident.split("-")[:-1])
            rec = {"identifier": ident, "label": label, "sentence": sent, "synset": "dog", "query": "dogs"}
            folder = root / split
            if split == "train":
                rec["directory"] = 3
                folder = root / "images" / "train" / "3"
            _img(folder / f"{pair}-img0.png", (10, 200, 10))
            _img(folder / f"{pair}-img1.png", (10, 10, 200))
            lines.append(json.dumps(rec))
        (root / "nlvr2" / "data").mkdir(parents=True, exist_ok=True)
        (root / "nlvr2" / "data" / f"{split}.json").write_text("\n".join(lines) + "\n")


def test_nlvr2_reader(tmp_path):
    write_nlvr2(tmp_path)
    tr = read_nlvr2(tmp_path, "train", SIZE)
    assert len(tr["images"]) == 2  # both statements share the image pair
    assert [(p["left"], p["right"], p["label"]) for p in tr["pairs"]] == [(0, 1, True), (0, 1, False)]
    imgs = tr["images"][np.array([0, 1])]
    assert imgs[0, 0, 0, 1] > 150 and imgs[1, 0, 0, 2] > 150  # left green, right blue
    assert read_nlvr2(tmp_path, "val", SIZE)["pairs"][0]["statement"] == "There are three birds."
    assert read_nlvr2(tmp_path, "test", SIZE)["pairs"][0]["label"] is True


def test_nlvr2_errors(tmp_path):
    write_nlvr2(tmp_path)
    path = tmp_path / "nlvr2" / "data" / "dev.json"
    path.write_text(path.read_text().replace('"False"', '"maybe"'))
    with pytest.raises(RealFormatError, match=r"dev\.json: line 1 \(identifier dev-850-0-0\): label"):
        read_nlvr2(tmp_path, "val", SIZE)
    (tmp_path / "test1" / "test1-77-1-img1.png").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"test1\.json: line 1 \(identifier test1-77-1-0\).*img1\.png"
    ):
        read_nlvr2(tmp_path, "test", SIZE)


def test_image_folders_reader(tmp_path):
    for split, n in (("train", 2), ("val", 1)):
        for k, wnid in enumerate(["n01440764", "n01443537"]):
            for i in range(n):
                _img(tmp_path / split / wnid / f"{wnid}_{split}_{i}.JPEG", (100 * k, 0, 0))
    tr, va = (read_image_folders(tmp_path, s, SIZE) for s in ("train", "val"))  # val held out of train
    assert tr["classes"] == ["n01440764", "n01443537"]
    assert sorted(tr["labels"].tolist() + va["labels"].tolist()) == [0, 0, 1, 1] and len(va["labels"]) == 1
    te = read_image_folders(tmp_path, "test", SIZE)  # no test folder -> val
    assert te["labels"].tolist() == [0, 1]
    _img(tmp_path / "val" / "n99999999" / "x.JPEG")
    with pytest.raises(RealFormatError, match="n99999999"):
        read_image_folders(tmp_path, "test", SIZE)


def test_ade20k_reader(tmp_path):
    for sub in ("training", "validation"):
        _img(tmp_path / "images" / sub / f"ADE_{sub}_00000001.jpg", size=(8, 8))
        mask = np.zeros((8, 8), np.uint8)
        mask[:4] = 1
        mask[4:, :4] = 3
        (tmp_path / "annotations" / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(tmp_path / "annotations" / sub / f"ADE_{sub}_00000001.png")
    m = read_ade20k(tmp_path, "test", SIZE)["masks"][np.array([0])]
    assert m.shape == (1, SIZE, SIZE)
    assert m[0, 0, 0] == 0 and m[0, -1, 0] == 2 and m[0, -1, -1] == SEG_IGNORE_LABEL  # reduce_zero_label
    with pytest.raises(RealFormatError, match="at least 2 are needed to hold out a val split"):
        read_ade20k(tmp_path, "val", SIZE)  # one training image: nothing to hold out
    (tmp_path / "annotations" / "validation" / "ADE_validation_00000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"ADE_validation_00000001\.jpg: annotation"):
        read_ade20k(tmp_path, "test", SIZE)


def test_text_tsv_reader(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\nit 's a charming journey . \t1\nbad film \t0\n")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nfine\t1\noops\tx\n")
    rows = read_text_tsv(tmp_path, "train") + read_text_tsv(tmp_path, "val")  # val held out of train
    assert {"text": "bad film ", "label": 0} in rows and len(rows) == 2
    with pytest.raises(RealFormatError, match=r"dev\.tsv: row 2: label 'x'"):
        read_text_tsv(tmp_path, "test")


def test_real_formats_through_finetune(tmp_path, smoke_world, pico_cfg):
    """Real VQAv2, Karpathy, NLVR2, class-folder and ADE20k files feed the same adapters as the micro-world."""
    import dataclasses

    import torch

    from vlmerge_core.config import FinetuneConfig
    from vlmerge_core.model import MultiwayTransformer
    from vlmerge_core.tasks import finetune_task

    write_vqav2(tmp_path / "vqa")
    write_karpathy(tmp_path / "flickr", "flickr")
    write_nlvr2(tmp_path / "nlvr2")
    for split in ("train", "val"):
        for k, wnid in enumerate(["n01", "n02"]):
            _img(tmp_path / "imagenet" / split / wnid / "a.JPEG", (200 * k, 0, 0))
    for sub, names in (("training", "ab"), ("validation", "a")):
        for name in names:
            _img(tmp_path / "ade" / "images" / sub / f"{name}.jpg", size=(8, 8))
            (tmp_path / "ade" / "annotations" / sub).mkdir(parents=True, exist_ok=True)
            mask = np.full((8, 8), 2, np.uint8)
            Image.fromarray(mask).save(tmp_path / "ade" / "annotations" / sub / f"{name}.png")
    paths = {t: str(tmp_path / t) for t in ("vqa", "flickr", "nlvr2", "imagenet")}
    paths["ade20k"] = str(tmp_path / "ade")
    cfg = FinetuneConfig(epochs=1, batch_size=4, real_paths=paths, vqa_min_answer_count=1, overrides={})
    torch.manual_seed(0)
    model = MultiwayTransformer(dataclasses.replace(pico_cfg, vocab_size=len(smoke_world.tokenizer())))
    for task in ("vqa", "flickr", "nlvr2", "imagenet", "ade20k"):
        m = finetune_task(task, model, cfg, smoke_world)
        if task == "vqa":  # val2014 has 3 images < val_images (1000): the test split is empty -> NaN
            assert m["main"] != m["main"] and m["val_vqa_score"] >= 0.0
            continue
        assert 0.0 <= m["main"] <= 100.0, task
    assert finetune_task("vqa", model, cfg, smoke_world)["n_train"] == 2


def test_vqa_evaluates_with_the_official_soft_score(smoke_world, pico_cfg):
    """``VQAScore``: the arg-max answer earns its soft target; "blue", given by 2 of 10 annotators,
    scores 0.6 (``get_score(2)``), not min(2/3, 1) = 0.667; "green" (4 of 10) scores 1."""
    import dataclasses

    import torch

    from vlmerge_core.config import FinetuneConfig
    from vlmerge_core.model import MultiwayTransformer
    from vlmerge_core.tasks.vqa import VQATask

    answers = ["red"] * 4 + ["blue"] * 2 + ["green"] * 4  # 10 annotators, as VQAv2
    images = np.zeros((2, pico_cfg.image_size, pico_cfg.image_size, 3), np.uint8)
    qs = [{"image": i, "question": "what colour is it?", "answers": answers} for i in (0, 1)]
    split = {"images": images, "questions": qs, "answers": ["red", "blue", "green"]}
    torch.manual_seed(0)
    model = MultiwayTransformer(dataclasses.replace(pico_cfg, vocab_size=len(smoke_world.tokenizer())))
    task = VQATask(
        model, dict.fromkeys(("train", "val", "test"), split), FinetuneConfig(), smoke_world.tokenizer()
    )
    model.eval()
    scores = {}
    for answer in ("blue", "green"):
        out = task.head.net[-1]
        with torch.no_grad():  # the head answers `answer` to every question
            out.weight.zero_()
            out.bias.fill_(-10.0)
            out.bias[task.vocab.index(answer)] = 10.0
            scores[answer] = task.evaluate(model, "test")["vqa_score"]
    assert scores["blue"] == pytest.approx(60.0) and scores["green"] == pytest.approx(100.0)


def test_heldout_split_is_seeded_and_disjoint():
    train, val = heldout_split(100, 872)
    assert len(val) == 10 and len(train) == 90  # at most a tenth of train
    assert not set(train) & set(val) and sorted([*train, *val]) == list(range(100))
    assert np.array_equal(heldout_split(100, 872)[1], val)  # seeded: the same split every time
    assert not np.array_equal(heldout_split(100, 872, seed=1)[1], val)
    assert len(heldout_split(5, 872)[1]) == 1


def test_val_is_never_the_reported_split(tmp_path):
    """ImageNet, ADE20k and SST-2 without a labelled test split: test = the released val/dev split, val
    held out of train, disjoint from the training examples."""
    for k, wnid in enumerate(["n01", "n02"]):
        for i in range(3):
            _img(tmp_path / "in" / "train" / wnid / f"{i}.JPEG", (100 * k, i, 0))
        _img(tmp_path / "in" / "val" / wnid / "v.JPEG", (100 * k, 9, 0))
    split = {
        s: read_image_folders(tmp_path / "in", s, SIZE)["images"].paths for s in ("train", "val", "test")
    }
    assert len(split["val"]) == 1 and len(split["train"]) == 5 and not set(split["val"]) & set(split["train"])
    assert all(p.parent.parent.name == "val" for p in split["test"])
    rows = "".join(f"s{i}\t{i % 2}\n" for i in range(20))
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + rows)
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nd0\t1\n")
    (tmp_path / "test.tsv").write_text("index\tsentence\n0\tt0\n")  # GLUE: no test labels
    text = {s: [r["text"] for r in read_text_tsv(tmp_path, s)] for s in ("train", "val", "test")}
    assert text["test"] == ["d0"] and len(text["val"]) == 2 and len(text["train"]) == 18
    assert not set(text["val"]) & set(text["train"])
    (tmp_path / "test.tsv").write_text("sentence\tlabel\nt0\t0\n")  # labelled test: val = dev
    assert read_text_tsv(tmp_path, "val") == [{"text": "d0", "label": 1}]
    assert read_text_tsv(tmp_path, "test") == [{"text": "t0", "label": 0}]


def test_task_resolution_from_overrides(tmp_path, smoke_world, pico_cfg):
    """A per-task ``image_size`` (paper: retrieval/NLVR2 384, VQA 480) fine-tunes the checkpoint's
    model at that resolution: position bias interpolated, images decoded at that size."""
    import dataclasses

    import torch

    from vlmerge_core.config import FinetuneConfig
    from vlmerge_core.model import MultiwayTransformer
    from vlmerge_core.tasks.registry import run_task

    for split in ("train", "val"):
        for k, wnid in enumerate(["n01", "n02"]):
            for i in range(2):
                _img(tmp_path / split / wnid / f"{i}.JPEG", (200 * k, 50 * i, 0))
    size = 2 * pico_cfg.image_size
    cfg = FinetuneConfig(
        epochs=1,
        batch_size=2,
        real_paths={"imagenet": str(tmp_path)},
        overrides={"imagenet": {"image_size": size}},
    )
    torch.manual_seed(0)
    model = MultiwayTransformer(dataclasses.replace(pico_cfg, vocab_size=len(smoke_world.tokenizer())))
    run = run_task("imagenet", model, cfg, smoke_world)
    assert run.model.cfg.image_size == size and model.cfg.image_size == pico_cfg.image_size
    assert run.task.splits["train"]["images"][np.array([0])].shape == (1, size, size, 3)
    assert 0.0 <= run.metrics["main"] <= 100.0


def test_vqa_official_protocol_trains_on_trainable_val_and_answers_test_dev(tmp_path, smoke_params):
    """``vqa_protocol: official``: train2014 + the trainable part of val2014 train, the last
    2 x ``vqa_val_images`` val2014 images are val then test (disjoint), and the test-dev2015
    questions (no answers) get an EvalAI answer file from the fine-tuned model."""
    import dataclasses

    from vlmerge_core.config import FinetuneConfig
    from vlmerge_core.data.fixtures import fixture_paths, write_fixtures
    from vlmerge_core.data.real import read_vqav2_testdev
    from vlmerge_core.tasks import run_task

    write_fixtures(tmp_path, 0, smoke_params.model)
    fx = fixture_paths(tmp_path)
    splits = {
        s: read_vqav2(fx["vqa"], s, SIZE, 1, val_images=1, protocol="official")
        for s in ("train", "val", "test")
    }
    paths = {s: set(map(str, d["images"].paths)) for s, d in splits.items()}
    assert sum("val2014" in p for p in paths["train"]) == 2 and len(paths["val"]) == len(paths["test"]) == 1
    assert (
        not (paths["train"] & paths["val"])
        and not (paths["val"] & paths["test"])
        and not (paths["train"] & paths["test"])
    )
    heldout = read_vqav2(fx["vqa"], "train", SIZE, 1, val_images=1)
    assert all("train2014" in str(p) for p in heldout["images"].paths)  # ours: train2014 only
    dev = read_vqav2_testdev(fx["vqa"], SIZE)
    assert len(dev["questions"]) == 4 and all(q["answers"] == [] for q in dev["questions"])
    cfg = FinetuneConfig(
        epochs=1, batch_size=4, vqa_min_answer_count=1, vqa_val_images=1, vqa_protocol="official",
        submission_dir=str(tmp_path / "sub"), real_paths={"vqa": str(fx["vqa"]), "tokenizer": str(fx["tokenizer"])},
    )  # fmt: skip
    model_cfg = dataclasses.replace(smoke_params.model, vocab_size=256)
    run = run_task("vqa", "random:0", cfg, None, model_cfg=model_cfg)
    assert run.metrics["n_train"] == sum(len(d["questions"]) for d in (splits["train"],))
    out = json.loads((tmp_path / "sub" / "vqa_test-dev2015_random0_seed0.json").read_text())
    assert [a["question_id"] for a in out] == [q["question_id"] for q in dev["questions"]]
    assert all(a["answer"] in run.task.vocab for a in out)


def test_official_train_transform_crops_real_images_at_their_own_size(tmp_path, monkeypatch):
    """Real files under ``augment: official`` are cropped from the decoded original (the official
    ``square_transform_randaug``), then resized; evaluation and arrays (the micro-world) are as before."""
    import torch

    from vlmerge_core.config import FinetuneConfig
    from vlmerge_core.data import augment
    from vlmerge_core.data.real import ImageFiles
    from vlmerge_core.tasks.base import augment_batch, train_images

    for k in range(2):
        _img(tmp_path / f"{k}.jpg", (40 * k, 90, 10), size=(24, 16))
    src = ImageFiles([tmp_path / f"{k}.jpg" for k in range(2)], SIZE)
    shapes: list[tuple[int, ...]] = []
    real = augment._resized_crop
    monkeypatch.setattr(
        augment, "_resized_crop", lambda img, g, size=None: shapes.append(img.shape[:2]) or real(img, g, size)
    )
    cfg, rows = FinetuneConfig(augment="official"), np.array([1, 0])
    out = train_images(src, rows, cfg, torch.Generator().manual_seed(0))
    assert out.shape == (2, SIZE, SIZE, 3) and shapes == [(16, 24), (16, 24)]
    assert np.array_equal(train_images(src, rows, cfg, None), src[rows])  # evaluation: resized only
    arrays = src[np.arange(2)]
    want = augment_batch(arrays[rows], cfg, torch.Generator().manual_seed(0))
    assert np.array_equal(train_images(arrays, rows, cfg, torch.Generator().manual_seed(0)), want)
