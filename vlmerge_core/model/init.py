"""Initialisation paths: random, MS from MA (every expert a copy), and BEiT/ViT weights from timm.

- :func:`init_multiway_weights`: BEiT/VLMo random init (truncated normal of std ``init_std``, LayerNorm
  1/0), then :func:`rescale_residual_`, the official ``_rescale``: the weights of ``attn.proj``,
  ``mlp.fc1`` *and* ``mlp.fc2`` of block ``i`` divided by ``sqrt(2 (i + 1))`` (BEiT's
  ``fix_init_weight`` rescales ``proj`` and ``fc2`` only; the vl-merging/VLMo code also ``fc1``).
- :func:`init_ms_from_ma`: the paper's MS start (Sung et al. 2023, §3; official
  ``use_vision_weights_for_other_modalities``): every expert of a component is a copy of the shared
  weight of an MA state dict (a seed checkpoint, or the init checkpoint for "no seed").
- :func:`load_timm_into_v`: a local timm BEiT (``beit_*``: ``q_bias``/``v_bias``, per-block
  ``relative_position_bias_table``, ``gamma_1/2``) or plain ViT (``vit_*``: ``qkv.bias``) state dict
  into the blocks (every expert, i.e. ``v`` copied to ``l`` and ``vl``) and the image embeddings.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from timm.layers import trunc_normal_
from torch import nn

from vlmerge_core.model.experts import EXPERT_KEY, strip_expert
from vlmerge_core.model.resolution import IMAGE_EXTRA_BUCKETS, interpolate_image_bias

__all__ = [
    "EXPERT_KEY",
    "init_ms_from_ma",
    "init_multiway_weights",
    "load_timm_into_v",
    "rescale_residual_",
    "strip_expert",
]

log = logging.getLogger(__name__)


def rescale_residual_(model: nn.Module) -> list[str]:
    """The official ``_rescale`` (``vision_transformer.py`` of vl-merging), in place.

    In block ``i`` every weight (not bias) of the attention output projection and of both MLP layers
    is divided by ``sqrt(2 (i + 1))``; the predicate on a block parameter name ``n`` is the
    official one: ``("attn" in n and "proj" in n)`` or ``("mlp" in n and "fc" in n)``, without
    ``"bias"`` in ``n``. Every expert of an MS block is rescaled alike.

    Returns:
        The names (``blocks.{i}.…``) of the rescaled tensors.
    """
    done = []
    for i, blk in enumerate(model.blocks):
        scale = 1.0 / math.sqrt(2.0 * (i + 1))
        for name, p in blk.named_parameters():
            is_attn_out = "attn" in name and "proj" in name
            is_mlp = "mlp" in name and "fc" in name
            if (is_attn_out or is_mlp) and "bias" not in name:
                with torch.no_grad():
                    p.mul_(scale)
                done.append(f"blocks.{i}.{name}")
    return done


def init_multiway_weights(model: nn.Module) -> None:
    """Random init of a :class:`MultiwayTransformer` (BEiT/VLMo scheme, std ``cfg.init_std``).

    Linear and embedding weights: truncated normal; biases 0; LayerNorm 1/0; ``cls_token``,
    ``pos_embed``, ``mask_token`` truncated normal; then :func:`rescale_residual_`.
    """
    std = model.cfg.init_std
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            trunc_normal_(m.weight, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for p in (model.cls_token, model.pos_embed, model.mask_token):
        if p is not None:
            trunc_normal_(p, std=std)
    rescale_residual_(model)


def _copy_(dst: torch.Tensor, src: torch.Tensor, dst_name: str, src_name: str) -> None:
    if tuple(dst.shape) != tuple(src.shape):
        raise ValueError(f"shape mismatch: {dst_name} {tuple(dst.shape)} <- {src_name} {tuple(src.shape)}")
    with torch.no_grad():
        dst.copy_(src.to(dst.dtype))


def init_ms_from_ma(ms_model: nn.Module, ma_state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load an MA state dict into a (MS or MA) model: every expert gets the shared weight.

    Args:
        ms_model: the model to fill, in place.
        ma_state_dict: MA tensors by name (e.g. from :func:`vlmerge_core.model.load_state`).

    Returns:
        ``ms_model``.

    Raises:
        KeyError: a parameter of the model has no MA counterpart (names the tensor).
        ValueError: shapes differ (names the tensor).
    """
    own = ms_model.state_dict()
    for name, dst in own.items():
        src_name = strip_expert(name)
        if src_name not in ma_state_dict:
            raise KeyError(f"init_ms_from_ma: no tensor {src_name!r} (for {name!r}) in the MA state dict")
        _copy_(dst, ma_state_dict[src_name], name, src_name)
    extra = sorted(set(ma_state_dict) - {strip_expert(n) for n in own})
    if extra:
        raise KeyError(
            f"init_ms_from_ma: MA tensor {extra[0]!r} has no place in the model ({len(extra)} unused)"
        )
    return ms_model


