"""Gram matrices of the inputs of every expert linear layer, for RegMean (Jin et al. 2023).

``G = sum_t x_t x_t^T`` in float64, not divided by the count, for the input ``x`` of each linear layer
of each expert: ``qkv`` (the input of the attention module: our ``qkv`` runs through ``F.linear``, as
BEiT), ``proj``, ``fc1`` and ``fc2``. Keys are module names, ``blocks.{i}.attn.{e}.qkv``,
``blocks.{i}.attn.{e}.proj``, ``blocks.{i}.mlp.{e}.fc1``, ``blocks.{i}.mlp.{e}.fc2``.

By default the sum runs over every token of the ``(B*L, D)`` input, padded text positions included,
as the official ``cache_gram_matrices.py`` (its hook flattens the whole input, no mask).
``exclude_padding=True`` (ours) sums over the real tokens only.

Routing follows the MS model: for each image-text batch an image-only pass feeds ``v`` (all
blocks), a text-only pass feeds ``l`` (all blocks) and a fused pass feeds ``vl`` (fusion blocks);
each pass records only its own expert, so the bottom blocks are not counted twice.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vlmerge_core.data.loaders import PairDataset
from vlmerge_core.io import load_safetensors, save_safetensors
from vlmerge_core.model.checkpoint import FORMAT

_PASS_EXPERT = {"image": "v", "text": "l", "fused": "vl"}


class _State:
    expert: str | None = None  # expert recorded in the current pass
    mask: Tensor | None = None  # Bool [B, N] of the tokens summed; None = every token


def _linear_modules(model: nn.Module) -> Iterator[tuple[str, str, nn.Module, str]]:
    """``(gram_key, expert, module_to_hook, how)`` for every expert linear of an MS model."""
    for i, blk in enumerate(model.blocks):
        for comp, lins in (("attn", ("qkv", "proj")), ("mlp", ("fc1", "fc2"))):
            container = getattr(blk, comp)
            if not isinstance(container, nn.ModuleDict):
                continue  # shared component: nothing to merge
            for e, mod in container.items():
                for lin in lins:
                    key = f"blocks.{i}.{comp}.{e}.{lin}"
                    # qkv is applied with F.linear inside Attention: hook the attention input instead
                    yield key, e, (mod if lin == "qkv" else getattr(mod, lin)), lin


def _rows(x: Tensor, mask: Tensor | None) -> Tensor:
    """Flatten [B, N, D] to the [n, D] rows of real tokens."""
    if mask is not None and x.dim() == 3 and tuple(mask.shape) == tuple(x.shape[:2]):
        return x[mask]
    if mask is not None and x.dim() == 3:
        raise RuntimeError(f"Gram hook: token mask {tuple(mask.shape)} does not fit input {tuple(x.shape)}")
    return x.reshape(-1, x.shape[-1])


@contextlib.contextmanager
def gram_hooks(model: nn.Module, grams: dict[str, Tensor], state: _State) -> Iterator[None]:
    """Register forward pre-hooks that add ``x^T x`` of the selected expert's linear inputs to ``grams``."""
    handles = []
    for key, expert, module, _ in _linear_modules(model):

        def hook(mod: nn.Module, args: tuple, key: str = key, expert: str = expert) -> None:
            if state.expert != expert:
                return
            x = _rows(args[0].detach(), state.mask).to(torch.float64)  # (n, D)
            g = x.T @ x  # (D, D)
            grams[key] = grams[key] + g if key in grams else g

        handles.append(module.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def world_batches(
    world: Any, model_cfg: Any, batch_size: int = 32, split: str = "train", style: str = "coco"
) -> Iterator[dict[str, Tensor]]:
    """Image-caption batches ``{"images", "ids", "mask"}`` of a micro-world split, in order."""

    ds = PairDataset(world, split, world.tokenizer(), model_cfg.max_text_len, style)
    for start in range(0, len(ds), batch_size):
        items = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
        yield {
            "images": torch.stack([it["image"] for it in items]),
            "ids": torch.stack([it["ids"] for it in items]),
            "mask": torch.stack([it["mask"] for it in items]),
        }


@torch.no_grad()
def collect_grams(
    model: nn.Module,
    world_or_batches: Any,
    n_batches: int = 8,
    *,
    batch_size: int = 32,
    passes: Iterable[str] = ("image", "text", "fused"),
    exclude_padding: bool = False,
    device: str | torch.device = "cpu",
) -> dict[str, Tensor]:
    """Gram matrices of every expert linear input of an MS ``model`` over ``n_batches`` batches.

    Args:
        model: an MS :class:`~vlmerge_core.model.MultiwayTransformer`.
        world_or_batches: a micro-world (its train pairs are used) or an iterable of batches
            ``{"images": [B,3,H,W], "ids": [B,T], "mask": Bool [B,T]}``.
        n_batches: batches used.
        batch_size: batch size when a world is given.
        passes: which of the image-only (``v``), text-only (``l``) and fused (``vl``) passes to run.
        exclude_padding: sum over real tokens only (ours); default every token, as the official code.
        device: where the passes run and the sums accumulate (float64); the Grams come back on the CPU.

    Returns:
        ``{module name: float64 [in, in]}``; an expert that never ran (e.g. ``vl`` without fused
        passes) has no entry.
    """
    if hasattr(world_or_batches, "images") and hasattr(world_or_batches, "captions"):
        batches: Iterable = world_batches(world_or_batches, model.cfg, batch_size)
    else:
        batches = world_or_batches
    was_training, home = model.training, next(model.parameters()).device
    model.eval().to(device)
    grams: dict[str, Tensor] = {}
    state = _State()
    try:
        with gram_hooks(model, grams, state):
            for batch in itertools.islice(batches, n_batches):
                images, ids = batch["images"].to(device), batch["ids"].to(device)
                mask = batch["mask"].bool().to(device)
                for p in passes:
                    state.expert = _PASS_EXPERT[p]
                    if p == "image":
                        state.mask = None
                        model.forward_image(images)
                    elif p == "text":
                        state.mask = mask if exclude_padding else None
                        model.forward_text(ids, mask)
                    else:
                        if model.vl_start >= len(model.blocks):
                            continue
                        n_img = 1 + model.num_patches
                        ones = torch.ones(mask.shape[0], n_img, dtype=torch.bool, device=device)
                        keep = torch.cat([ones, mask], 1)
                        state.mask = keep if exclude_padding else None
                        model.forward_fused(images, ids, mask)
    finally:
        state.expert = None
        model.train(was_training).to(home)
    return {k: v.cpu() for k, v in sorted(grams.items())}


def save_grams(path: str | Path, grams: Mapping[str, Tensor], meta: Mapping[str, Any] | None = None) -> Path:
    """Save Gram matrices as safetensors keyed by module name (float64)."""
    return save_safetensors(
        path,
        {k: v.to(torch.float64) for k, v in grams.items()},
        {"kind": "gram", "format": FORMAT, **(meta or {})},
    )


def load_grams(path: str | Path) -> dict[str, Tensor]:
    """Gram matrices written by :func:`save_grams` or ``vlmerge convert``."""
    tensors, _ = load_safetensors(path)
    return tensors
