"""Multiway transformer: MS == MA when experts are equal, routing, padding, names and counts."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.model.conftest import with_ms
from vlmerge_core.model import MS_VARIANTS, MultiwayTransformer, init_ms_from_ma, strip_expert


def _outputs(model, images, ids, mask):
    return {
        "image": model.forward_image(images),
        "image_vl": model.forward_image(images, top="vl"),
        "text": model.forward_text(ids, mask),
        "text_vl": model.forward_text(ids, mask, top="vl"),
        "fused": model.forward_fused(images, ids, mask),
    }


@pytest.mark.parametrize("variant", sorted(MS_VARIANTS))
@pytest.mark.parametrize(
    "extras", [{}, {"layer_scale_init": 0.0, "rel_pos_bias": False, "abs_pos_embed": True}]
)
def test_ms_with_equal_experts_equals_ma(pico, inputs, variant, extras):
    torch.manual_seed(0)
    ma = MultiwayTransformer(dataclasses.replace(pico, **extras)).eval()
    ms = MultiwayTransformer(with_ms(dataclasses.replace(pico, **extras), MS_VARIANTS[variant])).eval()
    init_ms_from_ma(ms, ma.state_dict())
    a, b = _outputs(ma, *inputs), _outputs(ms, *inputs)
    for path in a:
        for key in a[path]:
            torch.testing.assert_close(b[path][key], a[path][key], atol=1e-5, rtol=0, msg=f"{path}.{key}")


def test_shapes(pico, inputs):
    model = MultiwayTransformer(pico)
    images, ids, mask = inputs
    n = model.num_patches
    out = model.forward_fused(images, ids, mask)
    assert out["tokens"].shape == (3, 1 + n + 10, 16)
    assert out["image_tokens"].shape == (3, 1 + n, 16) and out["text_tokens"].shape == (3, 10, 16)
    assert out["cls"].shape == (3, 16)
    assert model.forward_image(images)["tokens"].shape == (3, 1 + n, 16)
    assert model.forward_text(ids, mask)["cls"].shape == (3, 16)
    assert model.experts_of_block(0) == ["v", "l"] and model.experts_of_block(1) == ["v", "l", "vl"]


def test_no_cross_attention_below_vl_start(pico, inputs):
    images, ids, mask = inputs
    no_fusion = MultiwayTransformer(dataclasses.replace(pico, vl_start=2)).eval()
    a = no_fusion.forward_fused(images, ids, mask)["text_tokens"]
    b = no_fusion.forward_fused(torch.randn_like(images), ids, mask)["text_tokens"]
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    fused = MultiwayTransformer(pico).eval()  # from block 1 on, the text does see the image
    a = fused.forward_fused(images, ids, mask)["text_tokens"]
    b = fused.forward_fused(torch.randn_like(images), ids, mask)["text_tokens"]
    assert (a - b).abs().max() > 1e-4
    # without fusion blocks, the fused path is exactly the two unimodal paths side by side
    out = no_fusion.forward_fused(images, ids, mask)
    torch.testing.assert_close(out["text_tokens"], no_fusion.forward_text(ids, mask)["tokens"])
    torch.testing.assert_close(out["image_tokens"], no_fusion.forward_image(images)["tokens"])


def test_padded_text_is_masked(pico, inputs):
    images, ids, mask = inputs
    model = MultiwayTransformer(dataclasses.replace(pico, ms_components=MS_VARIANTS["all"])).eval()
    ids2 = ids.clone()
    ids2[~mask] = 7  # change only padded tokens
    for fn in (
        lambda i: model.forward_text(i, mask)["tokens"],
        lambda i: model.forward_fused(images, i, mask)["text_tokens"],
    ):
        a, b = fn(ids), fn(ids2)
        torch.testing.assert_close(a[mask], b[mask], atol=1e-6, rtol=0)


def _sizes(D=16, hidden=64):
    return {
        "norm1": 2 * D,
        "norm2": 2 * D,
        "attn": 3 * D * D + 2 * D + D * D + D,
        "mlp": D * hidden + hidden + hidden * D + D,
    }


@pytest.mark.parametrize("variant", sorted(MS_VARIANTS))
def test_variant_names_and_counts(pico, variant):
    comps = MS_VARIANTS[variant]
    ma = MultiwayTransformer(pico)
    ms = MultiwayTransformer(with_ms(pico, comps))
    assert ms.kind == "ms" and ma.kind == "ma"
    block = {k: v for k, v in ms.state_dict().items() if k.startswith("blocks.")}
    # which names carry an expert level (layer scales gamma_1/gamma_2 are never per expert)
    for name in block:
        parts = name.split(".")
        has_expert = len(parts) > 4 and parts[3] in ("v", "l", "vl")
        assert has_expert == (parts[2] in comps), name
    # counts: block 0 has experts v, l; block 1 (>= vl_start) has v, l, vl; plus 2 x D gammas a block
    sizes = _sizes()
    expected = sum(sizes[c] * ((2 + 3) if c in comps else 2) for c in sizes)
    expected += 2 * pico.width * pico.depth if pico.layer_scale_init > 0 else 0
    assert sum(v.numel() for v in block.values()) == expected
    # stripping the expert level gives exactly the MA names and shapes
    stripped = {strip_expert(k): tuple(v.shape) for k, v in ms.state_dict().items()}
    assert stripped == {k: tuple(v.shape) for k, v in ma.state_dict().items()}
    assert set(ms.state_dict()) - set(ma.state_dict()) == {k for k in block if strip_expert(k) != k}


def test_ms_variant_mapping_matches_official():
    assert MS_VARIANTS == {
        "all": ["attn", "mlp", "norm1", "norm2"],
        "attn": ["attn", "norm1"],
        "ffn": ["mlp", "norm2"],
        "ln": ["norm1", "norm2"],
    }


def test_mim_mask_token_changes_only_masked(pico, inputs):
    images = inputs[0]
    model = MultiwayTransformer(pico)
    pm = torch.zeros(3, model.num_patches, dtype=torch.bool)
    pm[:, :3] = True
    a, b = model.embed_image(images), model.embed_image(images, pm)
    torch.testing.assert_close(a[:, 4:], b[:, 4:])
    assert (a[:, 1:4] - b[:, 1:4]).abs().max() > 0


def test_bad_route_errors(pico, inputs):
    model = MultiwayTransformer(pico)
    with pytest.raises(ValueError, match="top"):
        model.forward_image(inputs[0], top="l")
    with pytest.raises(KeyError, match="vl"):
        model.blocks[0](torch.zeros(1, 2, 16), "vl")