# ---------------------------------------------------------------------------------------- timm
_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _timm_block_map(rest: str) -> str | None:
    """Our in-block name (without the expert level) of a timm in-block name, or None to skip."""
    if rest in ("gamma_1", "gamma_2") or rest.startswith(("norm1.", "norm2.", "mlp.fc1.", "mlp.fc2.")):
        return rest
    if rest in ("attn.qkv.weight", "attn.q_bias", "attn.v_bias") or rest.startswith("attn.proj."):
        return rest
    return None


def load_timm_into_v(
    model: nn.Module, timm_state_dict_or_path: Mapping[str, torch.Tensor] | str | Path
) -> list[str]:
    """Load BEiT/ViT weights (timm naming) into the blocks of every expert and the image embeddings.

    The weights go to ``v`` and are copied into ``l`` and ``vl`` (official
    ``use_vision_weights_for_other_modalities``). Handled names: ``patch_embed.proj.*``,
    ``cls_token``, ``pos_embed`` (if present), ``blocks.{i}.{norm1,norm2,attn,mlp,gamma_1,gamma_2}``,
    ViT's ``attn.qkv.bias`` (split into ``q_bias``/``v_bias``; a non-zero key bias is dropped with
    a warning since BEiT blocks have none), BEiT's per-block ``attn.relative_position_bias_table``
    (into the slice of block i of ``rel_pos_bias``) or its shared ``rel_pos_bias.relative_position_bias_table``
    (pt22k checkpoints: into every block's slice, as the official ``modify_checkpoint_beit``), either
    interpolated when the model's image grid differs, and ``norm.*`` or ``fc_norm.*`` as final norm.
    Classifier heads are skipped. A checkpoint without layer scale (plain ViT) loaded into a model
    with layer scale sets every ``gamma_1``/``gamma_2`` to 1, so the blocks compute what the
    checkpoint's blocks compute.

    Args:
        model: a :class:`MultiwayTransformer` (MA or MS), filled in place.
        timm_state_dict_or_path: a state dict, or a local ``.safetensors`` / ``.pth`` / ``.bin`` file.

    Returns:
        The names of our tensors that were set.
    """
    sd = _read_timm(timm_state_dict_or_path)
    own = dict(model.named_parameters())
    done: list[str] = []

    def put(ours_ma: str, value: torch.Tensor, src: str) -> None:
        targets = [n for n in own if strip_expert(n) == ours_ma]
        if not targets:
            raise KeyError(f"load_timm_into_v: model has no tensor {ours_ma!r} (for timm {src!r})")
        for n in targets:
            _copy_(own[n], value, n, src)
            done.append(n)

    for key, value in sd.items():
        if key in ("cls_token", "pos_embed") or key.startswith("patch_embed.proj."):
            if key == "pos_embed" and model.pos_embed is None:
                log.info("load_timm_into_v: %s skipped (the model has no absolute positions)", key)
                continue
            if key == "pos_embed" and value.shape != model.pos_embed.shape:
                raise ValueError(
                    f"load_timm_into_v: pos_embed {tuple(value.shape)} does not fit "
                    f"{tuple(model.pos_embed.shape)} (image/patch size differ)"
                )
            put(key, value, key)
        elif key.startswith(("norm.", "fc_norm.")) and value.ndim == 1:
            if key.startswith("fc_norm.") and "norm.weight" in sd:
                continue
            put("norm." + key.split(".", 1)[1], value, key)
        elif m := _TIMM_BLOCK.match(key):
            i, rest = int(m.group(1)), m.group(2)
            if rest == "attn.qkv.bias":
                q, k, v = value.chunk(3)
                if k.abs().max() > 0:
                    log.warning(
                        "load_timm_into_v: %s has a non-zero key bias; dropped (BEiT blocks "
                        "have none; the softmax is invariant to it)",
                        key,
                    )
                put(f"blocks.{i}.attn.q_bias", q, key)
                put(f"blocks.{i}.attn.v_bias", v, key)
            elif rest == "attn.relative_position_bias_table":
                _put_image_bias(model, value, [i], key)
                done.append("rel_pos_bias.relative_position_bias_table")
            elif (ours := _timm_block_map(rest)) is not None:
                put(f"blocks.{i}.{ours}", value, key)
        elif key == "rel_pos_bias.relative_position_bias_table":  # BEiT's shared table: every block
            _put_image_bias(model, value, range(len(model.blocks)), key)
            done.append("rel_pos_bias.relative_position_bias_table")
    done += _fill_absent(model, sd, own)
    log.info("load_timm_into_v: set %d tensors", len(done))
    return done


