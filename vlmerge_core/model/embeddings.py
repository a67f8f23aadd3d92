"""Text embeddings and the relative position bias of the official vl-merging model.

Positions, as the official code (``vilt_module.py``; PAPER.md §2): no absolute position embedding for
images or text (``use_abs_pos_emb=False``; BERT embeddings built with ``position_embedding_type=
"rel_pos"``). One table ``relative_position_bias_table`` of shape [R, H * L] holds, for every block
and head, a bias per *bucket* of a (query, key) pair:

- image <-> image: BEiT's 2-D buckets over the ``g x g`` patch window, plus three buckets for
  [CLS] -> patch, patch -> [CLS] and [CLS] -> [CLS] (``R_img = (2g - 1)^2 + 3`` rows);
- text -> image and image -> text: one bucket each (rows ``R_img`` and ``R_img + 1``);
- text <-> text: 1-D buckets over the offset of two non-[CLS] positions (``2 T_0`` rows, ``T_0`` the
  text span of the table) and three [CLS] buckets at the end of the table.

Block ``i`` uses columns ``[i H, (i + 1) H)``. ``absolute`` embeddings (``ModelConfig.abs_pos_embed``)
remain an option of ours, off by default.
"""

from __future__ import annotations

import torch
from timm.models.beit import gen_relative_position_index
from torch import nn

__all__ = ["RelativePositionBias", "TextEmbeddings", "bias_index"]


class TextEmbeddings(nn.Module):
    """Word embeddings (+ absolute positions when asked), LayerNorm, dropout (BERT's embeddings).

    Args:
        vocab_size: tokenizer vocabulary size.
        max_len: number of text positions.
        dim: width D.
        dropout: dropout after the LayerNorm (official ``hidden_dropout_prob`` = ``drop_rate`` 0.1).
        absolute: add a learned absolute position embedding (ours; the official model has none).
    """

    def __init__(self, vocab_size: int, max_len: int, dim: int, dropout: float = 0.0, absolute: bool = False):
        super().__init__()
        self.max_len = max_len
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.position_embeddings = nn.Embedding(max_len, dim) if absolute else None
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] -> embeddings [B, T, D]."""
        B, T = ids.shape
        if T > self.max_len:
            raise ValueError(f"text of {T} tokens exceeds max_text_len {self.max_len}")
        x = self.word_embeddings(ids)  # (B, T, D)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(torch.arange(T, device=ids.device))[None]
        return self.dropout(self.norm(x))


def bias_index(grid: int, text_len: int, text_span: int) -> dict[str, torch.Tensor]:
    """The bucket of every (query, key) pair, as the official ``vilt_module.py`` builds it.

    Args:
        grid: patches per side ``g``.
        text_len: text positions ``T`` ([CLS] included).
        text_span: ``T_0``, the text positions the table covers (official ``max_text_len_of_initckpt``);
            ``T <= T_0``.

    Returns:
        ``{"image": Long [M, M], "text": Long [T, T], "text2image": int, "image2text": int, "rows": R}``
        with ``M = 1 + g^2``.
    """
    if text_len > text_span:
        raise ValueError(f"text_len {text_len} exceeds the table's text span {text_span}")
    n_img = (2 * grid - 1) ** 2 + 3
    rows = n_img + 2 * text_span + 2
    image = gen_relative_position_index((grid, grid))  # (M, M): BEiT's buckets, [CLS] at n_img - 3 ..
    pos = torch.arange(text_len - 1)
    offset = pos[None, :] - pos[:, None]  # (T-1, T-1): key position - query position
    text = torch.zeros(text_len, text_len, dtype=torch.long)
    text[1:, 1:] = offset - (2 - text_span) + n_img + 2
    text[0, :] = rows - 3  # [CLS] -> token
    text[:, 0] = rows - 2  # token -> [CLS]
    text[0, 0] = rows - 1
    return {"image": image.long(), "text": text, "text2image": n_img, "image2text": n_img + 1, "rows": rows}


class RelativePositionBias(nn.Module):
    """The official per-block relative position bias over image, text and fused sequences.

    Args:
        grid: patches per side.
        text_len: text positions of the model.
        num_heads: heads H.
        depth: blocks L (the table holds H columns per block).
        text_span: text positions the table covers (default ``text_len``).
    """

    def __init__(self, grid: int, text_len: int, num_heads: int, depth: int, text_span: int | None = None):
        super().__init__()
        self.num_heads, self.depth = num_heads, depth
        idx = bias_index(grid, text_len, text_span or text_len)
        self.text2image, self.image2text = idx["text2image"], idx["image2text"]
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(idx["rows"], num_heads * depth)
        )  # (R, H*L)
        self.register_buffer("image_index", idx["image"], persistent=False)  # (M, M)
        self.register_buffer("text_index", idx["text"], persistent=False)  # (T, T)

    def _lookup(self, index: torch.Tensor) -> list[torch.Tensor]:
        bias = self.relative_position_bias_table[index]  # (n, m, H*L)
        bias = bias.permute(2, 0, 1)  # (H*L, n, m)
        return list(bias.split(self.num_heads, dim=0))  # L x (H, n, m)

    def image(self) -> list[torch.Tensor]:
        """Per block, the bias of an image sequence: L x [H, M, M]."""
        return self._lookup(self.image_index)

    def text(self, T: int) -> list[torch.Tensor]:
        """Per block, the bias of a text sequence of ``T`` tokens: L x [H, T, T]."""
        return self._lookup(self.text_index[:T, :T])

    def fused(self, T: int) -> list[torch.Tensor]:
        """Per block, the bias of the fused sequence ``[image (M), text (T)]``: L x [H, M+T, M+T]."""
        M = self.image_index.shape[0]
        top = torch.cat([self.image_index, self.image_index.new_full((M, T), self.image2text)], dim=1)
        bottom = torch.cat(
            [self.text_index.new_full((T, M), self.text2image), self.text_index[:T, :T]], dim=1
        )
        return self._lookup(torch.cat([top, bottom], dim=0))  # (M+T, M+T) buckets
