"""Unify round trip on the real pico model: MS from MA (identical experts) merged -> the MA weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vlmerge_core.merge.gram import collect_grams, save_grams
from vlmerge_core.merge.methods import METHODS, get_method
from vlmerge_core.merge.stream import merge_checkpoint
from vlmerge_core.model.experts import COMPONENTS

PARAMS = {
    "interpolation": {"ratio": 0.3},
    "arithmetic": {"lam": 0.5},
    "arithmetic_formula": {"lam": 0.5},
    "regmean": {"alpha": 0.9},
    "ties": {"density": 1.0},
    "dare": {"drop_rate": 0.0, "lam": 0.5},
}


def test_params_cover_every_method():
    assert set(PARAMS) == set(METHODS)


@pytest.fixture(scope="module")
def pico_ckpts(tmp_path_factory):
    from vlmerge_core.config import profile_params
    from vlmerge_core.model import MultiwayTransformer, init_ms_from_ma, save_model

    tmp = tmp_path_factory.mktemp("pico")
    torch.manual_seed(0)
    cfg = dataclasses.replace(profile_params("smoke").model, layer_scale_init=0.1, rel_pos_bias=True)
    ma = MultiwayTransformer(cfg)
    ms = MultiwayTransformer(dataclasses.replace(cfg, ms_components=list(COMPONENTS)))
    init_ms_from_ma(ms, ma.state_dict())
    save_model(tmp / "ma.safetensors", ma)
    save_model(tmp / "ms.safetensors", ms)
    g = torch.Generator().manual_seed(0)
    batch = {
        "images": torch.randn(4, 3, cfg.image_size, cfg.image_size, generator=g),
        "ids": torch.randint(5, cfg.vocab_size, (4, 6), generator=g),
        "mask": torch.ones(4, 6, dtype=torch.bool),
    }
    save_grams(tmp / "grams.safetensors", collect_grams(ms, [batch], 1))
    return tmp, ma


@pytest.mark.parametrize("method", sorted(PARAMS))
def test_round_trip_loads_as_ma(pico_ckpts, method):
    from vlmerge_core.model import load_model

    tmp, ma = pico_ckpts
    out = merge_checkpoint(
        tmp / "ms.safetensors",
        tmp / f"{method}.safetensors",
        method,
        central_path=tmp / "ma.safetensors" if get_method(method).needs_central else None,
        gram_path=tmp / "grams.safetensors" if get_method(method).needs_grams else None,
        task="vqa",
        **PARAMS[method],
    )
    merged = load_model(out)
    assert merged.kind == "ma"
    ref = ma.state_dict()
    for k, v in merged.state_dict().items():
        torch.testing.assert_close(v, ref[k], rtol=1e-5, atol=1e-6, msg=k)
