"""Checkpoints: round trip, config in metadata, strict loading; BEiT/ViT weights from timm."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch

from tests.model.conftest import with_ms
from vlmerge_core.io import read_safetensors_metadata, save_safetensors
from vlmerge_core.model import (
    MS_VARIANTS,
    CheckpointMismatchError,
    MultiwayTransformer,
    init_ms_from_ma,
    load_model,
    load_timm_into_v,
    model_config_of,
    save_model,
)


def test_roundtrip(tmp_path, pico, inputs):
    model = MultiwayTransformer(with_ms(pico, MS_VARIANTS["attn"])).eval()
    path = save_model(tmp_path / "m.safetensors", model, {"step": 3})
    meta = read_safetensors_metadata(path)
    assert meta["kind"] == "ms" and meta["format"] == "vlmerge-v1" and meta["step"] == "3"
    assert model_config_of(path) == model.cfg
    again = load_model(path).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    torch.testing.assert_close(again.forward_fused(*inputs)["cls"], model.forward_fused(*inputs)["cls"])


def test_other_architecture_is_named(tmp_path, pico):
    path = save_model(tmp_path / "ma.safetensors", MultiwayTransformer(pico))
    with pytest.raises(CheckpointMismatchError, match=r"blocks\.0\.norm1\.v\.weight"):
        load_model(path, cfg_override=with_ms(pico, MS_VARIANTS["ln"]))
    with pytest.raises(CheckpointMismatchError, match="shape"):
        load_model(path, cfg_override=dataclasses.replace(pico, vocab_size=65))
    state = dict(MultiwayTransformer(pico).state_dict())
    state["extra.weight"] = torch.zeros(2)
    save_safetensors(
        tmp_path / "x.safetensors", state, {"model_config": read_safetensors_metadata(path)["model_config"]}
    )
    with pytest.raises(CheckpointMismatchError, match="extra.weight"):
        load_model(tmp_path / "x.safetensors")


def test_init_ms_from_ma_errors(pico):
    ms = MultiwayTransformer(with_ms(pico, MS_VARIANTS["all"]))
    sd = dict(MultiwayTransformer(pico).state_dict())
    del sd["blocks.1.mlp.fc1.weight"]
    with pytest.raises(KeyError, match=r"blocks\.1\.mlp\.fc1\.weight"):
        init_ms_from_ma(ms, sd)


def _timm_tiny(name, **kw):
    torch.manual_seed(0)
    return timm.create_model(
        name,
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=16,
        depth=2,
        num_heads=2,
        num_classes=0,
        **kw,
    ).eval()


@pytest.mark.parametrize("variant", ["ma", "all"])
def test_load_timm_beit(tmp_path, pico, variant):
    beit = _timm_tiny("beit_base_patch16_224")
    with torch.no_grad():  # non-trivial values for the parts that start at zero/one
        for n, p in beit.named_parameters():
            if "q_bias" in n or "v_bias" in n or "relative_position" in n or "gamma" in n:
                p.normal_(0, 0.1)
    path = tmp_path / "beit.pth"
    torch.save(beit.state_dict(), path)
    cfg = dataclasses.replace(
        pico, rel_pos_bias=True, layer_scale_init=0.1, vl_start=2, ms_components=MS_VARIANTS.get(variant, [])
    )
    model = MultiwayTransformer(cfg).eval()
    load_timm_into_v(model, path)
    with torch.no_grad():
        model.token_type_embed.weight.zero_()
    x = torch.randn(2, 3, 32, 32)
    ref = beit.forward_features(x)  # BEiT base: final norm is Identity (mean-pool fc_norm instead)
    ours = model.run_image(model.embed_image(x), 0, 2)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    if variant == "all":  # v copied into l (and vl where present)
        b = model.blocks[1]
        assert torch.equal(b.attn["v"].qkv.weight, b.attn["l"].qkv.weight)
        assert torch.equal(b.mlp["l"].fc1.weight, b.mlp["v"].fc1.weight)


def test_load_timm_vit(tmp_path, pico):
    vit = _timm_tiny("vit_base_patch16_224")
    with torch.no_grad():
        for blk in vit.blocks:
            bias = torch.randn(48) * 0.1
            bias[16:32] = 0  # BEiT-form blocks have no key bias
            blk.attn.qkv.bias.copy_(bias)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    vit_form = dataclasses.replace(
        pico, vl_start=2, abs_pos_embed=True, rel_pos_bias=False
    )  # ViT's positions
    model = MultiwayTransformer(vit_form).eval()
    load_timm_into_v(model, tmp_path / "vit.safetensors")
    with torch.no_grad():
        model.token_type_embed.weight.zero_()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.forward_image(x)["tokens"], vit.forward_features(x), atol=1e-5, rtol=0)
