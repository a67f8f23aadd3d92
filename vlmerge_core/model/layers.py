"""Attention and MLP sub-layers of the multiway block, in BEiT/VLMo form.

The attention keeps the parameter layout of BEiT (Bao et al. 2022) and of the official vl-merging
code: one fused ``qkv`` linear *without* bias plus separate ``q_bias`` and ``v_bias`` (the key bias
is fixed at zero), so that BEiT/VLMo checkpoints load without conversion. The product itself runs
through ``F.scaled_dot_product_attention``. The MLP is timm's ``Mlp`` (``fc1``/``fc2``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

__all__ = ["Attention", "Mlp", "attention_bias"]


def attention_bias(
    key_mask: torch.Tensor | None, rel_bias: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor | None:
    """The additive ``attn_mask`` of SDPA from a key-padding mask and a relative position bias.

    Args:
        key_mask: Bool ``[B, N]``, True for keys that may be attended (real tokens); None = all.
        rel_bias: float ``[H, N, N]`` added to the attention logits; None = no bias.
        dtype: dtype of the queries (the mask must match it).

    Returns:
        ``None`` (no mask: the fast kernels apply), or a float mask ``[B|1, H|1, N, N]``.
    """
    if key_mask is not None and bool(key_mask.all()):
        key_mask = None
    if key_mask is None and rel_bias is None:
        return None
    bias = 0.0
    if rel_bias is not None:
        bias = rel_bias.to(dtype).unsqueeze(0)  # (1, H, N, N)
    if key_mask is not None:
        pad = torch.zeros(key_mask.shape, dtype=dtype, device=key_mask.device)
        pad = pad.masked_fill(~key_mask, float("-inf"))[:, None, None, :]  # (B, 1, 1, N)
        bias = bias + pad
    return bias


class Attention(nn.Module):
    """Multi-head self-attention with BEiT's ``q_bias``/``v_bias`` (no key bias).

    Args:
        dim: width D.
        num_heads: heads H (D divisible by H).
        qkv_bias: create ``q_bias`` and ``v_bias`` (True in BEiT/VLMo).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias, self.v_bias = None, None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention over ``x`` [B, N, D]; ``attn_mask`` from :func:`attention_bias`."""
        B, N, D = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))  # (3D,)
        qkv = F.linear(x, self.qkv.weight, bias)  # (B, N, 3D)
        qkv = qkv.reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, d)
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, N, d)
        x = x.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        return self.proj(x)
