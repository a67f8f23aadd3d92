"""Pre-training pairs from the official arrow files, COCO Karpathy, the released layouts and the
micro-world; the loader."""

from __future__ import annotations

import json
import pickle
import re
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.distributed as dist

from vlmerge_core.config import DataConfig, params_from_dict, profile_params
from vlmerge_core.data import PairDataset
from vlmerge_core.data import augment as augment_mod
from vlmerge_core.data.fixtures import fixture_paths, write_arrow, write_fixtures, write_karpathy_folder
from vlmerge_core.data.pretrain_data import (
    ArrowPairs,
    PretrainDataError,
    ReleasedPairs,
    arrow_paths,
    pretrain_pairs,
)
from vlmerge_core.data.pretrain_loader import make_pretrain_loader
from vlmerge_core.data.real import read_karpathy
from vlmerge_core.data.real_source import RealSource, open_source
from vlmerge_core.data.tokenizer import load_tokenizer

SIZE, T = 16, 12


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return write_fixtures(tmp_path_factory.mktemp("fixtures"), 0, profile_params("smoke").model)


@pytest.fixture(scope="module")
def tok(fx):
    return load_tokenizer(fx["tokenizer"])


@pytest.fixture(scope="module")
def arrow_ds(fx, tok):
    return pretrain_pairs("arrow", (fx["arrows"], ["coco", "coco_restval", "vg", "cc", "sbu"]), tok, T, SIZE)


def _check_item(item, n_images):
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1.0 and item["image"].max() <= 1.0
    assert item["ids"].shape == (T,) and item["mask"].dtype == torch.bool and item["mask"][0]
    assert 0 <= int(item["index"]) < n_images


def test_arrow_pairs_read_every_official_file(fx, tok, arrow_ds):
    files = [p.name for p in arrow_paths(fx["arrows"], ["coco", "coco_restval", "vg", "cc", "sbu"])]
    assert files == [
        "coco_caption_karpathy_train.arrow",
        "coco_caption_karpathy_restval.arrow",
        "vg.arrow",
        "conceptual_caption_train_0.arrow",
        "sbu_0.arrow",
    ]  # absent CC/SBU shards skipped, as the official classes do
    tables = [pa.ipc.open_file(pa.memory_map(str(fx["arrows"] / f), "r")).read_all() for f in files]
    n_caps = sum(len(dict.fromkeys(c)) for t in tables for c in t["caption"].to_pylist())
    assert len(arrow_ds) == n_caps and arrow_ds.num_images == sum(len(t) for t in tables) == 5 + 4 + 4 + 4
    assert arrow_ds.describe() == {
        "data_format": "arrow",
        "n_pairs": n_caps,
        "n_images": 17,
        "files": files,
        "augment": "none",
    }
    for i in (0, len(arrow_ds) - 1):
        _check_item(arrow_ds[i], arrow_ds.num_images)
    assert tok.decode(arrow_ds[0]["ids"], skip_special_tokens=True) == arrow_ds.texts[0].lower()


def test_arrow_errors_name_the_file(fx, tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="no arrow file of 'sbu'"):
        arrow_paths(tmp_path, ["sbu"])
    with pytest.raises(KeyError, match="unknown pre-training dataset 'laion'"):
        arrow_paths(fx["arrows"], ["laion"])
    shutil.copy(fx["arrows"] / "sbu_0.arrow", tmp_path / "code224_sbu_3.arrow")  # vl-merging's name
    assert arrow_paths(tmp_path, ["sbu"]) == [tmp_path / "code224_sbu_3.arrow"]
    write_arrow(tmp_path / "vg.arrow", [[b"x", "y"]], ["image", "text"])
    with pytest.raises(PretrainDataError, match=r"vg\.arrow: missing column\(s\) \['caption'\]"):
        ArrowPairs([tmp_path / "vg.arrow"], tok, T, SIZE)
    (tmp_path / "sbu_0.arrow").write_bytes(b"not an arrow file")
    with pytest.raises(PretrainDataError, match=r"sbu_0\.arrow: not a readable arrow file"):
        ArrowPairs([tmp_path / "sbu_0.arrow"], tok, T, SIZE)
    write_arrow(
        tmp_path / "sbu_1.arrow",
        [[b"garbage", ["a dog"], "1", "train"]],
        ["image", "caption", "image_id", "split"],
    )
    with pytest.raises(PretrainDataError, match=r"sbu_1\.arrow: row 0: cannot decode image"):
        ArrowPairs([tmp_path / "sbu_1.arrow"], tok, T, SIZE)[0]


