"""Pre-training pairs from the official arrow files, COCO Karpathy and the micro-world; the loader."""

from __future__ import annotations

import pickle
import shutil

import pyarrow as pa
import pytest
import torch
import torch.distributed as dist

from vlmerge_core.config import profile_params
from vlmerge_core.data import PairDataset
from vlmerge_core.data.fixtures import write_arrow, write_fixtures, write_karpathy_folder
from vlmerge_core.data.pretrain_data import (
    ArrowPairs,
    PretrainDataError,
    arrow_paths,
    pretrain_pairs,
)
from vlmerge_core.data.pretrain_loader import make_pretrain_loader
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
