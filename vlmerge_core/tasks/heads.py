"""Task heads: the new parameters each downstream task adds on top of the backbone.

Shapes follow the official vl-merging code (``vilt_module.py``): the VQA classifier is
``Linear(D, 2D) -> LayerNorm -> GELU -> Linear(2D, #answers)``, the NLVR2 classifier the same on the
concatenation of the two pooled features (``2D -> 2D -> 2``), the image classifier a single linear
layer on mean-pooled image tokens. The segmentation decoder is ours (the code has none; BEiT uses
UperNet): a light transposed-convolution decoder on the patch grid, upsampled bilinearly to pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlmerge_core.tasks.base import init_head_weights


class MLPClassifier(nn.Module):
    """``Linear(d_in, d_hidden) -> LayerNorm -> GELU -> Linear(d_hidden, n_out)`` (VQA, NLVR2 heads)."""

    def __init__(self, d_in: int, d_hidden: int, n_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, d_hidden), nn.LayerNorm(d_hidden), nn.GELU(), nn.Linear(d_hidden, n_out)
        )
        self.apply(init_head_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, d_in] -> logits [B, n_out]."""
        return self.net(x)


class LinearClassifier(nn.Module):
    """One linear layer (image classification on mean-pooled tokens; text classification on [CLS])."""

    def __init__(self, dim: int, n_out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, n_out)
        self.apply(init_head_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, D] -> logits [B, n_out]."""
        return self.fc(x)


class SegDecoder(nn.Module):
    """Patch tokens on their grid -> per-pixel class logits.

    ``[B, N, D]`` -> ``(B, D, g, g)`` -> two stages of (ConvTranspose 2x, GroupNorm, GELU), halving the
    channels each time -> 1x1 conv to C classes at ``4g x 4g`` -> bilinear upsampling to ``image_size``.
    """

    def __init__(self, dim: int, num_classes: int, grid: int, image_size: int) -> None:
        super().__init__()
        self.grid, self.image_size = grid, image_size
        h1, h2 = max(dim // 2, 8), max(dim // 4, 8)
        self.up = nn.Sequential(
            nn.ConvTranspose2d(dim, h1, kernel_size=2, stride=2),
            nn.GroupNorm(1, h1),
            nn.GELU(),
            nn.ConvTranspose2d(h1, h2, kernel_size=2, stride=2),
            nn.GroupNorm(1, h2),
            nn.GELU(),
        )
        self.cls = nn.Conv2d(h2, num_classes, kernel_size=1)
        self.apply(init_head_weights)

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, D] (no [CLS]) -> logits [B, C, S, S]."""
        B, N, D = patch_tokens.shape
        x = patch_tokens.transpose(1, 2).reshape(B, D, self.grid, self.grid)  # (B, D, g, g)
        x = self.cls(self.up(x))  # (B, C, 4g, 4g)
        return F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)


class ProjectionPair(nn.Module):
    """Bias-free image and text projections for retrieval, used only when the backbone has none."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.itc_image = nn.Linear(dim, dim, bias=False)
        self.itc_text = nn.Linear(dim, dim, bias=False)
        self.apply(init_head_weights)
