"""Random init as the official model: ``_rescale`` of attn.proj, fc1 and fc2; layer scale 0.1."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from vlmerge_core.config import ModelConfig, load_params, profile_params
from vlmerge_core.model import MS_VARIANTS, MultiwayTransformer, rescale_residual_


def _official_rescaled(model) -> set[str]:
    """Names the official ``_rescale`` divides, re-derived from its predicate on block parameters:
    ("attn" and "proj" in the name) or ("mlp" and "fc" in the name), and no "bias"."""
    out = set()
    for i, blk in enumerate(model.blocks):
        for n, _ in blk.named_parameters():
            if (("attn" in n and "proj" in n) or ("mlp" in n and "fc" in n)) and "bias" not in n:
                out.add(f"blocks.{i}.{n}")
    return out


@pytest.mark.parametrize("variant", ["", "all", "ffn"])
def test_rescale_divides_proj_fc1_fc2_by_sqrt_2_layer(pico, variant):
    model = MultiwayTransformer(dataclasses.replace(pico, ms_components=MS_VARIANTS.get(variant, [])))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    done = set(rescale_residual_(model))
    assert done == _official_rescaled(model)
    suffixes = {n.rsplit(".", 2)[-2] for n in done}
    assert suffixes == {"proj", "fc1", "fc2"}  # both MLP layers, as the official code (BEiT: fc2 only)
    for name, p in model.named_parameters():
        if name in done:
            i = int(name.split(".")[1])
            assert torch.allclose(p, torch.full_like(p, 1 / math.sqrt(2 * (i + 1)))), name
        else:
            assert (p == 1).all(), name


def test_random_init_applies_the_rescale():
    """std(fc1) / std(qkv) in block i is 1 / sqrt(2 (i + 1)) after the random init (was 1 for fc1)."""
    torch.manual_seed(0)
    cfg = ModelConfig(width=64, depth=3, heads=4, vl_start=2, mlp_ratio=4.0, init_std=0.02)
    model = MultiwayTransformer(cfg)
    for i, blk in enumerate(model.blocks):
        ref = blk.attn.qkv.weight.std().item()
        for layer in (blk.mlp.fc1, blk.mlp.fc2, blk.attn.proj):
            ratio = layer.weight.std().item() / ref
            assert abs(ratio * math.sqrt(2 * (i + 1)) - 1) < 0.05, (i, layer)


def test_layer_scale_on_by_default_as_the_official_model():
    """Official Block: gamma_1 = gamma_2 = 0.1 * ones(dim), always on."""
    for params in (profile_params("micro"), profile_params("smoke"), profile_params("paper"), load_params()):
        assert params.model.layer_scale_init == 0.1
    model = MultiwayTransformer(ModelConfig())
    for blk in model.blocks:
        assert torch.equal(blk.gamma_1, torch.full((64,), 0.1)) and torch.equal(blk.gamma_2, blk.gamma_1)
    off = MultiwayTransformer(ModelConfig(layer_scale_init=0.0))
    assert off.blocks[0].gamma_1 is None
