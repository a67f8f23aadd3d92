"""Pre-training as the official code: ITM hard negatives from the temperature-scaled logits, the loss
balance MLM + ITM + 0.5 (ITC + ITC_vl), RNG seeds named ``rng_seed``, per-checkpoint metrics."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch
import torch.nn.functional as F

from vlmerge_core.config import PROFILES, PretrainConfig, load_params, profile_params
from vlmerge_core.model import MultiwayTransformer
from vlmerge_core.pretrain import objectives, run_pretrain
from vlmerge_core.pretrain.batches import build_pretrain_data, make_global_batch

os.environ.setdefault("VLMERGE_NO_TQDM", "1")

OFFICIAL_VL_LOSSES = {"mlm": 1.0, "itm": 1.0, "itc": 0.5, "itc_vl": 0.5}  # ifm_total_loss = (ifm + vl) * 0.5


def _all_params():
    return [profile_params(p) for p in PROFILES] + [load_params()]


def test_loss_balance_of_every_profile():
    for params in _all_params():
        for section in (params.seed_pretrain, params.ms_pretrain):
            assert section.losses == OFFICIAL_VL_LOSSES, params.profile


def test_only_used_experts_defaults_false():
    from vlmerge_core.config import MergeConfig

    assert MergeConfig().only_used_experts is False
    assert all(p.merge.only_used_experts is False for p in _all_params())


def test_rng_seed_fields():
    names = {f.name for f in dataclasses.fields(PretrainConfig)}
    assert "rng_seed" in names and "seed" not in names
    for params in _all_params():
        for section in ("data", "init_pretrain", "seed_pretrain", "ms_pretrain", "merge", "report"):
            fields = {f.name for f in dataclasses.fields(getattr(params, section))}
            assert "rng_seed" in fields and "seed" not in fields, section


def test_hard_negatives_come_from_temperature_scaled_logits(smoke_params, smoke_world, monkeypatch):
    """The official compute_itm_hardneg samples from softmax(ifm_i2t_logits) = softmax(exp(s) * cos)."""
    torch.manual_seed(0)
    model = MultiwayTransformer(smoke_params.model)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1 / 0.07))  # official init
    losses = {"itc": 0.5, "itm": 1.0}
    cfg = dataclasses.replace(smoke_params.seed_pretrain, losses=losses)
    batch = make_global_batch(
        build_pretrain_data(smoke_world, model.cfg, losses), cfg, 0, 0, 8, 16, set(losses)
    )
    seen = {}
    real = objectives._hard_negatives

    def spy(logits, *args):
        seen["logits"] = logits
        return real(logits, *args)

    monkeypatch.setattr(objectives, "_hard_negatives", spy)
    objectives.compute_losses(model, batch, losses, objectives.Shard(0, 8, 8))
    with torch.no_grad():  # the unimodal ITC features, computed through the public forward paths
        fi = F.normalize(model.heads.itc_image(model.forward_image(batch["images"])["cls"]), dim=-1)
        ft = F.normalize(model.heads.itc_text(model.forward_text(batch["ids"], batch["mask"])["cls"]), dim=-1)
    expected = model.logit_scale.exp() * fi @ ft.T
    torch.testing.assert_close(seen["logits"], expected, atol=1e-5, rtol=1e-5)


def test_hard_negative_weights_are_the_softmax_without_positives():
    g = torch.Generator().manual_seed(0)
    logits = 14.0 * F.normalize(torch.randn(6, 6, generator=g), dim=1)
    image_index = torch.arange(6)
    ids = torch.arange(6)[:, None].repeat(1, 4)
    w_i2t, w_t2i = objectives.hard_negative_weights(logits, image_index, ids)
    eye = torch.eye(6, dtype=torch.bool)
    ref_i2t = F.softmax(logits, dim=1).masked_fill(eye, 0)
    ref_t2i = F.softmax(logits.T, dim=1).masked_fill(eye, 0)
    torch.testing.assert_close(w_i2t, ref_i2t)
    torch.testing.assert_close(w_t2i, ref_t2i)
    # sampling follows the weights: the hardest negative is drawn most often
    counts = torch.zeros(6, 6)
    for seed in range(400):
        neg_txt, _ = objectives._hard_negatives(logits, image_index, ids, seed)
        counts[torch.arange(6), neg_txt] += 1
    freq = counts / counts.sum(1, keepdim=True)
    torch.testing.assert_close(freq, ref_i2t / ref_i2t.sum(1, keepdim=True), atol=0.08, rtol=0)


def test_rng_seed_changes_batches_and_init(smoke_params, smoke_world):
    losses = {"mlm": 1.0, "itc": 0.5}
    data = build_pretrain_data(smoke_world, smoke_params.model, losses)
    a = make_global_batch(data, smoke_params.seed_pretrain, 0, 0, 8, 16, set(losses))
    other = dataclasses.replace(smoke_params.seed_pretrain, rng_seed=1)
    b = make_global_batch(data, other, 0, 0, 8, 16, set(losses))
    assert not torch.equal(a["ids"], b["ids"])


def test_seed_run_writes_metrics_of_every_kept_checkpoint(tmp_path, smoke_params, smoke_world):
    cfg = dataclasses.replace(smoke_params.seed_pretrain, steps=4, save_steps=[2, 4], log_every=1)
    m = run_pretrain(cfg, smoke_params.model, smoke_world, tmp_path / "seed", stage="seed")
    assert set(m["checkpoints"]) == {"2", "4"}
    keys = {f"{d}_r{k}" for d in ("ir", "tr") for k in (1, 5, 10)} | {"rsum"}
    keys |= {f"loss_{n}_end" for n in OFFICIAL_VL_LOSSES}
    for k, rec in m["checkpoints"].items():
        assert (tmp_path / "seed" / f"ckpt_step{k}.safetensors").exists()
        assert set(rec["summary"]) == keys and rec["step"] == int(k)
        assert rec["retrieval_vl"]["n_images"] == len(smoke_world.images("val"))
    assert m["summary"] == m["checkpoints"]["4"]["summary"]
    assert m["checkpoints"]["2"]["summary"]["loss_mlm_end"] == pytest.approx(m["loss_curve"]["mlm"][1])


def test_cli_rng_seed_flag(tmp_path, monkeypatch, smoke_world):
    from vlmerge_core.cli import main
    from vlmerge_core.io import read_json

    monkeypatch.setenv("VLMERGE_ROOT", str(tmp_path))
    args = ["pretrain", "seed", "--profile", "smoke", "--world", str(smoke_world.root), "--steps", "1"]
    assert main([*args, "-o", "a", "--rng-seed", "3"]) == 0
    assert read_json(tmp_path / "a" / "run_info.json")["config"]["rng_seed"] == 3
