"""Task heads: the new parameters each downstream task adds on top of the backbone.

Shapes follow the official vl-merging code (``vilt_module.py``): the VQA classifier is
``Linear(D, 2D) -> LayerNorm -> GELU -> Linear(2D, #answers)``, the NLVR2 classifier the same on the
concatenation of the two pooled features (``2D -> 2D -> 2``), the image classifier a single linear
layer on mean-pooled image tokens. The segmentation decoder is ours (the code has none; BEiT uses
UperNet): a linear per-patch decoder, pixel-shuffled onto the image.
"""

from __future__ import annotations

import torch
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
    """Patch tokens -> per-pixel class logits: the linear decoder of SETR-naive / BEiT's linear probe.

    Each patch token predicts the classes of its own ``p x p`` pixels with one linear layer
    (``[B, N, D]`` -> ``[B, N, p * p * C]``), rearranged onto the image (pixel shuffle). Every pixel's
    class must then be read off the backbone's patch feature: the official code has no segmentation
    recipe (BEiT fine-tunes UperNet), and a decoder with spatial capacity of its own would learn the
    micro-world's shapes without the backbone.
    """

    def __init__(self, dim: int, num_classes: int, grid: int, image_size: int) -> None:
        super().__init__()
        self.grid, self.image_size, self.num_classes = grid, image_size, num_classes
        self.patch = image_size // grid
        self.norm = nn.LayerNorm(dim)
        self.cls = nn.Linear(dim, self.patch * self.patch * num_classes)
        self.apply(init_head_weights)

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, D] (no [CLS]) -> logits [B, C, S, S]."""
        B, N, D = patch_tokens.shape
        g, p, C = self.grid, self.patch, self.num_classes
        x = self.cls(self.norm(patch_tokens))  # (B, N, p*p*C)
        x = x.reshape(B, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4)  # (B, C, g, p, g, p)
        return x.reshape(B, C, g * p, g * p)  # (B, C, S, S)


class ProjectionPair(nn.Module):
    """Bias-free image and text projections for retrieval, used only when the backbone has none."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.itc_image = nn.Linear(dim, dim, bias=False)
        self.itc_text = nn.Linear(dim, dim, bias=False)
        self.apply(init_head_weights)