def test_karpathy_pairs(fx, tok):
    ds = pretrain_pairs("coco_karpathy", fx["coco"], tok, T, SIZE)
    assert ds.data_format == "coco_karpathy" and ds.num_images == 5  # train + restval
    arrow = pretrain_pairs("arrow", (fx["arrows"], ["coco", "coco_restval"]), tok, T, SIZE)
    assert sorted(ds.texts) == sorted(arrow.texts)  # the arrow files hold the same pairs
    _check_item(ds[len(ds) - 1], 5)


def test_micro_pairs_equal_pair_dataset(smoke_world):
    ds = pretrain_pairs("micro", smoke_world, None, None, None)
    ref = PairDataset(smoke_world, "train", smoke_world.tokenizer(), smoke_world.config.max_text_len)
    assert len(ds) == len(ref) and ds.data_format == "micro"
    for i in (0, len(ds) - 1):
        a, b = ds[i], ref[i]
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_unknown_format(tok):
    with pytest.raises(KeyError, match="unknown pre-training data_format 'tsv'"):
        pretrain_pairs("tsv", None, tok, T, SIZE)


def _first(loader):
    return next(iter(loader))


def test_loader_is_seeded_per_epoch(arrow_ds):
    a = _first(make_pretrain_loader(arrow_ds, 4, seed=3))
    b = _first(make_pretrain_loader(arrow_ds, 4, seed=3))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    loader = make_pretrain_loader(arrow_ds, 4, seed=3)
    loader.set_epoch(1)
    assert not torch.equal(_first(loader)["ids"], a["ids"])
    assert loader.data_format == "arrow" and loader.describe()["world_size"] == 1
    w = _first(make_pretrain_loader(arrow_ds, 4, seed=3, num_workers=1))  # decoded in a worker
    torch.testing.assert_close(w["image"], a["image"], rtol=0, atol=0)


def test_loader_shards_disjointly_across_ranks(arrow_ds):
    seen = []
    for r in (0, 1):
        loader = make_pretrain_loader(arrow_ds, 2, seed=0, num_replicas=2, rank=r)
        assert loader.describe()["rank"] == r and loader.describe()["world_size"] == 2
        seen.append(list(loader.sampler))
        assert len(list(loader)) == len(arrow_ds) // 2 // 2  # equal shares, whole batches
    n = len(arrow_ds) // 2 * 2  # the odd pair out is dropped (drop_last), never served twice
    assert not set(seen[0]) & set(seen[1]) and len(set(seen[0]) | set(seen[1])) == n
    one = list(make_pretrain_loader(arrow_ds, 2, seed=0).sampler)  # one process: the same permutation
    assert sorted(one[:n]) == sorted(seen[0] + seen[1])


