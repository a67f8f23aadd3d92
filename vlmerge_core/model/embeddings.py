"""Text embeddings and the shared relative position bias of image tokens.

Text: BERT-style word + absolute position embeddings and a LayerNorm (Devlin et al. 2019; VLMo,
Bao et al. 2022). Image tokens get BEiT's relative position bias (Bao et al. 2022, BEiT §2.2),
shared by all experts and held in one table with a slice of heads per block, as the official
vl-merging code does (``relative_position_bias_table`` of shape [num_rel, H * L]).
"""

from __future__ import annotations

import torch
from timm.models.beit import gen_relative_position_index
from torch import nn

__all__ = ["RelativePositionBias", "TextEmbeddings"]


class TextEmbeddings(nn.Module):
    """Word + position embeddings, then LayerNorm.

    Args:
        vocab_size: tokenizer vocabulary size.
        max_len: number of text positions.
        dim: width D.
    """

    def __init__(self, vocab_size: int, max_len: int, dim: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.position_embeddings = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] -> embeddings [B, T, D]."""
        B, T = ids.shape
        if T > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"text of {T} tokens exceeds max_text_len {self.position_embeddings.num_embeddings}"
            )
        pos = torch.arange(T, device=ids.device)
        return self.norm(self.word_embeddings(ids) + self.position_embeddings(pos)[None])  # (B, T, D)


class RelativePositionBias(nn.Module):
    """BEiT relative position bias over a ``grid x grid`` patch window plus [CLS], one slice per block.

    Args:
        grid: patches per side.
        num_heads: heads H.
        depth: blocks L (the table holds H columns per block).
    """

    def __init__(self, grid: int, num_heads: int, depth: int) -> None:
        super().__init__()
        self.num_heads, self.depth = num_heads, depth
        self.num_relative_distance = (2 * grid - 1) ** 2 + 3
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(self.num_relative_distance, num_heads * depth)
        )  # (R, H*L)
        self.register_buffer(
            "relative_position_index", gen_relative_position_index((grid, grid)), persistent=False
        )  # (1+N, 1+N)

    def forward(self, layer: int) -> torch.Tensor:
        """The bias of block ``layer``: [H, 1+N, 1+N]."""
        H = self.num_heads
        table = self.relative_position_bias_table[:, layer * H : (layer + 1) * H]  # (R, H)
        bias = table[self.relative_position_index.view(-1)]  # (M*M, H) with M = 1+N
        M = self.relative_position_index.shape[0]
        return bias.view(M, M, H).permute(2, 0, 1).contiguous()  # (H, M, M)
