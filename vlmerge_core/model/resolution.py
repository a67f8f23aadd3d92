"""Fine-tuning at another image resolution: the relative position bias resized as the official code.

The official fine-tuning runs retrieval and NLVR2 at 384 px and VQA at 480 px from a checkpoint
pre-trained at 224 px (``vilt_module.py``, ``modify_checkpoint``; PAPER.md §6). At patch 16 the
image window grows from ``g = 14`` to ``g' = 24`` or ``30`` patches a side, so the 2-D image buckets
of the table (``(2g - 1)^2`` rows) are resized: every column (block x head) seen as a
``(2g - 1) x (2g - 1)`` grid, ``F.interpolate(..., mode="bicubic")`` (``align_corners=False``, the
default the official call uses) to ``(2g' - 1) x (2g' - 1)``. The rows after the grid (the three
[CLS] image buckets, text -> image, image -> text and the text buckets) are kept as they are. The
index buffers follow from the new grid (:func:`~vlmerge_core.model.embeddings.bias_index`).

Absolute image positions (ours, ``abs_pos_embed``; the official model has none) are resized as the
official ``interpolate_pos_embed``: the patch positions bicubically, the [CLS] position kept.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IMAGE_EXTRA_BUCKETS", "at_resolution", "interpolate_image_bias", "interpolate_pos_embed"]

log = logging.getLogger(__name__)

IMAGE_EXTRA_BUCKETS = 3  # [CLS] -> patch, patch -> [CLS], [CLS] -> [CLS], right after the 2-D grid


def _interp_dtype(x: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors are interpolated in float32; float32/float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def interpolate_image_bias(table: torch.Tensor, old_grid: int, new_grid: int) -> torch.Tensor:
    """The table ``[R, C]`` with its 2-D image buckets resized from ``old_grid`` to ``new_grid`` patches.

    Args:
        table: a relative position bias table whose first ``(2 old_grid - 1)^2`` rows are the 2-D
            image buckets (our layout and the official one; a BEiT table has the same first rows).
        old_grid: patches a side of the table.
        new_grid: patches a side wanted.

    Returns:
        A new ``[R - (2 old_grid - 1)^2 + (2 new_grid - 1)^2, C]`` table (the input when the grids agree).

    Raises:
        ValueError: a grid below 1, or a table with fewer rows than its image buckets.
    """
    if old_grid < 1 or new_grid < 1:
        raise ValueError(f"interpolate_image_bias: grids must be >= 1, got {old_grid} -> {new_grid}")
    src, dst = 2 * old_grid - 1, 2 * new_grid - 1
    if table.ndim != 2 or table.shape[0] < src * src + IMAGE_EXTRA_BUCKETS:
        raise ValueError(
            f"interpolate_image_bias: table {tuple(table.shape)} has fewer rows than the "
            f"{src}x{src} image buckets of a {old_grid}-patch grid plus {IMAGE_EXTRA_BUCKETS}"
        )
    if src == dst:
        return table
    C = table.shape[1]
    grid = table[: src * src].T.reshape(1, C, src, src)  # (1, C, 2g-1, 2g-1)
    grid = F.interpolate(_interp_dtype(grid), size=(dst, dst), mode="bicubic").to(table.dtype)
    grid = grid[0].permute(1, 2, 0).reshape(dst * dst, C)  # ((2g'-1)^2, C)
    return torch.cat([grid, table[src * src :]], dim=0)


def interpolate_pos_embed(pos: torch.Tensor, new_grid: int) -> torch.Tensor:
    """Absolute positions ``[1, 1 + g^2, D]`` -> ``[1, 1 + new_grid^2, D]`` ([CLS] kept, patches bicubic)."""
    n = pos.shape[1] - 1
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"interpolate_pos_embed: {n} patch positions are not a square grid")
    if g == new_grid:
        return pos
    D = pos.shape[2]
    grid = pos[:, 1:].reshape(1, g, g, D).permute(0, 3, 1, 2)  # (1, D, g, g)
    grid = F.interpolate(_interp_dtype(grid), size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    grid = grid.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, D)
    return torch.cat([pos[:, :1], grid], dim=1)


def _resized_state(model: nn.Module, old_grid: int, new_grid: int) -> dict[str, torch.Tensor]:
    """``model``'s state dict with the position tensors resized to ``new_grid``."""
    state = dict(model.state_dict())
    key = "rel_pos_bias.relative_position_bias_table"
    if key in state:
        state[key] = interpolate_image_bias(state[key], old_grid, new_grid)
    if state.get("pos_embed") is not None:
        state["pos_embed"] = interpolate_pos_embed(state["pos_embed"], new_grid)
    return state


def at_resolution(model: nn.Module, image_size: int) -> nn.Module:
    """``model`` at ``image_size`` px: a new model whose ``cfg.image_size`` is ``image_size``, its image
    relative position bias (and absolute positions, if any) interpolated, its index buffers rebuilt.

    Args:
        model: a :class:`~vlmerge_core.model.multiway.MultiwayTransformer` (not changed).
        image_size: the task's resolution; 0 or the model's own size returns ``model`` itself.

    Raises:
        ValueError: ``image_size`` is not a positive multiple of the patch size.
    """
    cfg = model.cfg
    if image_size in (0, cfg.image_size):
        return model
    if image_size < 0 or image_size % cfg.patch_size:
        raise ValueError(
            f"image_size {image_size}: must be a positive multiple of the model's patch_size {cfg.patch_size}"
        )
    old_grid, new_grid = cfg.image_size // cfg.patch_size, image_size // cfg.patch_size
    log.info("position bias interpolated from %dx%d to %dx%d patches", old_grid, old_grid, new_grid, new_grid)
    param = next(model.parameters())
    with torch.random.fork_rng(devices=[]):  # the throw-away init draws leave the caller's RNG alone
        new = type(model)(dataclasses.replace(cfg, image_size=image_size))  # the model's own class
    new = new.to(param.device, param.dtype)
    new.load_state_dict(_resized_state(model, old_grid, new_grid), strict=True)
    new.tokenizer_info = getattr(model, "tokenizer_info", None)
    new.train(model.training)
    return new
