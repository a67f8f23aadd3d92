"""Fixtures of the model tests: pico configs and inputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vlmerge_core.config import ModelConfig


@pytest.fixture
def pico() -> ModelConfig:
    """MA pico model: width 16, 2 blocks, 2 heads, fusion from block 1, 32x32 images, 8x8 patches."""
    return ModelConfig(
        width=16,
        depth=2,
        heads=2,
        vl_start=1,
        image_size=32,
        patch_size=8,
        vocab_size=64,
        max_text_len=12,
        mim_vocab=8,
    )


def with_ms(cfg: ModelConfig, comps) -> ModelConfig:
    return dataclasses.replace(cfg, ms_components=list(comps))


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 32, 32, generator=g)
    ids = torch.randint(5, 64, (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[0, 6:] = False
    mask[1, 8:] = False
    ids[~mask] = 0
    return images, ids, mask
