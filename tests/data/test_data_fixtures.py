"""Real-format fixtures: deterministic bytes, and each read back by the reader of its format."""

from __future__ import annotations

import dataclasses
import hashlib
import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from vlmerge_core.config import FinetuneConfig, profile_params
from vlmerge_core.data.fixtures import write_fixtures
from vlmerge_core.data.real import (
    HELDOUT_VAL,
    heldout_split,
    read_ade20k,
    read_image_folders,
    read_karpathy,
    read_nlvr2,
    read_text_tsv,
    read_vqav2,
)
from vlmerge_core.data.tokenizer import load_tokenizer
from vlmerge_core.model import MultiwayTransformer
from vlmerge_core.model.experts import TASKS
from vlmerge_core.model.init import load_timm_into_v
from vlmerge_core.tasks import finetune_task
from vlmerge_core.tasks.metrics import SEG_IGNORE_LABEL

SIZE = 16


@pytest.fixture(scope="module")
def model_cfg():
    return profile_params("smoke").model


@pytest.fixture(scope="module")
def fx(tmp_path_factory, model_cfg):
    return write_fixtures(tmp_path_factory.mktemp("fixtures"), 0, model_cfg)


def _digests(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_fixtures_are_deterministic_and_tiny(fx, tmp_path, model_cfg):
    root = fx["beit"].parent
    again = write_fixtures(tmp_path / "again", 0, model_cfg)["beit"].parent
    assert _digests(root) == _digests(again)
    other = _digests(write_fixtures(tmp_path / "other", 1, model_cfg)["beit"].parent)
    assert other.keys() == _digests(root).keys() and other != _digests(root)
    assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) < 2_000_000


def test_arrow_files_have_the_official_columns(fx):
    def read(name):  # as the official BaseDataset opens them
        return pa.ipc.RecordBatchFileReader(
            pa.memory_map(str(fx["arrows"] / f"{name}.arrow"), "r")
        ).read_all()

    coco = read("coco_caption_karpathy_train")
    assert coco.column_names == ["image", "caption", "image_id", "split"]
    assert pa.types.is_binary(coco.schema.field("image").type)
    assert pa.types.is_list(coco.schema.field("caption").type)
    iid = coco["image_id"][0].as_py()
    assert (fx["coco"] / "train2014" / iid).read_bytes() == coco["image"][0].as_py()
    assert int(iid.split(".")[0].split("_")[-1]) >= 1  # the official test split's id parse
    assert len(read("coco_caption_karpathy_restval")) == 2 and len(read("coco_caption_karpathy_test")) == 2
    vg = read("vg")
    assert vg.column_names == ["image", "caption", "width", "height", "x", "y", "image_id"]
    assert len(vg["caption"][0].as_py()) == len(vg["x"][0].as_py())
    for name in ("conceptual_caption_train_0", "conceptual_caption_val_0", "sbu_0"):
        t = read(name)
        assert t.column_names == ["image", "caption", "image_id", "split"] and len(t) == 4
        Image.open(io.BytesIO(t["image"][3].as_py())).convert("RGB")


@pytest.mark.parametrize("dataset", ["coco", "flickr"])
def test_karpathy_fixture_read(fx, dataset):
    tr = read_karpathy(fx[dataset], "train", SIZE, dataset)
    assert len(tr["captions"]) == 5 and all(2 <= len(c) <= 4 for c in tr["captions"])
    assert tr["images"][np.arange(5)].shape == (5, SIZE, SIZE, 3)
    assert len(read_karpathy(fx[dataset], "test", SIZE, dataset)["captions"]) == 2


def test_vqa_nlvr2_fixture_read(fx):
    tr = read_vqav2(fx["vqa"], "train", SIZE, min_answer_count=1, val_images=2)
    assert len(tr["questions"]) == 6 and len(tr["images"]) == 3 and tr["answers"]
    assert all(len(q["answers"]) == 10 for q in tr["questions"])
    val = read_vqav2(fx["vqa"], "val", SIZE, min_answer_count=1, val_images=2)
    test = read_vqav2(fx["vqa"], "test", SIZE, min_answer_count=1, val_images=2)
    assert len(val["images"]) == 2 and len(test["images"]) == 2
    counts = {s: len(read_nlvr2(fx["nlvr2"], s, SIZE)["pairs"]) for s in ("train", "val", "test")}
    assert counts == {"train": 3, "val": 2, "test": 2}
    assert read_nlvr2(fx["nlvr2"], "train", SIZE)["images"][np.arange(6)].shape == (6, SIZE, SIZE, 3)