def _fill_absent(model: nn.Module, sd: Mapping[str, torch.Tensor], own: dict[str, nn.Parameter]) -> list[str]:
    """What the checkpoint lacks: absolute positions zeroed (BEiT's come from the bias), layer scale
    set to 1 (a plain ViT: the identity). Returns the names of the layer-scale tensors set."""
    if "pos_embed" not in sd and model.pos_embed is not None:
        with torch.no_grad():
            model.pos_embed.zero_()
    if any(k.endswith((".gamma_1", ".gamma_2")) for k in sd):
        return []
    names = [name for name in own if name.endswith(("gamma_1", "gamma_2"))]
    with torch.no_grad():
        for name in names:
            own[name].fill_(1.0)
    return names


def _put_image_bias(model: nn.Module, value: torch.Tensor, blocks, src: str) -> None:
    """A BEiT table [R_img, H] into the image rows of the given blocks' columns of our table (the
    text and text<->image rows keep their init, as the official ``modify_checkpoint_beit``); a table of
    another image grid (e.g. 224 px into a 384 px model) is interpolated as the official code does."""
    if model.rel_pos_bias is None:
        raise ValueError(f"load_timm_into_v: {src} needs a model with rel_pos_bias=True")
    table, H = model.rel_pos_bias.relative_position_bias_table, model.cfg.heads
    n_img = model.rel_pos_bias.text2image  # image rows come first
    value = _image_bias_at_grid(value, model.cfg.image_size // model.cfg.patch_size, src)
    if tuple(value.shape) != (n_img, H):
        raise ValueError(
            f"load_timm_into_v: {src} {tuple(value.shape)} does not fit the image buckets ({n_img}, {H}) "
            "(image/patch size or heads differ)"
        )
    for i in blocks:
        _copy_(table[:n_img, i * H : (i + 1) * H], value, f"rel_pos_bias[block {i}]", src)


def _image_bias_at_grid(value: torch.Tensor, grid: int, src: str) -> torch.Tensor:
    """A BEiT image table ``[(2g - 1)^2 + 3, H]`` resized to ``grid`` (unchanged when not a BEiT table)."""
    side = math.isqrt(max(value.shape[0] - IMAGE_EXTRA_BUCKETS, 0))
    if value.ndim != 2 or side * side + IMAGE_EXTRA_BUCKETS != value.shape[0] or side % 2 == 0:
        return value  # not a square window of buckets: the shape check names it
    old = (side + 1) // 2
    if old != grid:
        log.info("load_timm_into_v: %s interpolated from %dx%d to %dx%d patches", src, old, old, grid, grid)
    return interpolate_image_bias(value, old, grid)


def _read_timm(src: Mapping[str, torch.Tensor] | str | Path) -> dict[str, torch.Tensor]:
    if isinstance(src, Mapping):
        sd = dict(src)
    else:
        path = Path(src)
        if not path.exists():
            raise FileNotFoundError(f"{path}: timm checkpoint not found")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict", "module"):  # common checkpoint wrappers
        if wrapper in sd and isinstance(sd[wrapper], Mapping):
            sd = dict(sd[wrapper])
    return sd
