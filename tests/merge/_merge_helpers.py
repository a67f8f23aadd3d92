"""Helpers of the merge tests: fake MS/MA state dicts with the contract's parameter names."""

from __future__ import annotations

import torch

COMPONENT_PARAMS = {
    "attn": {
        "qkv.weight": ("3w", "w"),
        "q_bias": ("w",),
        "v_bias": ("w",),
        "proj.weight": ("w", "w"),
        "proj.bias": ("w",),
    },
    "mlp": {"fc1.weight": ("h", "w"), "fc1.bias": ("h",), "fc2.weight": ("w", "h"), "fc2.bias": ("w",)},
    "norm1": {"weight": ("w",), "bias": ("w",)},
    "norm2": {"weight": ("w",), "bias": ("w",)},
}
ALL = ("attn", "mlp", "norm1", "norm2")


def _shape(spec, width, hidden):
    return tuple({"w": width, "3w": 3 * width, "h": hidden}[s] for s in spec)


def make_ma_sd(depth=2, width=8, seed=0, mlp_ratio=2):
    """An MA state dict with the contract names (random values)."""
    g = torch.Generator().manual_seed(seed)
    hidden = int(width * mlp_ratio)
    sd = {}
    for i in range(depth):
        for comp, params in COMPONENT_PARAMS.items():
            for p, spec in params.items():
                sd[f"blocks.{i}.{comp}.{p}"] = torch.randn(_shape(spec, width, hidden), generator=g)
        sd[f"blocks.{i}.gamma_1"] = torch.randn(width, generator=g)
        sd[f"blocks.{i}.gamma_2"] = torch.randn(width, generator=g)
    sd["patch_embed.proj.weight"] = torch.randn(width, 3, 4, 4, generator=g)
    sd["patch_embed.proj.bias"] = torch.randn(width, generator=g)
    sd["cls_token"] = torch.randn(1, 1, width, generator=g)
    sd["text_embed.word_embeddings.weight"] = torch.randn(16, width, generator=g)
    sd["norm.weight"] = torch.randn(width, generator=g)
    sd["heads.pooler.weight"] = torch.randn(width, width, generator=g)
    sd["logit_scale"] = torch.randn((), generator=g)
    return sd


def ms_from_ma(ma_sd, vl_start=1, components=ALL, noise=0.0, seed=1):
    """An MS state dict whose experts are copies of the MA weights (plus optional noise per expert)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in ma_sd.items():
        parts = k.split(".")
        if parts[0] == "blocks" and parts[2] in components:
            i = int(parts[1])
            experts = ("v", "l") if i < vl_start else ("v", "l", "vl")
            for e in experts:
                name = ".".join(parts[:3] + [e] + parts[3:])
                out[name] = v + noise * torch.randn(v.shape, generator=g)
        else:
            out[k] = v.clone()
    return out


def make_ms_sd(depth=2, width=8, vl_start=1, components=ALL, seed=0):
    """An MS state dict with independent random experts, and its central MA state dict."""
    central = make_ma_sd(depth, width, seed=seed)
    return ms_from_ma(central, vl_start, components, noise=1.0, seed=seed + 1), central


def ms_model_config(depth=2, width=8, vl_start=1):
    """The ``model_config`` metadata of an MS checkpoint file of these helpers' state dicts."""
    return {"width": width, "depth": depth, "heads": 2, "vl_start": vl_start, "ms_components": list(ALL)}
