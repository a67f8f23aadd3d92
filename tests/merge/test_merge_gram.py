"""Gram-matrix collection on a pico MS model against a manual X^T X (vlmerge_core.merge.gram)."""

from __future__ import annotations

import dataclasses

import torch

from vlmerge_core.merge.gram import collect_grams, load_grams, save_grams


def _pico_ms(pico_cfg):
    from vlmerge_core.model import MultiwayTransformer

    torch.manual_seed(0)
    cfg = dataclasses.replace(pico_cfg, ms_components=["attn", "mlp", "norm1", "norm2"])
    return MultiwayTransformer(cfg)


def _batch(cfg, B=3, T=6):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(B, 3, cfg.image_size, cfg.image_size, generator=g)
    ids = torch.randint(5, cfg.vocab_size, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2, 2:] = False
    ids[~mask] = 0
    return {"images": images, "ids": ids, "mask": mask}


def _xtx(x):
    x = x.double()
    return x.T @ x


def test_grams_match_manual(pico_cfg, tmp_path):
    """Default: every token, padding included, as cache_gram_matrices.py (issue 9.4)."""
    model = _pico_ms(pico_cfg)
    assert model.vl_start == 1 and len(model.blocks) == 2
    b = _batch(model.cfg)
    grams = collect_grams(model, [b, b], n_batches=1)
    assert all(g.dtype == torch.float64 for g in grams.values())
    assert "blocks.1.attn.vl.qkv" in grams and "blocks.0.attn.vl.qkv" not in grams
    with torch.no_grad():
        blk0 = model.blocks[0]
        xi = blk0.part("norm1", "v")(model.embed_image(b["images"]))  # (B, 1+N, D)
        torch.testing.assert_close(grams["blocks.0.attn.v.qkv"], _xtx(xi.reshape(-1, xi.shape[-1])))
        xt = blk0.part("norm1", "l")(model.embed_text(b["ids"]))  # (B, T, D): padded rows included
        torch.testing.assert_close(grams["blocks.0.attn.l.qkv"], _xtx(xt.reshape(-1, xt.shape[-1])))
        img_h, txt_h = model.image_bottom(b["images"]), model.text_bottom(b["ids"], b["mask"])
        fused = torch.cat([img_h, txt_h], 1)
        xf = model.blocks[1].part("norm1", "vl")(fused)
        torch.testing.assert_close(grams["blocks.1.attn.vl.qkv"], _xtx(xf.reshape(-1, xf.shape[-1])))
        # fc1 input of v in block 1 on the image-only path
        h = model.run_image(model.embed_image(b["images"]), 0, 1)
        blk1 = model.blocks[1]
        a = blk1.part("attn", "v")(blk1.part("norm1", "v")(h))
        h2 = h + (blk1.gamma_1 * a if blk1.gamma_1 is not None else a)
        x1 = blk1.part("norm2", "v")(h2)
        torch.testing.assert_close(grams["blocks.1.mlp.v.fc1"], _xtx(x1.reshape(-1, x1.shape[-1])))
    two = collect_grams(model, [b, b], n_batches=2)
    torch.testing.assert_close(two["blocks.0.mlp.l.fc2"], 2 * grams["blocks.0.mlp.l.fc2"])
    save_grams(tmp_path / "g.safetensors", grams)
    back = load_grams(tmp_path / "g.safetensors")
    assert set(back) == set(grams) and all(torch.equal(back[k], grams[k]) for k in grams)


def test_exclude_padding_option(pico_cfg):
    """``exclude_padding=True`` (ours) sums over the real tokens only."""
    model = _pico_ms(pico_cfg)
    b = _batch(model.cfg)
    grams = collect_grams(model, [b], n_batches=1, exclude_padding=True)
    every = collect_grams(model, [b], n_batches=1)
    with torch.no_grad():
        xt = model.blocks[0].part("norm1", "l")(model.embed_text(b["ids"]))
        torch.testing.assert_close(grams["blocks.0.attn.l.qkv"], _xtx(xt[b["mask"]]))
        img_h, txt_h = model.image_bottom(b["images"]), model.text_bottom(b["ids"], b["mask"])
        keep = torch.cat([torch.ones(3, img_h.shape[1], dtype=torch.bool), b["mask"]], 1)
        xf = model.blocks[1].part("norm1", "vl")(torch.cat([img_h, txt_h], 1))
        torch.testing.assert_close(grams["blocks.1.attn.vl.qkv"], _xtx(xf[keep]))
    assert not torch.allclose(grams["blocks.0.attn.l.qkv"], every["blocks.0.attn.l.qkv"])
    torch.testing.assert_close(grams["blocks.0.attn.v.qkv"], every["blocks.0.attn.v.qkv"])  # no image padding
