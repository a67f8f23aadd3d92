"""The fine-tuning stage function on the smoke profile: one JSON file, seeds, per-task checkpoints, errors."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from vlmerge_core.config import ParamsError
from vlmerge_core.model import CheckpointMismatchError, MultiwayTransformer, save_model
from vlmerge_core.tasks import load_backbone, run_finetune_stage
from vlmerge_core.tasks.cli import register

RECORD_KEYS = {"task", "ft_seed", "metrics", "ci", "main_metric", "val_last_gain", "seconds", "n_train"}
RECORD_KEYS |= {"best_epoch", "curve"}


@pytest.fixture
def ckpt(tmp_path, smoke_params):
    torch.manual_seed(0)
    return str(save_model(tmp_path / "ma.safetensors", MultiwayTransformer(smoke_params.model)))


def _stage(smoke_world, **kw):
    return run_finetune_stage(profile="smoke", world_dir=str(smoke_world.root), **kw)


def test_stage_writes_one_file_with_a_record_per_task_and_seed(ckpt, smoke_world, tmp_path):
    out = tmp_path / "metrics" / "ft.json"
    res = _stage(
        smoke_world,
        checkpoint=ckpt,
        tasks=["coco", "text"],
        ft_seeds=[0, 1],
        model_info={"model_id": "pico", "kind": "init"},
        metrics_out=str(out),
    )
    on_disk = json.loads(out.read_text())
    assert on_disk["model"] == {"model_id": "pico", "kind": "init"}
    recs = on_disk["records"]
    assert [(r["task"], r["ft_seed"]) for r in recs] == [("coco", 0), ("coco", 1), ("text", 0), ("text", 1)]
    for r in recs:
        assert RECORD_KEYS <= set(r)
        assert set(r["ci"]) == set(r["metrics"]) and r["main_metric"] in r["metrics"]
        lo, hi = r["ci"][r["main_metric"]]
        assert lo <= r["metrics"][r["main_metric"]] + 1e-6 <= hi + 2e-6
    coco = recs[0]["metrics"]
    recalls = {f"{d}_r{k}" for d in ("ir", "tr") for k in (1, 5, 10)}
    assert recalls | {"r_mean", "ir_r1_pessimistic"} <= set(coco)
    assert recs[0]["curve"]["loss"] != recs[1]["curve"]["loss"]  # the fine-tuning seed changes the run
    assert res["records"][0]["metrics"]["r_mean"] == pytest.approx(coco["r_mean"], abs=1e-5)


def test_untrained_random_model_is_seeded(smoke_world, smoke_params):
    a = _stage(smoke_world, checkpoint="random:3", tasks=["imagenet"], epochs=0)["records"][0]
    b = _stage(smoke_world, checkpoint="random:3", tasks=["imagenet"], epochs=0)["records"][0]
    c = _stage(smoke_world, checkpoint="random:4", tasks=["imagenet"], epochs=0)["records"][0]
    assert a["best_epoch"] == 0 and a["steps"] == 0 and math.isnan(a["val_last_gain"])
    assert a["metrics"] == b["metrics"] and a["ci"] == b["ci"]
    m3 = load_backbone("random:3", smoke_params.model).state_dict()
    m4 = load_backbone("random:4", smoke_params.model).state_dict()
    assert any(not torch.equal(m3[k], m4[k]) for k in m3)
    assert c["checkpoint"] == "random:4"


def test_one_checkpoint_per_task_group(ckpt, smoke_world, tmp_path, smoke_params):
    torch.manual_seed(1)
    other = str(save_model(tmp_path / "other.safetensors", MultiwayTransformer(smoke_params.model)))
    res = _stage(smoke_world, checkpoint=ckpt, checkpoints={"text": other}, tasks=["coco", "text"], epochs=0)
    assert [r["checkpoint"] for r in res["records"]] == [ckpt, other]


def test_stage_errors_name_the_key_or_file(ckpt, smoke_world, tmp_path, smoke_params):
    with pytest.raises(ParamsError, match=r"tasks: unknown task\(s\) \['glue'\]"):
        _stage(smoke_world, checkpoint=ckpt, tasks=["glue"])
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        _stage(smoke_world, checkpoint=str(tmp_path / "nowhere.safetensors"), tasks=["text"])
    with pytest.raises(ParamsError, match=r"checkpoints: unknown task key\(s\) \['glu'\]"):
        _stage(smoke_world, checkpoint=ckpt, checkpoints={"glu": ckpt}, tasks=["text"])
    with pytest.raises(ParamsError, match="no checkpoint for task 'text'"):
        _stage(smoke_world, tasks=["text"])
    wide = dataclasses.replace(smoke_params.model, width=32, heads=2)
    path = save_model(tmp_path / "wide.safetensors", MultiwayTransformer(wide))
    with pytest.raises(CheckpointMismatchError, match=r"wide\.safetensors: model\.width is 32.*16"):
        _stage(smoke_world, checkpoint=str(path), tasks=["text"])
    with pytest.raises(ValueError, match="random:<rng_seed>"):
        _stage(smoke_world, checkpoint="random:x", tasks=["text"])


def test_cli_finetune_random_model(smoke_world, tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "finetune",
            "random:0",
            "--profile",
            "smoke",
            "--tasks",
            "text",
            "--world",
            str(smoke_world.root),
            "--rng-seed",
            "2",
            "--metrics-out",
            str(tmp_path / "ft.json"),
            "--out",
            str(tmp_path / "m"),
        ]
    )
    assert args.func(args) == 0
    assert "text: accuracy =" in capsys.readouterr().out
    rec = json.loads((tmp_path / "ft.json").read_text())["records"][0]
    assert rec["ft_seed"] == 2 and (tmp_path / "m" / "text.json").exists()
