"""Pre-training heads; they sit outside ``blocks`` and are never merged.

- ``pooler``: dense + tanh over the first text token of the fused sequence (BERT/ViLT/VLMo pooler).
- ``itm``: 2-way image-text matching classifier on the pooled feature (VLMo, Bao et al. 2022).
- ``mlm``: BERT prediction head (dense, GELU, LayerNorm, decoder + bias; Devlin et al. 2019).
- ``mim``: linear classifier over the MIM codebook (BEiT, Bao et al. 2022).
- ``tags``: linear multi-label tagger on the image [CLS] (the init's supervised stand-in for BEiT's
  ImageNet-22k fine-tuning; ``num_tags`` outputs).
- ``itc_*``: bias-free projections of the [CLS] features for image-text contrastive learning, one
  pair for the unimodal ``v``/``l`` path and one for the ``vl`` path (VLMo; official ``IFMHead``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLMHead", "Pooler", "PretrainHeads"]


class Pooler(nn.Module):
    """Dense + tanh over one token."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, token: torch.Tensor) -> torch.Tensor:
        """[B, D] -> [B, D]."""
        return torch.tanh(self.dense(token))


class MLMHead(nn.Module):
    """BERT's masked-token prediction head."""

    def __init__(self, dim: int, vocab_size: int) -> None:
        super().__init__()
        self.transform = nn.Sequential()
        self.transform.add_module("dense", nn.Linear(dim, dim))
        self.transform.add_module("act", nn.GELU())
        self.transform.add_module("norm", nn.LayerNorm(dim, eps=1e-12))
        self.decoder = nn.Linear(dim, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., D] -> logits [..., V]."""
        return self.decoder(self.transform(x)) + self.bias


class PretrainHeads(nn.Module):
    """All pre-training heads (always built, so that every checkpoint has the same names).

    Args:
        dim: width D.
        vocab_size: text vocabulary size (MLM classes).
        mim_vocab: MIM codebook size (MIM classes).
    """

    def __init__(self, dim: int, vocab_size: int, mim_vocab: int, num_tags: int = 30) -> None:
        super().__init__()
        self.pooler = Pooler(dim)
        self.itm = nn.Linear(dim, 2)
        self.mlm = MLMHead(dim, vocab_size)
        self.mim = nn.Linear(dim, mim_vocab)
        self.tags = nn.Linear(dim, num_tags)
        self.itc_image = nn.Linear(dim, dim, bias=False)
        self.itc_text = nn.Linear(dim, dim, bias=False)
        self.itc_vl_image = nn.Linear(dim, dim, bias=False)
        self.itc_vl_text = nn.Linear(dim, dim, bias=False)
