"""The VLMo-style multiway transformer, modality-specific (MS) or modality-agnostic (MA).

Routing (VLMo, Bao et al. 2022; the official vl-merging code, Sung et al. 2023):

- below ``vl_start`` image and text tokens are two separate sequences (no cross-modal attention):
  the image sequence runs through the ``v`` expert, the text sequence through ``l``;
- from ``vl_start`` up, the fused input is the concatenation ``[image tokens, text tokens]`` and runs
  through ``vl``; an image-only input keeps ``v`` (or ``vl`` with ``top="vl"``), a text-only input
  keeps ``l`` (or ``vl``).

In MA every expert name maps to the same shared module, so MA and MS differ only in parameters.
Image tokens carry token type 1 and text tokens type 0 (as the official code; NLVR2's second image
gets a third type, :meth:`MultiwayTransformer.add_token_type`); the fused "cls" is ``heads.pooler``
over the first *text* token ([CLS] of the caption), as VLMo pools. Positions come from the official
relative position bias alone (:mod:`vlmerge_core.model.embeddings`); absolute position embeddings
are an option (``abs_pos_embed``), off by default as in the official model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from timm.layers import DropPath, PatchEmbed
from torch import nn

from vlmerge_core.config import ModelConfig
from vlmerge_core.model.block import MultiwayBlock
from vlmerge_core.model.embeddings import RelativePositionBias, TextEmbeddings
from vlmerge_core.model.experts import experts_for_block
from vlmerge_core.model.heads import PretrainHeads
from vlmerge_core.model.init import init_multiway_weights
from vlmerge_core.model.layers import attention_bias

__all__ = ["MultiwayTransformer"]

LOGIT_SCALE_INIT = math.log(1 / 0.07)  # CLIP/VLMo temperature init


class MultiwayTransformer(nn.Module):
    """Multiway transformer over images [B, 3, H, W] and token ids [B, T].

    Args:
        cfg: the model section of the parameters; MS when ``cfg.ms_components`` is non-empty.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer_info: dict | None = None  # the pre-training tokenizer (recorded in checkpoints)
        D, L = cfg.width, cfg.depth
        self.vl_start = cfg.vl_start
        self.patch_embed = PatchEmbed(cfg.image_size, cfg.patch_size, 3, D)
        self.num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, D)) if cfg.abs_pos_embed else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        self.text_embed = TextEmbeddings(
            cfg.vocab_size, cfg.max_text_len, D, cfg.text_dropout, cfg.abs_pos_embed
        )
        self.token_type_embed = nn.Embedding(cfg.token_types, D)  # 0 text, 1 image (2: NLVR2's second image)
        grid = cfg.image_size // cfg.patch_size
        span = cfg.rel_pos_text_span or cfg.max_text_len
        self.rel_pos_bias = (
            RelativePositionBias(grid, cfg.max_text_len, cfg.heads, L, span) if cfg.rel_pos_bias else None
        )
        rates = [cfg.drop_path * i / max(L - 1, 1) for i in range(L)]
        self.blocks = nn.ModuleList(
            MultiwayBlock(
                D,
                cfg.heads,
                cfg.mlp_ratio,
                experts_for_block(i, cfg.vl_start),
                cfg.ms_components,
                cfg.layer_scale_init,
                rates[i],
            )
            for i in range(L)
        )
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.heads = PretrainHeads(D, cfg.vocab_size, cfg.mim_vocab, cfg.num_tags)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        self.logit_scale_vl = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))

        init_multiway_weights(self)

    # ------------------------------------------------------------------------------- properties
    @property
    def kind(self) -> str:
        """``"ms"`` when some component is per expert, else ``"ma"``."""
        return "ms" if self.cfg.ms_components else "ma"

    def experts_of_block(self, i: int) -> list[str]:
        """Expert names of block ``i``."""
        return list(self.blocks[i].experts)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the parameters (float inputs are cast to it)."""
        return self.cls_token.dtype

    def set_dropout(self, drop_path: float, text_dropout: float) -> None:
        """Set the stochastic depth (linear from 0 to ``drop_path`` over the blocks, as the official
        ``dpr``) and the text-embedding dropout, e.g. for fine-tuning a pre-trained model."""
        L = len(self.blocks)
        for i, blk in enumerate(self.blocks):
            rate = drop_path * i / max(L - 1, 1)
            blk.drop_path = DropPath(rate) if rate > 0 else nn.Identity()
        self.text_embed.dropout = nn.Dropout(text_dropout) if text_dropout > 0 else nn.Identity()

    def add_token_type(self) -> int:
        """Append a token type initialised from type 1 (image), as the official NLVR2 set-up does for
        the second image (``token_type_embeddings`` grown to 3 rows, row 2 = row 1); returns its index."""
        old = self.token_type_embed
        new = nn.Embedding(old.num_embeddings + 1, old.embedding_dim).to(old.weight.device, old.weight.dtype)
        with torch.no_grad():
            new.weight[: old.num_embeddings] = old.weight
            new.weight[old.num_embeddings] = old.weight[1]
        self.token_type_embed = new
        self.cfg = dataclasses.replace(self.cfg, token_types=new.num_embeddings)  # saved checkpoints say so
        return old.num_embeddings

    # ------------------------------------------------------------------------------- embeddings
    def embed_image(
        self, images: torch.Tensor, patch_mask: torch.Tensor | None = None, token_type: int = 1
    ) -> torch.Tensor:
        """Images [B, 3, H, W] -> tokens [B, 1+N, D]; masked patches (True) become ``mask_token``."""
        x = self.patch_embed(images)  # (B, N, D)
        B, N, D = x.shape
        if patch_mask is not None:
            w = patch_mask.unsqueeze(-1).to(x.dtype)  # (B, N, 1)
            x = x * (1 - w) + self.mask_token.to(x.dtype) * w
        x = torch.cat([self.cls_token.expand(B, -1, -1).to(x.dtype), x], dim=1)  # (B, 1+N, D)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return x + self.token_type_embed.weight[token_type]

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] -> tokens [B, T, D]."""
        return self.text_embed(ids) + self.token_type_embed.weight[0]

    # ------------------------------------------------------------------------- block sequences
    def _biases(self, kind: str, T: int = 0) -> list[torch.Tensor | None]:
        """Per block, the relative position bias of an ``image``, ``text`` or ``fused`` sequence."""
        if self.rel_pos_bias is None:
            return [None] * len(self.blocks)
        if kind == "image":
            return self.rel_pos_bias.image()
        return self.rel_pos_bias.text(T) if kind == "text" else self.rel_pos_bias.fused(T)

    def run_image(self, x: torch.Tensor, start: int, end: int, top: str = "v") -> torch.Tensor:
        """Image tokens [B, 1+N, D] through blocks ``start..end-1`` (``v`` below vl_start, else ``top``)."""
        rel = self._biases("image")
        for i in range(start, end):
            expert = "v" if i < self.vl_start else top
            x = self.blocks[i](x, expert, attention_bias(None, rel[i], x.dtype))
        return x

    def run_text(
        self, x: torch.Tensor, mask: torch.Tensor, start: int, end: int, top: str = "l"
    ) -> torch.Tensor:
        """Text tokens [B, T, D] through blocks ``start..end-1``; padded keys (mask False) are masked."""
        rel = self._biases("text", x.shape[1])
        for i in range(start, end):
            bias = attention_bias(mask.bool(), rel[i], x.dtype)  # (B|1, H|1, T|1, T) or None
            x = self.blocks[i](x, "l" if i < self.vl_start else top, bias)
        return x

    def run_fused(self, img: torch.Tensor, txt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Concatenate image [B, 1+N, D] and text [B, T, D] tokens; blocks ``vl_start..L-1`` with ``vl``."""
        x = torch.cat([img, txt], dim=1)  # (B, M+T, D), M = 1+N
        key_mask = torch.cat(
            [torch.ones(img.shape[:2], dtype=torch.bool, device=img.device), mask.bool()], dim=1
        )  # (B, M+T)
        rel = self._biases("fused", txt.shape[1])  # text->image and image->text have one bucket each
        for i in range(self.vl_start, len(self.blocks)):
            x = self.blocks[i](x, "vl", attention_bias(key_mask, rel[i], x.dtype))
        return x

    # ---------------------------------------------------------------------- bottoms and tops
    def image_bottom(
        self, images: torch.Tensor, patch_mask: torch.Tensor | None = None, token_type: int = 1
    ) -> torch.Tensor:
        """Embedded images through the blocks below ``vl_start`` (``v``): [B, 1+N, D]."""
        return self.run_image(self.embed_image(images, patch_mask, token_type), 0, self.vl_start)

    def text_bottom(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Embedded text through the blocks below ``vl_start`` (``l``): [B, T, D]."""
        return self.run_text(self.embed_text(ids), mask, 0, self.vl_start)

    def image_top(self, h: torch.Tensor, top: str = "v") -> dict[str, torch.Tensor]:
        """Image bottom features through the top blocks with ``top``; normed tokens and [CLS]."""
        tokens = self.norm(self.run_image(h, self.vl_start, len(self.blocks), top))
        return {"tokens": tokens, "cls": tokens[:, 0]}

    def text_top(self, h: torch.Tensor, mask: torch.Tensor, top: str = "l") -> dict[str, torch.Tensor]:
        """Text bottom features through the top blocks with ``top``; normed tokens and [CLS]."""
        tokens = self.norm(self.run_text(h, mask, self.vl_start, len(self.blocks), top))
        return {"tokens": tokens, "cls": tokens[:, 0]}

    def fused_top(
        self, img_h: torch.Tensor, txt_h: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Image and text bottom features fused by the ``vl`` blocks (see :meth:`forward_fused`)."""
        tokens = self.norm(self.run_fused(img_h, txt_h, mask))  # (B, M+T, D)
        M = img_h.shape[1]
        return {
            "tokens": tokens,
            "image_tokens": tokens[:, :M],
            "text_tokens": tokens[:, M:],
            "cls": self.heads.pooler(tokens[:, M]),
        }

    # --------------------------------------------------------------------------- public API
    def forward_image(
        self, images: torch.Tensor, patch_mask: torch.Tensor | None = None, top: str = "v"
    ) -> dict[str, torch.Tensor]:
        """Image-only path: ``v`` below ``vl_start``, ``top`` (``"v"`` or ``"vl"``) above.

        Returns:
            ``tokens`` [B, 1+N, D] after the final norm and ``cls`` [B, D] (the [CLS] token).
        """
        if top not in ("v", "vl"):
            raise ValueError(f"forward_image: top must be 'v' or 'vl', got {top!r}")
        return self.image_top(self.image_bottom(images, patch_mask), top)

    def image_block_tokens(self, images: torch.Tensor, blocks: Sequence[int]) -> list[torch.Tensor]:
        """Image-only path (``v`` in every block, as :meth:`forward_image` with ``top="v"``): the raw
        output tokens [B, 1+N, D] of each block in ``blocks`` (0-based, in that order), before any
        final norm, as BEiT's segmentation backbone hands blocks 4, 6, 8 and 12 to UperNet."""
        bad = [b for b in blocks if not 0 <= b < len(self.blocks)]
        if bad:
            raise ValueError(f"image_block_tokens: blocks {bad} outside 0..{len(self.blocks) - 1}")
        x, out = self.embed_image(images), {}
        rel = self._biases("image")
        for i in range(max(blocks) + 1 if blocks else 0):
            x = self.blocks[i](x, "v", attention_bias(None, rel[i], x.dtype))
            out[i] = x
        return [out[b] for b in blocks]

    def forward_text(self, ids: torch.Tensor, mask: torch.Tensor, top: str = "l") -> dict[str, torch.Tensor]:
        """Text-only path: ``l`` below ``vl_start``, ``top`` (``"l"`` or ``"vl"``) above.

        Returns:
            ``tokens`` [B, T, D] after the final norm and ``cls`` [B, D] (the [CLS] token).
        """
        if top not in ("l", "vl"):
            raise ValueError(f"forward_text: top must be 'l' or 'vl', got {top!r}")
        return self.text_top(self.text_bottom(ids, mask), mask, top)

    def forward_fused(
        self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, image_token_type: int = 1
    ) -> dict[str, torch.Tensor]:
        """Image-text path: separate ``v``/``l`` below ``vl_start``, the concatenation through ``vl`` above.

        Args:
            image_token_type: token type of the image (1; NLVR2's second image: 2).

        Returns:
            ``tokens`` [B, 1+N+T, D] (image first), ``image_tokens``, ``text_tokens`` and ``cls``:
            ``heads.pooler`` over the first text token (VLMo's pooled feature, for ITM and VQA).
        """
        img = self.image_bottom(images, token_type=image_token_type)
        return self.fused_top(img, self.text_bottom(ids, mask), mask)

    def forward(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Same as :meth:`forward_fused`."""
        return self.forward_fused(images, ids, mask)
