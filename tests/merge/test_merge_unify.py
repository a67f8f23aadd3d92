"""MS -> MA unification on fake state dicts with the contract names (vlmerge_core.merge.unify, stream)."""

from __future__ import annotations

import json

import pytest
import torch
from _merge_helpers import make_ma_sd, ms_from_ma, ms_model_config

from vlmerge_core.io import load_safetensors, save_safetensors
from vlmerge_core.merge.methods import METHODS, MergeError, get_method
from vlmerge_core.merge.stream import merge_checkpoint
from vlmerge_core.merge.unify import gram_key, plan_groups, unify_state_dict, used_experts

PARAMS = {
    "interpolation": {"ratio": 0.5},
    "arithmetic": {"lam": 1.0},
    "arithmetic_formula": {"lam": 1.0},
    "regmean": {"alpha": 0.9},
    "ties": {"density": 1.0},
    "dare": {"drop_rate": 0.0},
}


def test_params_cover_every_method():
    assert set(PARAMS) == set(METHODS)


def _grams(ms_sd, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in ms_sd.items():
        for lin in ("qkv", "proj", "fc1", "fc2"):
            if k.endswith(f".{lin}.weight"):
                d = v.shape[1]
                x = torch.randn(2 * d, d, generator=g, dtype=torch.float64)
                out[k[: -len(".weight")]] = x.T @ x
    return out


@pytest.mark.parametrize("method", sorted(PARAMS))
@pytest.mark.parametrize(
    "components", [("attn", "mlp", "norm1", "norm2"), ("mlp", "norm2"), ("norm1", "norm2")]
)
def test_identical_experts_round_trip(method, components):
    ma = make_ma_sd(depth=3, width=8)
    ms = ms_from_ma(ma, vl_start=1, components=components)
    params = dict(PARAMS[method])
    sums = method in ("arithmetic_formula", "dare")  # W0 + lam sum_m tau^m: identity needs lam = 1/#experts
    if sums:
        params["lam"] = 0.5  # 1/#experts below vl_start; the lone vl expert of vqa passes through
    central = make_ma_sd(depth=3, width=8, seed=5)
    kw = {"central": central} if get_method(method).needs_central else {}
    if get_method(method).needs_grams:
        kw["grams"] = _grams(ms)
    for task in ("vqa", "coco"):
        out = unify_state_dict(ms, method, vl_start=1, task=task, only_used_experts=True, **kw, **params)
        assert set(out) == set(ma)
        for k in ma:
            if task == "coco" and sums and k.startswith(("blocks.1", "blocks.2")):
                continue
            torch.testing.assert_close(out[k], ma[k], rtol=1e-5, atol=1e-5, msg=k)


def test_interpolation_uses_official_weights_and_passes_through(ms_and_central):
    ms, _ = ms_and_central
    out = unify_state_dict(ms, "interpolation", vl_start=1, ratio=0.25, only_used_experts=False)
    k0, k1 = "blocks.0.mlp.fc1.weight", "blocks.1.mlp.fc1.weight"
    torch.testing.assert_close(
        out[k0], 0.25 * ms["blocks.0.mlp.v.fc1.weight"] + 0.75 * ms["blocks.0.mlp.l.fc1.weight"]
    )
    expect = (
        2 / 3 * 0.25 * ms["blocks.1.mlp.v.fc1.weight"]
        + 2 / 3 * 0.75 * ms["blocks.1.mlp.l.fc1.weight"]
        + 1 / 3 * ms["blocks.1.mlp.vl.fc1.weight"]
    )
    torch.testing.assert_close(out[k1], expect)
    for k in ("blocks.1.gamma_1", "cls_token", "heads.pooler.weight", "logit_scale"):
        assert torch.equal(out[k], ms[k])


def test_task_rules(ms_and_central):
    ms, _ = ms_and_central
    vqa = unify_state_dict(ms, "interpolation", vl_start=1, task="vqa", only_used_experts=True)
    assert torch.equal(vqa["blocks.1.attn.qkv.weight"], ms["blocks.1.attn.vl.qkv.weight"])
    coco = unify_state_dict(ms, "interpolation", vl_start=1, task="coco", ratio=1.0, only_used_experts=True)
    assert torch.equal(coco["blocks.1.attn.qkv.weight"], ms["blocks.1.attn.v.qkv.weight"])
    used = {"vl_start": 1, "only_used_experts": True}
    assert used_experts(1, ["v", "l", "vl"], task="nlvr2", **used) == ["vl"]
    assert used_experts(1, ["v", "l", "vl"], task="nlvr2", method="regmean", **used) == ["v", "l", "vl"]
    assert used_experts(1, ["v", "l", "vl"], task="imagenet", **used) == ["v", "l", "vl"]
    assert used_experts(1, ["v", "l", "vl"], task="imagenet", unimodal_paths=True, **used) == ["v"]
    assert used_experts(0, ["v", "l"], task="text", unimodal_paths=True, **used) == ["l"]
    assert used_experts(0, ["v", "l"], task="vqa", **used) == ["v", "l"]
    assert used_experts(1, ["v", "l", "vl"], vl_start=1, experts=["l", "vl"]) == ["l", "vl"]


def test_only_used_experts_defaults_to_false_as_the_official_config(ms_and_central):
    """Issue 9.2: official config.py ``only_activate_used_experts = False``: all experts for every task."""
    ms, _ = ms_and_central
    for task in ("vqa", "nlvr2", "coco"):
        assert used_experts(1, ["v", "l", "vl"], vl_start=1, task=task) == ["v", "l", "vl"]
    out = unify_state_dict(ms, "interpolation", vl_start=1, task="vqa")
    w = [ms[f"blocks.1.attn.{e}.qkv.weight"] for e in ("v", "l", "vl")]
    torch.testing.assert_close(out["blocks.1.attn.qkv.weight"], w[0] / 3 + w[1] / 3 + w[2] / 3)
    # RegMean follows the task whatever the flag (official regmean): retrieval -> v, l; vqa -> vl
    assert used_experts(1, ["v", "l", "vl"], vl_start=1, task="coco", method="regmean") == ["v", "l"]
    assert used_experts(1, ["v", "l", "vl"], vl_start=1, task="vqa", method="regmean") == ["vl"]


def test_arithmetic_formula(ms_and_central):
    ms, central = ms_and_central
    out = unify_state_dict(ms, "arithmetic_formula", vl_start=1, central=central, lam=0.75)
    k = "blocks.1.norm2.bias"
    c = central[k]
    expect = c + 0.75 * sum(ms[f"blocks.1.norm2.{e}.bias"] - c for e in ("v", "l", "vl"))
    torch.testing.assert_close(out[k], expect)


def test_regmean_uses_grams_per_expert(ms_and_central):
    ms, _ = ms_and_central
    grams = _grams(ms)
    out = unify_state_dict(ms, "regmean", vl_start=1, grams=grams, alpha=1.0)
    k = "blocks.0.attn.qkv.weight"
    gv, gl = grams["blocks.0.attn.v.qkv"], grams["blocks.0.attn.l.qkv"]
    wv, wl = (ms[f"blocks.0.attn.{e}.qkv.weight"].double() for e in ("v", "l"))
    ref = ((wv @ gv + wl @ gl) @ torch.inverse(gv + gl)).float()
    torch.testing.assert_close(out[k], ref, rtol=1e-4, atol=1e-4)
    qb = "blocks.0.attn.q_bias"
    torch.testing.assert_close(out[qb], (ms["blocks.0.attn.v.q_bias"] + ms["blocks.0.attn.l.q_bias"]) / 2)
    assert gram_key("blocks.3.mlp.fc2.weight", "vl") == "blocks.3.mlp.vl.fc2"
    assert gram_key("blocks.3.mlp.fc2.bias", "vl") is None


def test_errors_name_the_tensor(ms_and_central):
    ms, central = ms_and_central
    bad = dict(ms)
    del bad["blocks.1.mlp.l.fc1.weight"]
    with pytest.raises(MergeError, match=r"blocks.1.mlp.l.fc1.weight.*missing"):
        unify_state_dict(bad, "interpolation", vl_start=1)
    bad = dict(ms)
    bad["blocks.0.mlp.l.fc1.weight"] = torch.zeros(3, 3)
    with pytest.raises(MergeError, match="blocks.0.mlp.fc1.weight: tensor size mismatch"):
        unify_state_dict(bad, "interpolation", vl_start=1)
    c = dict(central)
    del c["blocks.0.attn.proj.weight"]
    with pytest.raises(MergeError, match="central checkpoint has no tensor blocks.0.attn.proj.weight"):
        unify_state_dict(ms, "arithmetic", vl_start=1, central=c)
    c = dict(central)
    c["blocks.0.attn.proj.weight"] = torch.zeros(4, 4)
    with pytest.raises(MergeError, match="blocks.0.attn.proj.weight: central tensor has shape"):
        unify_state_dict(ms, "arithmetic", vl_start=1, central=c)
    with pytest.raises(MergeError, match="needs the central"):
        unify_state_dict(ms, "ties", vl_start=1)
    with pytest.raises(MergeError, match=r"Gram matrix blocks.0.(attn|mlp).v.\w+ not found"):
        unify_state_dict(ms, "regmean", vl_start=1, grams={})
    with pytest.raises(MergeError, match=r"does not take \['density'\]"):
        unify_state_dict(ms, "interpolation", vl_start=1, density=0.5)
    with pytest.raises(MergeError, match=r"interpolation: ratio must be in \[0, 1\], got -0.1"):
        unify_state_dict(ms, "interpolation", vl_start=1, ratio=-0.1)
    with pytest.raises(MergeError, match="unexpected expert"):
        plan_groups(list(ms), vl_start=2)


def test_merge_checkpoint_streaming(tmp_path, ms_and_central):
    ms, central = ms_and_central
    cfg = ms_model_config()
    ms_path, c_path = tmp_path / "ms.safetensors", tmp_path / "c.safetensors"
    save_safetensors(ms_path, ms, {"model_config": cfg, "kind": "ms", "format": "vlmerge-v1"})
    save_safetensors(c_path, central, {"model_config": {**cfg, "ms_components": []}, "kind": "ma"})
    out = merge_checkpoint(
        ms_path, tmp_path / "o" / "ma.safetensors", "ties", central_path=c_path, density=0.5
    )
    tensors, meta = load_safetensors(out)
    ref = unify_state_dict(ms, "ties", vl_start=1, central=central, density=0.5)
    assert set(tensors) == set(ref) and all(torch.equal(tensors[k], ref[k]) for k in ref)
    assert meta["kind"] == "ma" and json.loads(meta["model_config"])["ms_components"] == []
    assert json.loads(meta["merge"])["params"] == {"density": 0.5}
    with pytest.raises(MergeError, match="must be modality-agnostic"):
        merge_checkpoint(ms_path, tmp_path / "x.safetensors", "arithmetic", central_path=ms_path)


@pytest.mark.parametrize("mapped", [False, True])
def test_open_tensors_reads_every_dtype(tmp_path, mapped):
    from vlmerge_core.merge.stream import open_tensors

    src = {
        "a": torch.randn(3, 4),
        "b": torch.randn(5).to(torch.bfloat16),
        "c": torch.arange(6).reshape(2, 3),
        "d": torch.tensor([True, False]),
        "e": torch.zeros(0, 4),
        "f": torch.randn(2, 2, dtype=torch.float64),
    }
    save_safetensors(tmp_path / "t.safetensors", src, {"x": "y"})
    with open_tensors(tmp_path / "t.safetensors", "test", mapped=mapped) as (get, keys):
        assert sorted(keys) == sorted(src)
        for k, v in src.items():
            got = get(k)
            assert got.dtype == v.dtype and got.shape == v.shape and torch.equal(got, v), k
        with pytest.raises(KeyError, match="no tensor zz"):
            get("zz")
    with pytest.raises(FileNotFoundError):
        with open_tensors(tmp_path / "missing.safetensors", "MS", mapped=mapped):
            pass


def test_mapped_tensors_outlive_the_file_and_never_write_it(tmp_path):
    """A mapped tensor (the Gram matrices of a merge) stays readable after the file is closed, and a
    write into it changes the tensor only: the mapping is private, the file keeps its bytes."""
    from vlmerge_core.merge.stream import open_tensors

    path = tmp_path / "g.safetensors"
    src = {"a": torch.randn(5, 7, dtype=torch.float64), "b": torch.randn(3000)}
    save_safetensors(path, src)
    before = path.read_bytes()
    with open_tensors(path, "Gram", mapped=True) as (get, _):
        a, b = get("a"), get("b")
    assert torch.equal(a, src["a"]) and torch.equal(b, src["b"])
    a.add_(1.0)
    assert torch.equal(a, src["a"] + 1.0)
    assert path.read_bytes() == before