def test_imagenet_ade20k_text_fixture_read(fx):
    tr = read_image_folders(fx["imagenet"], "train", SIZE)
    keep, held = heldout_split(6, HELDOUT_VAL["imagenet"])  # val is held out of the 6 training images
    assert tr["labels"].tolist() == np.array([0, 0, 0, 1, 1, 1])[keep].tolist()
    assert len(read_image_folders(fx["imagenet"], "val", SIZE)["labels"]) == len(held)
    assert read_image_folders(fx["imagenet"], "test", SIZE)["labels"].tolist() == [0, 1]
    ade = read_ade20k(fx["ade20k"], "train", SIZE)
    m = ade["masks"][np.arange(2)]  # 3 training images, 1 held out as val
    assert m.shape == (2, SIZE, SIZE) and set(np.unique(m).tolist()) <= {0, 1, 2, 3, SEG_IGNORE_LABEL}
    assert len(read_ade20k(fx["ade20k"], "val", SIZE)["images"]) == 1
    assert len(read_ade20k(fx["ade20k"], "test", SIZE)["images"]) == 2  # the released val split
    rows = read_text_tsv(fx["text"], "train")
    assert len(rows) == 7 and {r["label"] for r in rows} <= {0, 1}  # 8, one held out as val
    assert len(read_text_tsv(fx["text"], "test")) == 4


def test_vocab_txt_is_a_bert_vocabulary(fx):
    tok = load_tokenizer(fx["tokenizer"])
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (
        0,
        100,
        101,
        102,
        103,
    )
    ids = tok("A Red dog in the zebra-park.")["input_ids"]
    assert ids[0] == 101 and ids[-1] == 102 and tok.unk_token_id not in ids  # uncased, characters cover all


def test_beit_fixture_loads_into_the_model(fx, model_cfg):
    from safetensors.torch import load_file

    sd = load_file(str(fx["beit"]))
    assert "blocks.0.attn.q_bias" in sd and "blocks.1.attn.relative_position_bias_table" in sd
    assert "blocks.0.gamma_1" in sd and "pos_embed" not in sd and "head.weight" in sd
    torch.manual_seed(0)
    model = MultiwayTransformer(model_cfg)
    done = load_timm_into_v(model, fx["beit"])
    assert "rel_pos_bias.relative_position_bias_table" in done
    own = dict(model.named_parameters())
    q = next(n for n in own if n.startswith("blocks.1.") and n.endswith("q_bias"))
    torch.testing.assert_close(own[q], sd["blocks.1.attn.q_bias"], rtol=0, atol=0)


def test_every_task_finetunes_on_the_fixtures(fx, model_cfg):
    """The seven tasks read the fixtures through ``finetune.real_paths`` (no micro-world), with the
    fixture ``vocab.txt`` as the tokenizer and the BEiT fixture as the backbone."""
    tok = load_tokenizer(fx["tokenizer"])
    cfg = dataclasses.replace(model_cfg, vocab_size=len(tok))
    paths = {k: str(v) for k, v in fx.items() if k not in ("arrows", "beit")}
    ft = FinetuneConfig(epochs=1, batch_size=4, real_paths=paths, vqa_min_answer_count=1, overrides={})
    torch.manual_seed(0)
    model = MultiwayTransformer(cfg)
    load_timm_into_v(model, fx["beit"])
    n_train = {"vqa": 6, "coco": 17, "flickr": 17, "nlvr2": 3, "imagenet": 5, "ade20k": 2, "text": 7}
    for task in TASKS:
        m = finetune_task(task, model, ft, None)
        assert m["n_train"] == n_train[task], task
        if task == "vqa":  # val2014 has 4 images < read_vqav2's val_images (1000): the test split is empty
            assert m["val_vqa_score"] >= 0.0
            continue
        assert m["main"] == m["main"], task  # not NaN
