"""The merge stage functions on the smoke demo checkpoints and the smoke micro-world."""

from __future__ import annotations

import json

import pytest
import torch

from vlmerge_core.config import ParamsError, profile_params
from vlmerge_core.io import load_safetensors, read_json, read_safetensors_metadata
from vlmerge_core.merge.methods import MergeError
from vlmerge_core.merge.stage import (
    checkpoint_for_task,
    make_demo_checkpoints,
    write_grams,
    write_merges,
)
from vlmerge_core.model.experts import TASKS


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_checkpoints(tmp_path_factory.mktemp("demo"))


def test_write_merges_one_checkpoint_per_task_group(demo, tmp_path):
    res = write_merges(
        profile_params("smoke"),
        ms_ckpt=str(demo["ms"]),
        central_ckpt=str(demo["central"]),
        gram_path=str(demo["grams"]),
        out_dir=str(tmp_path / "merged"),
        methods=["interpolation", "regmean"],
        metrics_out=str(tmp_path / "merge.json"),
    )
    recs = res["merges"]
    assert [(r["method"], r["group"]) for r in recs] == [
        ("interpolation", "all"),
        ("regmean", "vqa"),
        ("regmean", "retrieval"),
        ("regmean", "other"),
    ]
    assert recs[0]["knob"] == "ratio" and recs[0]["knob_value"] == 0.5 and recs[0]["tasks"] == list(TASKS)
    assert all(r["seconds"] >= 0 for r in recs)
    assert read_json(tmp_path / "merge.json")["merges"][1]["path"].endswith("regmean_alpha1__vqa.safetensors")
    assert (
        checkpoint_for_task(recs, "regmean_alpha1", "flickr").name == "regmean_alpha1__retrieval.safetensors"
    )
    assert checkpoint_for_task(tmp_path / "merged", "interpolation_ratio0.5", "vqa").name == (
        "interpolation_ratio0.5.safetensors"
    )
    with pytest.raises(MergeError, match="no merge named 'ties_density0.5'"):
        checkpoint_for_task(recs, "ties_density0.5", "vqa")
    # the vqa group's fusion blocks hold the vl expert (official RegMean: vqa -> vl, weight 1)
    vqa, _ = load_safetensors(checkpoint_for_task(recs, "regmean_alpha1", "vqa"))
    ms, _ = load_safetensors(demo["ms"])
    assert torch.equal(vqa["blocks.1.attn.qkv.weight"], ms["blocks.1.attn.vl.qkv.weight"])
    coco, _ = load_safetensors(checkpoint_for_task(recs, "regmean_alpha1", "coco"))
    assert not torch.equal(coco["blocks.1.attn.qkv.weight"], vqa["blocks.1.attn.qkv.weight"])
    meta = json.loads(read_safetensors_metadata(checkpoint_for_task(recs, "regmean_alpha1", "text"))["merge"])
    assert meta["group"] == "other" and meta["tasks"] == ["nlvr2", "imagenet", "ade20k", "text"]


def test_write_merges_used_experts_and_errors(demo, tmp_path):
    res = write_merges(
        profile_params("smoke"),
        ms_ckpt=str(demo["ms"]),
        out_dir=str(tmp_path / "m"),
        methods=["interpolation"],
        only_used_experts=True,
    )
    assert [r["group"] for r in res["merges"]] == ["fusion", "retrieval", "other"]
    with pytest.raises(ParamsError, match="central_ckpt: merge method 'arithmetic' needs"):
        write_merges(
            profile_params("smoke"), ms_ckpt=str(demo["ms"]), out_dir=str(tmp_path), methods=["arithmetic"]
        )
    with pytest.raises(ParamsError, match="gram_path: merge method 'regmean' needs"):
        write_merges(
            profile_params("smoke"), ms_ckpt=str(demo["ms"]), out_dir=str(tmp_path), methods=["regmean"]
        )


def test_write_grams(demo, tmp_path, smoke_world):
    res = write_grams(
        profile_params("smoke"),
        ms_ckpt=str(demo["ms"]),
        world_dir=str(smoke_world.root),
        out=str(tmp_path / "g.safetensors"),
        metrics_out=str(tmp_path / "g.json"),
    )
    assert res["exclude_padding"] is False and res["batches"] == 1 and res["matrices"] > 0
    nopad = write_grams(
        profile_params("smoke"),
        ms_ckpt=str(demo["ms"]),
        world_dir=str(smoke_world.root),
        out=str(tmp_path / "n.safetensors"),
        exclude_padding=True,
    )
    a, _ = load_safetensors(tmp_path / "g.safetensors")
    b, meta = load_safetensors(tmp_path / "n.safetensors")
    assert meta["exclude_padding"] == "true" and nopad["matrices"] == res["matrices"]
    assert torch.equal(a["blocks.0.attn.v.qkv"], b["blocks.0.attn.v.qkv"])  # images have no padding
    assert not torch.equal(a["blocks.0.attn.l.qkv"], b["blocks.0.attn.l.qkv"])
    with pytest.raises(MergeError, match="modality-specific"):
        write_grams(
            profile_params("smoke"), ms_ckpt=str(demo["central"]), world_dir=str(smoke_world.root), out="x"
        )
