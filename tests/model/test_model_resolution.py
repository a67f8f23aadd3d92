"""Fine-tuning at another resolution: the image relative position bias interpolated as the official code."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
import torch.nn.functional as F

from vlmerge_core.model import MultiwayTransformer, load_timm_into_v
from vlmerge_core.model.resolution import at_resolution, interpolate_image_bias


def _official_modify_checkpoint(rel_pos_bias: torch.Tensor, src_size: int, dst_size: int, non_image: int):
    """The official ``modify_checkpoint`` (vilt_module.py) re-derived: split off the rows after the
    image grid, bicubic-resize each column's grid, concatenate."""
    extra_tokens = rel_pos_bias[-non_image:, :]
    rel_pos_bias = rel_pos_bias[:-non_image, :]
    embed = rel_pos_bias.transpose(0, 1).view(-1, src_size, src_size)
    embed = F.interpolate(embed.unsqueeze(0), size=(dst_size, dst_size), mode="bicubic")
    embed = embed.squeeze(0).permute((1, 2, 0))
    embed = embed.contiguous().view(-1, embed.size(-1))
    return torch.cat((embed, extra_tokens), dim=0)


def _smooth_model(pico) -> MultiwayTransformer:
    torch.manual_seed(0)
    model = MultiwayTransformer(pico).eval()
    table = model.rel_pos_bias.relative_position_bias_table
    src = 2 * (pico.image_size // pico.patch_size) - 1
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, src), torch.linspace(-1, 1, src), indexing="ij")
    with torch.no_grad():
        table.normal_()  # text and cross-modal rows: arbitrary
        for c in range(table.shape[1]):  # image grid: a smooth surface per column
            table[: src * src, c] = (torch.sin(xx * (c + 1)) + yy**2).reshape(-1)
    return model


def test_same_size_is_identity(pico):
    model = _smooth_model(pico)
    table = model.rel_pos_bias.relative_position_bias_table.detach()
    assert interpolate_image_bias(table, 4, 4) is table
    assert at_resolution(model, pico.image_size) is model and at_resolution(model, 0) is model


def test_upsample_matches_official(pico):
    """224 -> 448 in miniature: a 4-patch grid (32 px) to 8 patches (64 px)."""
    model = _smooth_model(pico)
    table = model.rel_pos_bias.relative_position_bias_table.detach()
    non_image = table.shape[0] - 7 * 7  # [CLS] image buckets, text<->image, text buckets
    ours = interpolate_image_bias(table, 4, 8)
    ref = _official_modify_checkpoint(table.clone(), 7, 15, non_image)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    assert torch.equal(ours[15 * 15 :], table[7 * 7 :])  # text and cross-modal buckets unchanged
    assert ours[: 15 * 15].min() >= table[:49].min() - 0.2 and ours[: 15 * 15].max() <= table[:49].max() + 0.2
    flat = torch.ones(table.shape[0], 3) * torch.tensor([1.0, -2.0, 0.5])  # a constant grid stays constant
    torch.testing.assert_close(
        interpolate_image_bias(flat, 4, 8), torch.ones(15 * 15 + non_image, 3) * flat[0]
    )


def test_model_at_new_size_runs(pico, inputs):
    model = _smooth_model(pico)
    big = at_resolution(model, 64)
    assert big.cfg.image_size == 64 and model.cfg.image_size == 32  # the input model is not changed
    assert (
        big.rel_pos_bias.image_index.shape == (65, 65)
        and int(big.rel_pos_bias.image_index.max()) == 15 * 15 + 2
    )
    images, ids, mask = inputs
    out = big.eval()(F.interpolate(images, size=(64, 64)), ids, mask)
    assert out["image_tokens"].shape == (3, 65, pico.width) and torch.isfinite(out["cls"]).all()
    with torch.no_grad():  # text positions are untouched: the text path computes the same
        torch.testing.assert_close(
            big.forward_text(ids, mask)["tokens"], model.forward_text(ids, mask)["tokens"]
        )


def test_bad_size_is_named(pico):
    with pytest.raises(ValueError, match="image_size 60.*patch_size 8"):
        at_resolution(MultiwayTransformer(pico), 60)
    with pytest.raises(ValueError, match="fewer rows"):
        interpolate_image_bias(torch.zeros(10, 2), 4, 8)


def test_absolute_positions_follow(pico):
    model = MultiwayTransformer(dataclasses.replace(pico, abs_pos_embed=True))
    big = at_resolution(model, 64)
    assert big.pos_embed.shape == (1, 65, pico.width)
    assert torch.equal(big.pos_embed[:, 0], model.pos_embed[:, 0])  # [CLS] kept


@pytest.mark.parametrize("size", [32, 64])
def test_beit_shared_table_into_every_block(pico, size):
    """A BEiT checkpoint with one shared ``rel_pos_bias`` table (pt22k) fills every block's columns
    (interpolated when the model's grid differs), not skipped."""
    torch.manual_seed(0)
    beit = timm.create_model(
        "beit_base_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=16, depth=2,
        num_heads=2, num_classes=0, use_shared_rel_pos_bias=True, use_rel_pos_bias=False,
    ).eval()  # fmt: skip
    sd = beit.state_dict()
    shared = sd["rel_pos_bias.relative_position_bias_table"]
    with torch.no_grad():
        shared.normal_()
    cfg = dataclasses.replace(pico, image_size=size, vl_start=2)
    model = MultiwayTransformer(cfg).eval()
    done = load_timm_into_v(model, sd)
    assert "rel_pos_bias.relative_position_bias_table" in done
    table, H, g = model.rel_pos_bias.relative_position_bias_table, pico.heads, size // pico.patch_size
    want = interpolate_image_bias(shared, 4, g)
    for i in range(cfg.depth):
        assert torch.equal(table[: want.shape[0], i * H : (i + 1) * H], want)
    if size == 32:  # same grid: the blocks compute what BEiT's blocks compute
        with torch.no_grad():
            model.token_type_embed.weight.zero_()
            x = torch.randn(2, 3, 32, 32)
            torch.testing.assert_close(
                model.run_image(model.embed_image(x), 0, 2), beit.forward_features(x), atol=1e-5, rtol=0
            )
