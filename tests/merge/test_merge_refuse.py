"""Merging refuses what it cannot merge, naming the file and tensor, and writes nothing (issue 10.6)."""

from __future__ import annotations

import pytest
import torch
from _merge_helpers import make_ma_sd, ms_from_ma

from vlmerge_core.io import save_safetensors
from vlmerge_core.merge.methods import MergeError
from vlmerge_core.merge.stream import merge_checkpoint
from vlmerge_core.merge.unify import unify_state_dict

CFG = {"width": 8, "depth": 2, "heads": 2, "vl_start": 1, "ms_components": ["attn", "mlp", "norm1", "norm2"]}


def _files(tmp_path, ms=None, central=None, grams=None):
    ma = make_ma_sd(depth=2, width=8)
    ms = ms if ms is not None else ms_from_ma(ma, vl_start=1, noise=0.1)
    central = central if central is not None else ma
    save_safetensors(tmp_path / "ms.safetensors", ms, {"model_config": CFG, "kind": "ms"})
    save_safetensors(
        tmp_path / "c.safetensors", central, {"model_config": {**CFG, "ms_components": []}, "kind": "ma"}
    )
    if grams is not None:
        save_safetensors(tmp_path / "g.safetensors", grams, {"kind": "gram"})
    return ms, central


def _refused(tmp_path, match, **kw):
    out = tmp_path / "out" / "merged.safetensors"
    with pytest.raises(MergeError, match=match):
        merge_checkpoint(tmp_path / "ms.safetensors", out, **kw)
    assert not out.exists() and not out.parent.exists() or not any(out.parent.iterdir())
    old = tmp_path / "old.safetensors"
    old.write_bytes(b"previous merge")
    with pytest.raises(MergeError, match=match):
        merge_checkpoint(tmp_path / "ms.safetensors", old, **kw)
    assert old.read_bytes() == b"previous merge"


def test_ma_checkpoint_given_as_ms(tmp_path):
    ma = make_ma_sd(depth=2, width=8)
    save_safetensors(
        tmp_path / "ms.safetensors", ma, {"model_config": {**CFG, "ms_components": []}, "kind": "ma"}
    )
    _refused(tmp_path, r"ms.safetensors: no expert tensor .*modality-agnostic", method="interpolation")
    with pytest.raises(MergeError, match="no expert tensor"):
        unify_state_dict(ma, "interpolation", vl_start=1)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_pass_through_tensor_of_the_ms_file(tmp_path, value):
    ms = ms_from_ma(make_ma_sd(depth=2, width=8), vl_start=1, noise=0.1)
    ms["cls_token"][0, 0, 3] = value
    _files(tmp_path, ms=ms)
    bad = "NaN" if value != value else "inf"
    _refused(tmp_path, rf"ms.safetensors: tensor cls_token holds {bad}", method="interpolation")
    with pytest.raises(MergeError, match="MS state dict: tensor cls_token holds"):
        unify_state_dict(ms, "interpolation", vl_start=1)


def test_non_finite_unused_expert_and_central_tensors(tmp_path):
    ms = ms_from_ma(make_ma_sd(depth=2, width=8), vl_start=1, noise=0.1)
    ms["blocks.1.mlp.vl.fc1.bias"][0] = float("nan")  # not read by a coco merge with used experts only
    _files(tmp_path, ms=ms)
    kw = {"method": "interpolation", "task": "coco", "only_used_experts": True}
    _refused(tmp_path, r"ms.safetensors: tensor blocks.1.mlp.vl.fc1.bias holds NaN", **kw)
    central = make_ma_sd(depth=2, width=8)
    central["norm.weight"][1] = float("inf")  # never read by arithmetic (not a block parameter)
    _files(tmp_path, central=central)
    kw = {"method": "arithmetic", "central_path": tmp_path / "c.safetensors"}
    _refused(tmp_path, r"c.safetensors: tensor norm.weight holds inf", **kw)


def test_non_finite_gram_matrix(tmp_path):
    ms = ms_from_ma(make_ma_sd(depth=2, width=8), vl_start=1, noise=0.1)
    grams = {
        k[: -len(".weight")]: torch.eye(v.shape[1], dtype=torch.float64)
        for k, v in ms.items()
        if k.endswith(("qkv.weight", "proj.weight", "fc1.weight", "fc2.weight"))
    }
    grams["blocks.1.attn.vl.qkv"][2, 2] = float("nan")  # the vl expert: unused by the coco group
    _files(tmp_path, ms=ms, grams=grams)
    kw = {"method": "regmean", "gram_path": tmp_path / "g.safetensors", "task": "coco"}
    _refused(tmp_path, r"g.safetensors: tensor blocks.1.attn.vl.qkv holds NaN", **kw)
