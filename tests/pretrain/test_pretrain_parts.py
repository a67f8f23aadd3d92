"""Pre-training pieces: stage configs, batch order, LR schedule, weight-decay groups, objectives."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vlmerge_core.config import PretrainConfig
from vlmerge_core.model import MS_VARIANTS, MultiwayTransformer
from vlmerge_core.pretrain import objectives, stage_configs
from vlmerge_core.pretrain.batches import build_pretrain_data, make_global_batch, stream_indices
from vlmerge_core.pretrain.optim import adamw, lr_factor, make_optimizer


def test_stage_configs(smoke_params):
    cfg, mc = stage_configs(smoke_params, "ms", "attn")
    assert cfg is smoke_params.ms_pretrain and mc.ms_components == MS_VARIANTS["attn"]
    assert stage_configs(smoke_params, "seed")[1].ms_components == []
    assert smoke_params.init_pretrain.losses == {"mim": 1.0, "tags": 1.0}
    assert smoke_params.seed_pretrain.losses == {"mlm": 1.0, "itc": 0.5, "itc_vl": 0.5, "itm": 1.0}
    with pytest.raises(KeyError, match="variant"):
        stage_configs(smoke_params, "ms", "both")


def test_stream_is_a_permutation_per_epoch_and_pure():
    got = torch.cat([stream_indices(10, 4, s, seed=3, stream=1) for s in range(5)])  # 2 epochs
    assert sorted(got[:10].tolist()) == list(range(10)) and sorted(got[10:20].tolist()) == list(range(10))
    assert torch.equal(stream_indices(10, 4, 3, seed=3, stream=1), got[12:16])
    assert not torch.equal(stream_indices(10, 4, 0, seed=4, stream=1), got[:4])


def test_lr_schedule(smoke_params):
    cfg = dataclasses.replace(smoke_params.seed_pretrain, steps=10, warmup_frac=0.2, schedule="cosine")
    f = [lr_factor(s, cfg) for s in range(10)]
    assert (
        f[0] == 0.5
        and f[1] == 1.0
        and f[2] == 1.0
        and f[-1] < 0.05
        and f == sorted(f[:2]) + sorted(f[2:], reverse=True)
    )
    lin = dataclasses.replace(cfg, schedule="linear")
    assert abs(lr_factor(6, lin) - 0.5) < 1e-9


def test_no_decay_groups(pico_cfg):
    """The official no-decay rule (``vilt_utils.set_schedule``): a name containing "bias" or one of the
    listed norm names is not decayed; embeddings, layer scales, logit scales are; so are per-expert
    norm weights (``norm1.v.weight``), which the official list does not name."""
    model = MultiwayTransformer(dataclasses.replace(pico_cfg, layer_scale_init=0.1, ms_components=["norm1"]))
    decay, rest = make_optimizer(model, PretrainConfig()).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    dec = {names[id(p)] for p in decay["params"]}
    for n in (
        "blocks.0.attn.qkv.weight",
        "heads.itm.weight",
        "text_embed.word_embeddings.weight",
        "blocks.0.gamma_1",
        "logit_scale",
        "token_type_embed.weight",
        "cls_token",
        "blocks.0.norm1.v.weight",
    ):
        assert n in dec, n
    for n in (
        "blocks.0.attn.q_bias",
        "blocks.0.norm2.weight",
        "blocks.0.norm1.v.bias",
        "norm.weight",
        "text_embed.norm.weight",
        "heads.mlm.transform.norm.weight",
        "rel_pos_bias.relative_position_bias_table",
        "heads.itm.bias",
    ):
        assert n not in dec, n
    assert decay["weight_decay"] > 0 and rest["weight_decay"] == 0


def test_losses_are_finite_and_differentiable(smoke_params, smoke_world):
    mc = dataclasses.replace(smoke_params.model, ms_components=MS_VARIANTS["all"])
    model = MultiwayTransformer(mc)
    losses = dict.fromkeys(objectives.LOSS_NAMES, 1.0)
    cfg = dataclasses.replace(smoke_params.seed_pretrain, losses=losses)
    data = build_pretrain_data(smoke_world, mc, losses)
    batch = make_global_batch(data, cfg, 0, 0, 8, model.num_patches, set(losses))
    assert torch.equal(
        batch["mlm_labels"],
        make_global_batch(data, cfg, 0, 0, 8, model.num_patches, set(losses))["mlm_labels"],
    )
    parts = objectives.compute_losses(model, batch, losses, objectives.Shard(0, 8, 8))
    assert set(parts) == set(losses)
    sum(parts.values()).backward()
    for name in losses:
        assert torch.isfinite(parts[name]), name
    assert model.blocks[1].mlp["vl"].fc1.weight.grad.abs().sum() > 0  # fused passes reach vl
    assert model.heads.mim.weight.grad.abs().sum() > 0 and model.heads.itm.weight.grad.abs().sum() > 0
    # chance-level start: ITC ~ log(batch), ITM ~ entropy of 1/3 positives
    assert abs(parts["itc"].item() - torch.log(torch.tensor(8.0)).item()) < 0.5


def test_hard_negative_modes():
    """official: only the positive pair is excluded (another caption of the same image may be drawn);
    true_negatives: the same image and identical captions too; uniform: every other pair alike."""
    sim = torch.eye(4) * 10
    image_index = torch.tensor([0, 0, 1, 2])
    ids = torch.arange(4)[:, None].repeat(1, 3)
    w_off, _ = objectives.hard_negative_weights(sim, image_index, ids, "official")
    assert torch.all(w_off.diagonal() == 0) and w_off[0, 1] > 0  # the image's other caption stays
    neg_txt, neg_img = objectives._hard_negatives(sim, image_index, ids, seed=0, mode="true_negatives")
    for i in range(4):
        assert image_index[neg_txt[i]] != image_index[i] and image_index[neg_img[i]] != image_index[i]
    w_uni, _ = objectives.hard_negative_weights(sim, image_index, ids, "uniform")
    assert torch.equal(w_uni, 1 - torch.eye(4))
    with pytest.raises(ValueError, match="itm_negatives"):
        objectives.hard_negative_weights(sim, image_index, ids, "hardest")


def test_losses_under_bf16_autocast(smoke_params, smoke_world):
    """The GPU path runs under bf16 autocast; check dtypes on CPU autocast (rel-pos bias, layer scale on)."""
    mc = dataclasses.replace(
        smoke_params.model, ms_components=MS_VARIANTS["attn"], rel_pos_bias=True, layer_scale_init=0.1
    )
    model = MultiwayTransformer(mc)
    losses = dict.fromkeys(objectives.LOSS_NAMES, 1.0)
    cfg = dataclasses.replace(smoke_params.seed_pretrain, losses=losses)
    batch = make_global_batch(
        build_pretrain_data(smoke_world, mc, losses), cfg, 0, 0, 8, model.num_patches, set(losses)
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = objectives.compute_losses(model, batch, losses, objectives.Shard(0, 8, 8))
    sum(parts.values()).backward()
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in parts.values())


def test_adamw_is_fused_on_cpu_and_matches_the_per_tensor_update():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    fused = adamw([{"params": a, "weight_decay": 0.1}], 1e-2, (0.9, 0.98))
    plain = torch.optim.AdamW([{"params": b, "weight_decay": 0.1}], lr=1e-2, betas=(0.9, 0.98), eps=1e-8)
    assert fused.defaults["fused"] and fused.defaults["eps"] == 1e-8
    for _ in range(3):
        for params, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            ((params[0] ** 2).sum() + params[1].sum()).backward()
            opt.step()
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b))