def test_augmentation_is_seeded_by_item_and_epoch(fx, tok):
    ds = pretrain_pairs("coco_karpathy", fx["coco"], tok, T, SIZE, augment="official")
    plain = pretrain_pairs("coco_karpathy", fx["coco"], tok, T, SIZE)
    a = _first(make_pretrain_loader(ds, 4, seed=5, shuffle=False))["image"]
    b = _first(make_pretrain_loader(ds, 4, seed=5, shuffle=False, num_workers=1))["image"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same draws in a worker
    assert not torch.equal(a, _first(make_pretrain_loader(plain, 4, seed=5, shuffle=False))["image"])
    assert not torch.equal(a, _first(make_pretrain_loader(ds, 4, seed=5, epoch=1, shuffle=False))["image"])
    with pytest.raises(ValueError, match="augment must be one of"):
        pretrain_pairs("coco_karpathy", fx["coco"], tok, T, SIZE, augment="randaug")


def test_arrow_pairs_pickle_without_their_tables(arrow_ds):
    arrow_ds[0]  # maps a file
    assert arrow_ds._tables
    copy = pickle.loads(pickle.dumps(arrow_ds))
    assert copy._tables == {}
    torch.testing.assert_close(copy[3]["image"], arrow_ds[3]["image"], rtol=0, atol=0)


def test_karpathy_errors_name_the_image(tmp_path, tok):
    write_karpathy_folder(tmp_path, 0, "coco")
    (tmp_path / "val2014" / "COCO_val2014_000000000004.jpg").write_bytes(b"not a jpeg")  # restval
    ds = pretrain_pairs("coco_karpathy", tmp_path, tok, T, SIZE)
    with pytest.raises(PretrainDataError, match=r"COCO_val2014_000000000004\.jpg: cannot decode image"):
        ds[ds.image_index.index(3)]
    (tmp_path / "train2014" / "COCO_train2014_000000000001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"COCO_train2014_000000000001\.jpg"):
        pretrain_pairs("coco_karpathy", tmp_path, tok, T, SIZE)


def test_loader_takes_its_share_from_the_process_group(arrow_ds, tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loader = make_pretrain_loader(arrow_ds, 2, seed=0)
        assert (loader.describe()["world_size"], loader.describe()["rank"]) == (1, 0)
        assert make_pretrain_loader(arrow_ds, 2, seed=0, num_replicas=2, rank=1).describe()["rank"] == 1
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------- released
RELEASED_IMAGES = {"coco": 5, "vg": 3, "cc": 3, "sbu": 3}  # the fixtures' images that have captions


def _released_items(root, name):
    """Distinct captions per usable image of a fixture folder, counted from its annotation file."""
    if name == "coco":
        return sum(len(set(c)) for c in read_karpathy(root / "coco", "train", SIZE)["captions"])
    if name == "vg":
        recs = json.loads((root / "vg" / "annotations" / "region_descriptions.json").read_text())
        by_image = {r["id"]: {g["phrase"] for g in r["regions"]} for r in recs}
        return sum(len(by_image[i]) for i in (1, 2, 3))  # 4 was not downloaded
    pairs = json.loads((root / name / ("train_annot.json" if name == "cc" else "annot.json")).read_text())
    return len({(p.split("/")[-1], c) for p, c in pairs if not p.endswith("0300007")})  # not downloaded


def test_released_pairs_read_each_dataset(fx, tok):
    total = 0
    for name, n_images in RELEASED_IMAGES.items():
        ds = pretrain_pairs("released", (fx["released"], [name]), tok, T, SIZE)
        assert ds.num_images == n_images and len(ds) == _released_items(fx["released"], name)
        assert all(p.is_relative_to(fx["released"] / name) for p in ds.paths)
        _check_item(ds[len(ds) - 1], n_images)
        total += len(ds)
    ds = ReleasedPairs(fx["released"], list(RELEASED_IMAGES), tok, T, SIZE)
    assert ds.describe() == {
        "data_format": "released",
        "n_pairs": total,
        "n_images": 14,
        "augment": "none",
        "datasets": RELEASED_IMAGES,
    }
    for i in (0, len(ds) - 1):
        _check_item(ds[i], 14)  # decoded and resized to the model's size
    copy = pickle.loads(pickle.dumps(ds))  # what a DataLoader worker receives
    torch.testing.assert_close(copy[5]["image"], ds[5]["image"], rtol=0, atol=0)
    assert tok.decode(ds[0]["ids"], skip_special_tokens=True) == ds.texts[0].lower()


def test_released_pairs_group_captions_and_drop_repeats(fx, tok):
    cc = ReleasedPairs(fx["released"], ["cc"], tok, T, SIZE)
    pairs = json.loads((fx["released"] / "cc" / "train_annot.json").read_text())
    # image 0000007: records 0 and 4 (apart) are grouped; image 0100007: records 1 and 5 repeat a caption
    assert [p.name for p in cc.paths] == ["0000007", "0100007", "0200007"]
    assert [t for t, j in zip(cc.texts, cc.image_index) if j == 0] == [pairs[0][1], pairs[4][1]]
    assert [t for t, j in zip(cc.texts, cc.image_index) if j == 1] == [pairs[1][1]] == [pairs[5][1]]
    vg = ReleasedPairs(fx["released"], ["vg"], tok, T, SIZE)
    recs = json.loads((fx["released"] / "vg" / "annotations" / "region_descriptions.json").read_text())
    phrases = [r["phrase"] for r in recs[0]["regions"]]
    assert phrases[-1] == phrases[0]  # the fixture repeats a region's phrase
    assert vg.paths[0].name == "1.jpg" and vg.paths[2].parent.name == "VG_100K_2"
    assert [t for t, j in zip(vg.texts, vg.image_index) if j == 0] == list(dict.fromkeys(phrases))


def test_released_errors_name_the_path(fx, tok, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"expected {tmp_path / 'sbu'}")):
        ReleasedPairs(tmp_path, ["sbu"], tok, T, SIZE)
    with pytest.raises(KeyError, match="unknown released pre-training dataset 'laion'"):
        ReleasedPairs(fx["released"], ["laion"], tok, T, SIZE)
    shutil.copytree(fx["released"] / "vg", tmp_path / "vg")
    regions = tmp_path / "vg" / "annotations" / "region_descriptions.json"
    regions.unlink()
    with pytest.raises(FileNotFoundError, match=r"region_descriptions\.json: annotation file not found"):
        ReleasedPairs(tmp_path, ["vg"], tok, T, SIZE)
    bad = [
        {"regions": [{"image_id": 1, "phrase": "a dog"}], "id": 1},
        {"regions": [{"image_id": 2}], "id": 2},
    ]
    regions.write_text(json.dumps(bad))
    with pytest.raises(
        PretrainDataError, match=r"region_descriptions\.json: record 1 region 0: expected an int"
    ):
        ReleasedPairs(tmp_path, ["vg"], tok, T, SIZE)
    shutil.copytree(fx["released"] / "cc", tmp_path / "cc")
    (tmp_path / "cc" / "train_annot.json").write_text(json.dumps([["a/0000007", "a dog"], ["a/0100007"]]))
    with pytest.raises(PretrainDataError, match=r"train_annot\.json: record 1: expected \[image_file_path"):
        ReleasedPairs(tmp_path, ["cc"], tok, T, SIZE)
    (tmp_path / "cc" / "train_annot.json").write_text(json.dumps([["a/0000007", "a dog"]]))
    (tmp_path / "cc" / "images_train" / "0000" / "0000007").write_bytes(b"not a jpeg")
    ds = ReleasedPairs(tmp_path, ["cc"], tok, T, SIZE)
    with pytest.raises(PretrainDataError, match=r"images_train/0000/0000007: cannot decode image"):
        ds[0]


def test_real_source_reads_released_folders(fx):
    cfg = DataConfig(
        pretrain_format="released", pretrain_path=str(fx["released"]), pretrain_datasets=["vg", "cc"],
        tokenizer=str(fx["tokenizer"]), image_size=SIZE,
    )  # fmt: skip
    source = open_source(cfg)
    assert isinstance(source, RealSource) and source.data_format == "released"
    pairs = source.pairs(T, SIZE, augment="official")
    assert isinstance(pairs, ReleasedPairs) and pairs.describe()["datasets"] == {"vg": 3, "cc": 3}
    _check_item(pairs[0], 6)
    val = read_karpathy(fx["released"] / "coco", "val", SIZE)
    assert source.images("val").shape == (2, SIZE, SIZE, 3)  # the Karpathy val split of coco/
    np.testing.assert_array_equal(source.images("val"), val["images"][[0, 1]])
    assert source.captions("val") == val["captions"]
    params = params_from_dict(
        {"data": {"pretrain_format": "released", "pretrain_path": "r", "tokenizer": "t"}}, "p.yaml"
    )
    assert params.data.pretrain_format == "released"


def test_official_augment_crops_the_original_image_then_resizes(tmp_path):
    """``official``: RandomResizedCrop of the decoded image at its own size (the official transform),
    not of the image already resized to the model's size; the draw depends on (seed, epoch, item)."""
    write_fixtures(tmp_path, 0)
    p = fixture_paths(tmp_path)
    tok = load_tokenizer(p["tokenizer"])
    seen: list[tuple[int, ...]] = []
    real = augment_mod._resized_crop

    def spy(img, g, size=None):
        seen.append(img.shape[:2])
        return real(img, g, size)

    pairs = ArrowPairs(arrow_paths(p["arrows"], ["coco"]), tok, 16, 32, augment="official")
    try:
        augment_mod._resized_crop = spy
        x = pairs.image(0)
    finally:
        augment_mod._resized_crop = real
    assert seen == [(16, 24)] and x.shape == (3, 32, 32)  # the fixtures' 24 x 16 JPEG, uncropped before
    assert torch.equal(pairs.image(0), x)  # same (seed, epoch, item): the same crop
