"""The fine-tuning loop and the task entry point on pico models and the smoke world."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from vlmerge_core.config import FinetuneConfig, ParamsError
from vlmerge_core.model import MultiwayTransformer, save_model
from vlmerge_core.tasks import TASKS, finetune_task, predictions, run_task, task_config
from vlmerge_core.tasks.engine import param_groups, warmup_linear
from vlmerge_core.tasks.heads import MLPClassifier


@pytest.fixture
def ft_cfg(smoke_params) -> FinetuneConfig:
    return dataclasses.replace(
        smoke_params.finetune, epochs=1, batch_size=16, train_subsample=32, eval_subsample=16
    )


@pytest.fixture
def pico_cfg(pico_cfg, smoke_world):
    return dataclasses.replace(pico_cfg, vocab_size=len(smoke_world.tokenizer()))


@pytest.fixture
def pico_ma(pico_cfg):
    torch.manual_seed(0)
    return MultiwayTransformer(pico_cfg)


def _strip(m: dict) -> dict:
    return {k: v for k, v in m.items() if k != "seconds"}


def test_overrides_apply_and_are_validated():
    cfg = FinetuneConfig(
        lr=1e-3, overrides={"vqa": {"lr": 2e-4, "head_lr_mult": 10.0}, "coco": {"epochs": 3}}
    )
    assert task_config(cfg, "vqa").lr == 2e-4 and task_config(cfg, "vqa").epochs == cfg.epochs
    assert task_config(cfg, "coco").epochs == 3 and task_config(cfg, "text") is cfg
    with pytest.raises(ParamsError, match=r"unknown key.*finetune\.overrides\.vqa\.lrr"):
        task_config(FinetuneConfig(overrides={"vqa": {"lrr": 1.0}}), "vqa")
    with pytest.raises(ParamsError, match="finetune.overrides.vqa.epochs"):
        task_config(FinetuneConfig(overrides={"vqa": {"epochs": -1}}), "vqa")
    with pytest.raises(ParamsError, match="real_paths cannot be overridden"):
        task_config(FinetuneConfig(overrides={"vqa": {"real_paths": {}}}), "vqa")


def test_param_groups_head_mult_layer_decay_and_no_decay(pico_ma):
    head = MLPClassifier(16, 32, 3)
    cfg = FinetuneConfig(lr=1.0, head_lr_mult=10.0, layer_decay=0.5, weight_decay=0.1)
    groups = param_groups(pico_ma, head, cfg)
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len(list(pico_ma.parameters())) + len(list(head.parameters()))
    by_id = {id(p): g for g in groups for p in g["params"]}
    depth = len(pico_ma.blocks)  # 2 -> blocks get 0.5^(2-i), embeddings 0.5^3, top (norm, heads) 1
    assert by_id[id(head.net[0].weight)]["lr_scale"] == 10.0
    assert by_id[id(pico_ma.patch_embed.proj.weight)]["lr_scale"] == 0.5 ** (depth + 1)
    assert by_id[id(pico_ma.blocks[0].mlp.fc1.weight)]["lr_scale"] == 0.5**depth
    assert by_id[id(pico_ma.blocks[1].mlp.fc1.weight)]["lr_scale"] == 0.5
    assert by_id[id(pico_ma.norm.weight)]["lr_scale"] == 1.0
    assert by_id[id(pico_ma.norm.weight)]["weight_decay"] == 0.0  # norms and biases: no decay
    assert by_id[id(pico_ma.blocks[0].mlp.fc1.bias)]["weight_decay"] == 0.0
    assert by_id[id(pico_ma.blocks[0].mlp.fc1.weight)]["weight_decay"] == 0.1


def test_warmup_linear_schedule():
    f = warmup_linear(total=10, warmup=2)
    assert [round(f(s), 3) for s in range(11)] == [
        0.5,
        1.0,
        1.0,
        0.875,
        0.75,
        0.625,
        0.5,
        0.375,
        0.25,
        0.125,
        0.0,
    ]


@pytest.mark.parametrize("task", TASKS)
def test_every_task_runs_and_writes_metrics(task, pico_ma, ft_cfg, smoke_world, tmp_path):
    m = finetune_task(task, pico_ma, ft_cfg, smoke_world, out_dir=tmp_path, n_bootstrap=50)
    assert m["task"] == task and m["main"] == m[m["main_metric"]] and m["best_epoch"] in (0, 1)
    items = 32 * (smoke_world.config.captions_per_image if task in ("coco", "flickr") else 1)
    assert 0.0 <= m["main"] <= 100.0 and m["n_train"] == items  # retrieval: every caption an item
    assert m["steps"] == -(-items // ft_cfg.batch_size) * ft_cfg.epochs
    assert f"val_{m['select_metric']}" in m and len(m["curve"]["loss"]) == m["steps"]
    # a bootstrap interval for every test metric, around the point estimate
    lo, hi = m["ci"][m["main_metric"]]
    assert lo <= m["main"] + 1e-9 and m["main"] <= hi + 1e-9
    assert set(m["ci"]) <= set(m) and all(len(v) == 2 for v in m["ci"].values())
    # val at epoch 0 (before training) and after the epoch: the last epoch's gain
    c = m["curve"]
    assert c["val_epoch"] == [0, 1] and c["val_step"] == [0, m["steps"]]
    assert m["val_last_gain"] == pytest.approx(c["val_select"][1] - c["val_select"][0])
    on_disk = json.loads((tmp_path / f"{task}.json").read_text())
    assert on_disk["main"] == pytest.approx(m["main"], abs=1e-5)


def test_deterministic_and_caller_model_untouched(pico_ma, ft_cfg, smoke_world):
    before = {k: v.clone() for k, v in pico_ma.state_dict().items()}
    a = finetune_task("nlvr2", pico_ma, ft_cfg, smoke_world)
    b = finetune_task("nlvr2", pico_ma, ft_cfg, smoke_world)
    assert _strip(a) == _strip(b)
    assert all(torch.equal(before[k], v) for k, v in pico_ma.state_dict().items())
    c = finetune_task("nlvr2", pico_ma, dataclasses.replace(ft_cfg, rng_seed=1), smoke_world)
    assert c["curve"]["loss"] != a["curve"]["loss"]


def test_evaluation_is_deterministic(pico_ma, ft_cfg, smoke_world):
    run = run_task("vqa", pico_ma, ft_cfg, smoke_world)
    run.model.train()  # evaluation must switch to eval mode itself
    from vlmerge_core.tasks.engine import evaluate

    assert evaluate(run.task, run.model, "test") == evaluate(run.task, run.model, "test")
    assert evaluate(run.task, run.model, "test")["vqa_score"] == pytest.approx(run.metrics["vqa_score"])
    ex = predictions(run, "test", 2)
    assert len(ex) == 2 and {"images", "text", "pred", "truth"} <= set(ex[0])


def test_ms_checkpoint_and_zero_epochs(pico_cfg, ft_cfg, smoke_world, tmp_path):
    ms_cfg = dataclasses.replace(pico_cfg, ms_components=["attn", "mlp", "norm1", "norm2"])
    torch.manual_seed(0)
    path = save_model(tmp_path / "ms.safetensors", MultiwayTransformer(ms_cfg))
    m = finetune_task("coco", path, dataclasses.replace(ft_cfg, epochs=0), smoke_world)
    assert m["best_epoch"] == 0 and m["steps"] == 0 and "ir_r1" in m and "ir_r1_pessimistic" in m
    assert m["val_last_gain"] != m["val_last_gain"]  # NaN: no trained epoch
    assert finetune_task("coco", path, ft_cfg, smoke_world, epochs=0)["steps"] == 0
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        finetune_task("coco", tmp_path / "nowhere.safetensors", ft_cfg, smoke_world)
    with pytest.raises(KeyError, match="unknown task"):
        finetune_task("glue", path, ft_cfg, smoke_world)


def test_cli_finetune(pico_ma, smoke_world, tmp_path, capsys):
    from vlmerge_core.cli import main

    path = save_model(tmp_path / "ma.safetensors", pico_ma)
    rc = main(
        [
            "finetune",
            str(path),
            "--profile",
            "smoke",
            "--tasks",
            "text,imagenet",
            "--world",
            str(smoke_world.root),
            "--out",
            str(tmp_path / "m"),
        ]
    )
    assert rc == 0 and "text: accuracy =" in capsys.readouterr().out
    assert (tmp_path / "m" / "imagenet.json").exists()


def test_subsample_train_seeded_eval_prefix():
    from vlmerge_core.tasks.base import subsample

    a, b = subsample(100, 10, "train", rng_seed=0), subsample(100, 10, "train", rng_seed=0)
    assert (a == b).all() and len(set(a.tolist())) == 10 and (subsample(100, 10, "train", 1) != a).any()
    assert subsample(100, 10, "test", rng_seed=5).tolist() == list(range(10))
    assert len(subsample(100, 0, "train", 0)) == 100 and len(subsample(5, 10, "val", 0)) == 5


def test_nlvr2_pairing_concatenates_left_and_right(pico_ma, ft_cfg, smoke_world):
    """compute_nlvr2 of the official code: head(cat(pooled(left, statement), pooled(right, statement)))."""
    from vlmerge_core.tasks.base import images_to_tensor
    from vlmerge_core.tasks.registry import build_task

    task = build_task("nlvr2", pico_ma, ft_cfg, smoke_world)
    pico_ma.eval()
    s = task.splits["test"]
    idx = torch.arange(3)
    with torch.no_grad():
        got = task._logits(pico_ma, s, idx)
        ids, mask = s["ids"][idx], s["mask"][idx]
        left = pico_ma.forward_fused(images_to_tensor(s["images"][s["left"][:3]]), ids, mask)["cls"]
        right = pico_ma.forward_fused(images_to_tensor(s["images"][s["right"][:3]]), ids, mask)["cls"]
        want = task.head(torch.cat([left, right], dim=-1))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_segmentation_reads_the_named_blocks(pico_ma, ft_cfg, smoke_world):
    """seg_out_blocks (BEiT's UperNet reads blocks 4, 6, 8, 12): the decoder gets the raw outputs of
    those blocks concatenated; re-derived here with forward hooks on the image path."""
    from vlmerge_core.tasks.base import images_to_tensor
    from vlmerge_core.tasks.registry import build_task

    cfg = dataclasses.replace(ft_cfg, seg_out_blocks=[0, 1])
    task = build_task("ade20k", pico_ma, cfg, smoke_world)
    assert task.head.norm.normalized_shape == (2 * pico_ma.cfg.width,)
    pico_ma.eval()
    s, idx = task.splits["test"], torch.arange(3)
    outs: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o)) for b in pico_ma.blocks]
    with torch.no_grad():
        pico_ma.forward_image(images_to_tensor(s["images"][s["image"][:3]]))
        want = task.head(torch.cat([o[:, 1:] for o in outs], dim=-1))
        for h in hooks:
            h.remove()
        got = task._logits(pico_ma, s, idx)
    torch.testing.assert_close(got, want)
    last = build_task("ade20k", pico_ma, dataclasses.replace(ft_cfg, seg_out_blocks=[]), smoke_world)
    assert last.head.norm.normalized_shape == (pico_ma.cfg.width,)
    with pytest.raises(ValueError, match="seg_out_blocks"):
        build_task("ade20k", pico_ma, dataclasses.replace(ft_cfg, seg_out_blocks=[0, 5]), smoke_world)


def test_val_every_validates_every_kth_epoch_and_the_last(pico_ma, ft_cfg, smoke_world):
    cfg = dataclasses.replace(ft_cfg, epochs=5, val_every=2)
    m = finetune_task("imagenet", pico_ma, cfg, smoke_world)
    c = m["curve"]
    assert c["val_epoch"] == [0, 2, 4, 5] and c["val_step"] == [0, 4, 8, 10] and m["steps"] == 10
    # the kept model is one of the validated epochs; the gain is per epoch over the last interval
    assert m["best_epoch"] in (2, 4, 5)
    assert m["val_last_gain"] == pytest.approx(c["val_select"][-1] - c["val_select"][-2])
    six = finetune_task("imagenet", pico_ma, dataclasses.replace(cfg, epochs=6), smoke_world)
    assert six["curve"]["val_epoch"] == [0, 2, 4, 6]
    assert six["val_last_gain"] == pytest.approx(
        (six["curve"]["val_select"][-1] - six["curve"]["val_select"][-2]) / 2
    )
    # validating less does not change training: the loss curve is that of val_every 1
    every = finetune_task("imagenet", pico_ma, dataclasses.replace(cfg, val_every=1), smoke_world)
    assert every["curve"]["val_epoch"] == [0, 1, 2, 3, 4, 5]
    assert every["curve"]["loss"] == pytest.approx(c["loss"])
    with pytest.raises(ParamsError, match="val_every"):
        task_config(FinetuneConfig(overrides={"vqa": {"val_every": 0}}), "vqa")


def test_val_subsample_cuts_the_val_set_only(smoke_params):
    from vlmerge_core.tasks.base import subsample_size

    cfg = dataclasses.replace(smoke_params.finetune, train_subsample=40, eval_subsample=30, val_subsample=20)
    assert [subsample_size(cfg, s) for s in ("train", "val", "test")] == [40, 20, 30]
    cfg = dataclasses.replace(cfg, val_subsample=0)  # 0: val follows eval_subsample
    assert subsample_size(cfg, "val") == 30
