"""Drivers of the merge stage: every method (and knob) on one MS checkpoint, and a stand-alone demo pair.

``merge_all`` is what ``notebooks/03_merge.ipynb`` runs: one MA checkpoint per (method, knob) under
``out_dir``, named ``<method>_<knob>.safetensors``. ``make_demo_checkpoints`` builds a pico central
(MA) model and an MS model whose experts are the central weights plus independent noise, so that the
notebook runs without any training (smoke default).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from vlmerge_core.merge.stream import merge_checkpoint

log = logging.getLogger(__name__)
CENTRAL_METHODS = ("arithmetic", "ties", "dare")


def method_grid(cfg: Any, methods: Sequence[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``(method, params)`` for every method and knob value of a :class:`~vlmerge_core.config.MergeConfig`."""
    grid = {
        "interpolation": [{"ratio": r} for r in cfg.ratios],
        "arithmetic": [{"lam": lam} for lam in cfg.lambdas],
        "regmean": [{"alpha": a} for a in cfg.regmean_alphas],
        "ties": [{"density": d, "lam": cfg.ties_lambda} for d in cfg.ties_densities],
        "dare": [{"drop_rate": p, "lam": cfg.dare_lambda, "seed": cfg.seed} for p in cfg.dare_drop_rates],
    }
    out = []
    for m in methods or cfg.methods:
        if m not in grid:
            raise ValueError(f"merge.methods: unknown method {m!r}; known: {sorted(grid)}")
        out.extend((m, p) for p in grid[m])
    return out


def run_name(method: str, params: dict[str, Any]) -> str:
    """File stem of one merge, e.g. ``interpolation_ratio0.5``."""
    knob = {
        k: v
        for k, v in params.items()
        if k not in ("seed",) and not (method in ("ties", "dare") and k == "lam")
    }
    return method + "".join(f"_{k}{v:g}" if isinstance(v, float) else f"_{k}{v}" for k, v in knob.items())


def merge_all(
    ms_path: str | Path,
    out_dir: str | Path,
    grid: Iterable[tuple[str, dict[str, Any]]],
    *,
    central_path: str | Path | None = None,
    gram_path: str | Path | None = None,
    task: str | None = None,
    only_used_experts: bool = True,
    unimodal_paths: bool = False,
) -> list[dict]:
    """Merge ``ms_path`` by every ``(method, params)``; returns one record per output checkpoint."""
    out_dir = Path(out_dir)
    records = []
    for method, params in grid:
        if method in CENTRAL_METHODS and central_path is None:
            raise ValueError(f"merge method {method!r} needs a central (seed) checkpoint")
        path = out_dir / f"{run_name(method, params)}.safetensors"
        merge_checkpoint(
            ms_path,
            path,
            method,
            central_path=central_path if method in CENTRAL_METHODS else None,
            gram_path=gram_path if method == "regmean" else None,
            task=task,
            only_used_experts=only_used_experts,
            unimodal_paths=unimodal_paths,
            **params,
        )
        records.append({"method": method, **params, "task": task, "path": str(path)})
        log.info("merged %s -> %s", method, path)
    return records


def random_batches(cfg: Any, n: int, batch_size: int = 8, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Synthetic image-text batches (random pixels and tokens, some padding) for smoke Gram matrices."""
    g = torch.Generator().manual_seed(seed)
    T = min(8, cfg.max_text_len)
    out = []
    for _ in range(n):
        mask = torch.arange(T)[None] < torch.randint(2, T + 1, (batch_size, 1), generator=g)
        ids = torch.randint(5, cfg.vocab_size, (batch_size, T), generator=g) * mask
        out.append(
            {
                "images": torch.randn(batch_size, 3, cfg.image_size, cfg.image_size, generator=g),
                "ids": ids,
                "mask": mask,
            }
        )
    return out


def make_demo_checkpoints(out_dir: str | Path, noise: float = 0.02, seed: int = 0) -> dict[str, Path]:
    """A pico central (MA) checkpoint, an MS checkpoint = central + per-expert noise, and its Gram file."""
    from vlmerge_core.config import profile_params
    from vlmerge_core.merge.gram import collect_grams, save_grams
    from vlmerge_core.model import MultiwayTransformer, init_ms_from_ma, save_model

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    cfg = dataclasses.replace(profile_params("smoke").model, layer_scale_init=0.1)
    central = MultiwayTransformer(cfg)
    ms = init_ms_from_ma(
        MultiwayTransformer(dataclasses.replace(cfg, ms_components=["attn", "mlp", "norm1", "norm2"])),
        central.state_dict(),
    )
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in ms.named_parameters():
            if any(f".{e}." in name for e in ("v", "l", "vl")):
                p.add_(noise * torch.randn(p.shape, generator=g))
    paths = {
        "central": out_dir / "demo_central.safetensors",
        "ms": out_dir / "demo_ms.safetensors",
        "grams": out_dir / "demo_grams.safetensors",
    }
    save_model(paths["central"], central)
    save_model(paths["ms"], ms)
    save_grams(paths["grams"], collect_grams(ms, random_batches(cfg, 2, seed=seed), 2))
    return paths
