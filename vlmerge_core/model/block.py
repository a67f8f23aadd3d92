"""The multiway transformer block: shared or per-modality (``v``, ``l``, ``vl``) sub-layers.

A block holds four components, ``norm1 -> attn`` and ``norm2 -> mlp`` (pre-norm residual, as
BEiT/VLMo). Each component listed in ``ms_components`` is an ``nn.ModuleDict`` with one copy per
expert (modality-specific, MS); the others are one shared module (modality-agnostic, MA). So an MS
state dict has names ``blocks.{i}.attn.{e}.qkv.weight`` where MA has ``blocks.{i}.attn.qkv.weight``,
exactly the naming of the official vl-merging code (Sung et al. 2023, ``vision_transformer.Block``).

The block never decides routing: the caller passes the expert that processes the sequence.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.layers import DropPath
from torch import nn

from vlmerge_core.model.experts import COMPONENTS
from vlmerge_core.model.layers import Attention, Mlp

__all__ = ["MS_VARIANTS", "MultiwayBlock"]

# The components in forward order (norm1 -> attn, norm2 -> mlp): the registration order, hence the
# state-dict order and the order in which the random init draws. The names are those of COMPONENTS.
FORWARD_ORDER = ("norm1", "attn", "norm2", "mlp")
assert set(FORWARD_ORDER) == set(COMPONENTS)

# Which components each architecture variant of the paper makes modality-specific, as the official
# named configs do (src/vilt/config.py + Block.__init__):
#   all_moe:  MoE in attn and ffn (attn, norm1 per expert) + custom LN attn/ffn -> all four;
#   attn_moe: MoE in attn (attn + norm1 per expert), custom LN attn only        -> attn, norm1;
#   ffn_moe:  MoE in ffn (mlp per expert; the MoE block keeps norm2 shared) + custom LN ffn, which
#             makes norm2 per expert                                           -> mlp, norm2;
#   ln_moe:   no MoE, custom LN attn and ffn                                    -> norm1, norm2.
MS_VARIANTS: dict[str, list[str]] = {
    "all": list(COMPONENTS),
    "attn": ["attn", "norm1"],
    "ffn": ["mlp", "norm2"],
    "ln": ["norm1", "norm2"],
}


class MultiwayBlock(nn.Module):
    """A pre-norm transformer block whose components are shared or per expert.

    Args:
        dim: width D.
        num_heads: attention heads.
        mlp_ratio: MLP hidden size / D.
        experts: expert names of this block (see :func:`vlmerge_core.model.experts.experts_for_block`).
        ms_components: the components that get one copy per expert.
        layer_scale_init: initial value of ``gamma_1``/``gamma_2``; 0 = no layer scale.
        drop_path: stochastic depth rate of this block.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        experts: list[str],
        ms_components: list[str] | tuple[str, ...] = (),
        layer_scale_init: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.experts = list(experts)
        self.ms_components = tuple(c for c in FORWARD_ORDER if c in ms_components)
        makers: dict[str, Callable[[], nn.Module]] = {
            "norm1": lambda: nn.LayerNorm(dim, eps=1e-6),
            "attn": lambda: Attention(dim, num_heads, qkv_bias=True),
            "norm2": lambda: nn.LayerNorm(dim, eps=1e-6),
            "mlp": lambda: Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU),
        }
        for name in FORWARD_ORDER:  # registration order = state-dict order
            if name in self.ms_components:
                setattr(self, name, nn.ModuleDict({e: makers[name]() for e in self.experts}))
            else:
                setattr(self, name, makers[name]())
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if layer_scale_init > 0:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        else:
            self.gamma_1, self.gamma_2 = None, None

    def part(self, name: str, expert: str) -> nn.Module:
        """Component ``name`` as used by ``expert`` (the shared module when not per expert)."""
        module = getattr(self, name)
        if isinstance(module, nn.ModuleDict):
            if expert not in module:
                raise KeyError(f"block has no expert {expert!r} for {name} (experts: {self.experts})")
            return module[expert]
        return module

    def forward(self, x: torch.Tensor, expert: str, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run the token sequence ``x`` [B, N, D] through the sub-layers of ``expert``."""
        if expert not in self.experts:
            raise KeyError(f"expert {expert!r} is not in this block (experts: {self.experts})")
        h = self.part("attn", expert)(self.part("norm1", expert)(x), attn_mask)  # (B, N, D)
        if self.gamma_1 is not None:
            h = self.gamma_1 * h
        x = x + self.drop_path(h)
        h = self.part("mlp", expert)(self.part("norm2", expert)(x))  # (B, N, D)
        if self.gamma_2 is not None:
            h = self.gamma_2 * h
        return x + self.drop_path(h)
