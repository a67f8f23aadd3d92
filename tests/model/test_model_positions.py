"""Positions as the official model has them: one relative position bias table, no absolute positions."""

from __future__ import annotations

import dataclasses

import torch

from vlmerge_core.model import MultiwayTransformer
from vlmerge_core.model.embeddings import bias_index


def _official_text_index(T: int, T0: int, n_img: int) -> torch.Tensor:
    """``vilt_module.py``'s text index, re-derived: offsets of the non-[CLS] positions shifted by
    ``2 - T0`` and placed after the image buckets and the two cross-modal ones; [CLS] buckets last."""
    rows = n_img + 2 * T0 + 2
    out = torch.zeros(T, T, dtype=torch.long)
    for i in range(1, T):
        for j in range(1, T):
            out[i, j] = ((j - 1) - (i - 1)) - (2 - T0) + n_img + 2
    out[0, :] = rows - 3
    out[:, 0] = rows - 2
    out[0, 0] = rows - 1
    return out


def test_bias_index_is_the_official_layout():
    g, T = 3, 6
    idx = bias_index(g, T, T)
    n_img = (2 * g - 1) ** 2 + 3
    assert idx["rows"] == n_img + 2 * T + 2
    assert torch.equal(idx["text"], _official_text_index(T, T, n_img))
    assert (idx["text2image"], idx["image2text"]) == (n_img, n_img + 1)
    img = idx["image"]  # BEiT's: [CLS] row, column and corner in the last three image buckets
    assert img[0, 1] == n_img - 3 and img[1, 0] == n_img - 2 and img[0, 0] == n_img - 1
    assert int(img[1:, 1:].max()) < n_img - 3
    # a table wider than the text (the official max_text_len_of_initckpt) keeps the same formula
    assert torch.equal(bias_index(g, 4, 10)["text"], _official_text_index(4, 10, n_img))


def test_fused_bias_uses_the_cross_modal_buckets(pico):
    model = MultiwayTransformer(pico)
    with torch.no_grad():
        model.rel_pos_bias.relative_position_bias_table.copy_(
            torch.arange(model.rel_pos_bias.relative_position_bias_table.numel(), dtype=torch.float).view_as(
                model.rel_pos_bias.relative_position_bias_table
            )
        )
    T, H = 5, pico.heads
    fused = model.rel_pos_bias.fused(T)[0]  # block 0: (H, M+T, M+T)
    table = model.rel_pos_bias.relative_position_bias_table
    M = model.num_patches + 1
    t2i, i2t = model.rel_pos_bias.text2image, model.rel_pos_bias.image2text
    assert torch.equal(fused[:, M:, :M], table[t2i, :H][:, None, None].expand(H, T, M))
    assert torch.equal(fused[:, :M, M:], table[i2t, :H][:, None, None].expand(H, M, T))
    assert torch.equal(fused[:, :M, :M], model.rel_pos_bias.image()[0])
    assert torch.equal(fused[:, M:, M:], model.rel_pos_bias.text(T)[0])


def test_no_absolute_positions_by_default(pico):
    model = MultiwayTransformer(pico)
    names = dict(model.named_parameters())
    assert "pos_embed" not in names and not any("position_embeddings" in n for n in names)
    # without any position information the text path is permutation-equivariant; the bias breaks it
    flat = MultiwayTransformer(dataclasses.replace(pico, rel_pos_bias=False)).eval()
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    perm = torch.tensor([0, 3, 1, 4, 2])
    out = flat.forward_text(ids, mask)["tokens"]
    torch.testing.assert_close(flat.forward_text(ids[:, perm], mask)["tokens"], out[:, perm])
    model.eval()
    with torch.no_grad():
        model.rel_pos_bias.relative_position_bias_table.normal_()
    out = model.forward_text(ids, mask)["tokens"]
    assert (model.forward_text(ids[:, perm], mask)["tokens"] - out[:, perm]).abs().max() > 1e-3


def test_nlvr2_third_token_type_starts_as_the_image_type(pico):
    model = MultiwayTransformer(pico).eval()
    images, ids = torch.randn(2, 3, 32, 32), torch.tensor([[1, 5, 6], [1, 7, 8]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    before = model.forward_fused(images, ids, mask)["cls"]
    assert model.add_token_type() == 2 and model.token_type_embed.num_embeddings == 3
    assert torch.equal(model.token_type_embed.weight[2], model.token_type_embed.weight[1])
    torch.testing.assert_close(model.forward_fused(images, ids, mask, image_token_type=2)["cls"], before)
