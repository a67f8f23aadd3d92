"""Pre-training objectives of VLMo and the paper (Sung et al. 2023, §3 / PAPER.md §3).

Loss names (keys of ``PretrainConfig.losses``): ``mlm``, ``itc``, ``itc_vl``, ``itm``, ``mim``,
``text_mlm``. Work is shared between objectives: the image and caption go through the blocks below
``vl_start`` once (``v``/``l`` bottoms) and every fused pass (MLM, the three ITM passes) reuses them,
which is exactly what separate passes compute, at a fraction of the cost.

Data parallelism: every rank holds the same *global* micro-batch and computes the rows
``[lo, hi)``. Each loss returns its local sum divided by the *global* count, so the sum over ranks
is the global mean; contrastive logits use the features of all ranks (gathered with gradient), or,
with ``itc_grad="official"`` (``PretrainConfig.itc_grad``), the official ``compute_ifm`` gradients:
other ranks' features without gradient, so ITC feature gradients are 1/world-size of the exact ones.
:class:`LossModule` takes it as ``itc_grad`` (the pre-training loop gives it ``cfg.itc_grad``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vlmerge_core.data.loaders import MLM_IGNORE_INDEX
from vlmerge_core.pretrain.distributed import gather_with_grad

__all__ = [
    "LOSS_NAMES",
    "LossModule",
    "Shard",
    "compute_losses",
    "contrastive_loss",
    "hard_negative_weights",
    "itm_loss",
    "masked_lm_loss",
    "mim_loss",
]

LOSS_NAMES = ("mlm", "itc", "itc_vl", "itm", "mim", "tags", "text_mlm")
ITM_NEGATIVES = ("official", "true_negatives", "uniform")  # PretrainConfig.itm_negatives
ITC_GRADS = ("exact", "official")  # PretrainConfig.itc_grad


@dataclasses.dataclass(frozen=True)
class Shard:
    """The rows of the global micro-batch this rank computes."""

    lo: int  # first global row
    hi: int  # one past the last global row
    size: int  # global micro-batch size G


def _f32(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16/fp16 activations under autocast are promoted; float64 is kept)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _local(batch: dict[str, torch.Tensor], key: str, shard: Shard) -> torch.Tensor:
    return batch[key][shard.lo : shard.hi]


def contrastive_loss(
    img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor, shard: Shard, itc_grad: str = "exact"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE (CLIP, Radford et al. 2021; VLMo's ITC) over the global batch.

    Args:
        img: L2-normalised image features of the local rows [b, D].
        txt: L2-normalised text features of the local rows [b, D].
        logit_scale: log of the inverse temperature (init log(1/0.07); not clamped, as the official
            ``compute_ifm``, whose clamp is commented out).
        shard: the local rows.
        itc_grad: ``"exact"``: the local rows' share, features of all ranks gathered with gradient,
            so the summed gradients are the global loss's; ``"official"``: as ``compute_ifm``, which
            gathers with a plain ``all_gather``: each rank takes the whole global loss with gradients
            into its own features only, and DDP's mean leaves feature gradients at 1/world-size of
            the exact ones (the temperature's stay exact). Equal on one process.

    Returns:
        (local share of the loss, detached global image-to-text logits [G, G]: the cosine
        similarities times the inverse temperature, the official ``ifm_i2t_logits``).
    """
    if itc_grad not in ITC_GRADS:
        raise ValueError(f"itc_grad must be one of {list(ITC_GRADS)}, got {itc_grad!r}")
    if itc_grad == "official":
        return _contrastive_official(img, txt, logit_scale, shard)
    all_img, all_txt = gather_with_grad(img), gather_with_grad(txt)  # (G, D)
    scale = logit_scale.exp()
    target = torch.arange(shard.lo, shard.hi, device=img.device)
    i2t = scale * _f32(img) @ _f32(all_txt).T  # (b, G)
    t2i = scale * _f32(txt) @ _f32(all_img).T  # (b, G)
    loss = (F.cross_entropy(i2t, target, reduction="sum") + F.cross_entropy(t2i, target, reduction="sum")) / 2
    return loss / shard.size, (scale * _f32(all_img) @ _f32(all_txt).T).detach()


def _splice_local(x: torch.Tensor, shard: Shard) -> torch.Tensor:
    """All ranks' rows of ``x`` [b, D] -> [G, D]: the others' without gradient, the local ones with."""
    others = gather_with_grad(x.detach())  # (G, D), no gradient (a plain all_gather)
    return torch.cat([others[: shard.lo], x, others[shard.hi :]], dim=0)


def _contrastive_official(
    img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor, shard: Shard
) -> tuple[torch.Tensor, torch.Tensor]:
    """``contrastive_loss`` with the official gradients: the global mean loss over [G, G] logits with
    gradients into the local features, divided by the world size (the loop sums the ranks' shares)."""
    W = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    all_img, all_txt = _splice_local(img, shard), _splice_local(txt, shard)  # (G, D)
    scale = logit_scale.exp()
    i2t = scale * _f32(all_img) @ _f32(all_txt).T  # (G, G)
    target = torch.arange(i2t.shape[0], device=img.device)
    loss = (F.cross_entropy(i2t, target) + F.cross_entropy(i2t.T, target)) / 2
    return loss / W, i2t.detach()


def hard_negative_weights(
    logits: torch.Tensor, image_index: torch.Tensor, ids: torch.Tensor, mode: str = "official"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampling weights of the ITM negatives (VLMo, Bao et al. 2022, §2.2; ALBEF, Li et al. 2021).

    Modes (:data:`ITM_NEGATIVES`):

    - ``official``: as ``compute_itm_hardneg``, ``softmax`` over each row of the temperature-scaled
      contrastive logits (``ifm_i2t_logits`` / ``ifm_t2i_logits``, which include
      ``logit_scale.exp()``) with the diagonal (the positive pair) zeroed;
    - ``true_negatives`` (ours): the same, and every other pair that is not a true negative (the
      same image, or the very same caption) zeroed too; a row left without weight falls back to
      uniform over the true negatives;
    - ``uniform`` (ours): every other pair with equal weight (random negatives, no mining).

    Args:
        logits: global image-to-text logits [G, G] (``scale * cos``).
        image_index: Long [G], the image of each pair.
        ids: Long [G, T], the caption of each pair.
        mode: one of :data:`ITM_NEGATIVES`.

    Returns:
        (text weights per image [G, G], image weights per text [G, G]), rows not normalised.
    """
    if mode not in ITM_NEGATIVES:
        raise ValueError(f"itm_negatives must be one of {list(ITM_NEGATIVES)}, got {mode!r}")
    G = logits.shape[0]
    eye = torch.eye(G, dtype=torch.bool, device=logits.device)
    if mode == "uniform":
        w = (~eye).float()
        return w, w.clone()
    w_i2t = F.softmax(_f32(logits), dim=1).masked_fill(eye, 0.0)  # (G images, G texts)
    w_t2i = F.softmax(_f32(logits).T, dim=1).masked_fill(eye, 0.0)  # (G texts, G images)
    if mode == "official":
        return w_i2t, w_t2i
    image_index, ids = image_index.to(logits.device), ids.to(logits.device)
    same = (image_index[:, None] == image_index[None, :]) | (ids[:, None, :] == ids[None, :, :]).all(-1)
    w_i2t, w_t2i = w_i2t.masked_fill(same, 0.0), w_t2i.masked_fill(same.T, 0.0)
    fallback = (~same).float()  # uniform over the true negatives (or over all others if none)
    fallback = torch.where(fallback.sum(1, keepdim=True) > 0, fallback, (~eye).float())
    w_i2t = torch.where(w_i2t.sum(1, keepdim=True) > 0, w_i2t, fallback)
    w_t2i = torch.where(w_t2i.sum(1, keepdim=True) > 0, w_t2i, fallback.T)
    return w_i2t, w_t2i


def _hard_negatives(
    logits: torch.Tensor, image_index: torch.Tensor, ids: torch.Tensor, seed: int, mode: str = "official"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample a negative text per image and image per text (:func:`hard_negative_weights`)."""
    w_i2t, w_t2i = hard_negative_weights(logits, image_index, ids, mode)
    g = torch.Generator(device="cpu").manual_seed(seed)
    neg_txt = torch.multinomial(w_i2t.cpu(), 1, generator=g).squeeze(1)  # (G,) text per image
    neg_img = torch.multinomial(w_t2i.cpu(), 1, generator=g).squeeze(1)  # (G,) image per text
    return neg_txt.to(logits.device), neg_img.to(logits.device)


def _pick(idx: torch.Tensor, local: torch.Tensor, shard: Shard, compute) -> torch.Tensor:
    """Rows ``idx`` (global) of a per-row feature: local rows reused, others computed by ``compute``."""
    is_local = (idx >= shard.lo) & (idx < shard.hi)
    if bool(is_local.all()):
        return local[idx - shard.lo]
    out = local.new_empty((len(idx), *local.shape[1:]))
    out[is_local] = local[idx[is_local] - shard.lo]
    out[~is_local] = compute(idx[~is_local]).to(out.dtype)
    return out


def itm_loss(
    model,
    batch: dict[str, torch.Tensor],
    img_h: torch.Tensor,
    txt_h: torch.Tensor,
    logits: torch.Tensor,
    shard: Shard,
    negatives: str = "official",
) -> torch.Tensor:
    """Image-text matching with hard negatives (VLMo §2.2; ALBEF, Li et al. 2021).

    For each local pair: the positive, the caption with a hard-negative image, and the image with a
    hard-negative caption, each fused and classified by ``heads.itm`` over the pooled feature. The
    negatives are drawn from the softmax of ``logits``, the temperature-scaled global ITC logits
    (``negatives``: see :func:`hard_negative_weights`).
    """
    neg_txt, neg_img = _hard_negatives(
        logits, batch["image_index"], batch["ids"], int(batch["itm_seed"]), negatives
    )
    neg_txt, neg_img = neg_txt[shard.lo : shard.hi], neg_img[shard.lo : shard.hi]
    mask = _local(batch, "mask", shard).to(txt_h.device)
    img_neg = _pick(
        neg_img,
        img_h,
        shard,
        lambda i: model.image_bottom(batch["images"][i.cpu()].to(img_h.device, img_h.dtype)),
    )
    txt_neg = _pick(
        neg_txt,
        txt_h,
        shard,
        lambda i: model.text_bottom(
            batch["ids"][i.cpu()].to(txt_h.device), batch["mask"][i.cpu()].to(txt_h.device)
        ),
    )
    mask_neg = batch["mask"][neg_txt.cpu()].to(txt_h.device)
    fused = model.fused_top(
        torch.cat([img_h, img_neg, img_h]),
        torch.cat([txt_h, txt_h, txt_neg]),
        torch.cat([mask, mask, mask_neg]),
    )  # 3b pairs
    logits = model.heads.itm(fused["cls"])  # (3b, 2)
    b = img_h.shape[0]
    labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(logits.device)
    return F.cross_entropy(_f32(logits), labels, reduction="sum") / (3 * shard.size)


def masked_lm_loss(model, tokens: torch.Tensor, labels: torch.Tensor, global_count: int) -> torch.Tensor:
    """Masked language modelling (BERT, Devlin et al. 2019) on the chosen text positions."""
    sel = labels != MLM_IGNORE_INDEX
    logits = model.heads.mlm(tokens[sel])  # (n, V)
    return F.cross_entropy(_f32(logits), labels[sel], reduction="sum") / max(global_count, 1)


def mim_loss(
    model, images: torch.Tensor, patch_mask: torch.Tensor, codes: torch.Tensor, global_count: int
) -> torch.Tensor:
    """Masked image modelling (BEiT, Bao et al. 2022): predict the codebook index of masked patches.

    The image-only input runs the ``v`` path; the micro-world's k-means patch codebook stands in for
    BEiT's dVAE tokenizer.
    """
    tokens = model.forward_image(images, patch_mask)["tokens"][:, 1:]  # (b, N, D)
    logits = model.heads.mim(tokens[patch_mask])  # (n, K)
    return F.cross_entropy(_f32(logits), codes[patch_mask], reduction="sum") / max(global_count, 1)


def tags_loss(model, images: torch.Tensor, tags: torch.Tensor, global_count: int) -> torch.Tensor:
    """Supervised multi-label image tagging on the ``v`` path's [CLS]: binary cross-entropy summed over
    the tags, averaged over images (``global_count`` = images of the global batch).

    The stand-in for the supervised half of the paper's init, ``beit_base_patch16_224_pt22k_ft22k``
    (BEiT MIM on ImageNet-22k, then fine-tuned on its 21k labels): the micro-world's image-only set
    is labelled with the object kinds (shape, colour) each image contains.
    """
    logits = model.heads.tags(model.forward_image(images)["cls"])  # (b, K)
    bce = F.binary_cross_entropy_with_logits(_f32(logits), tags.to(logits.dtype), reduction="sum")
    return bce / max(global_count, 1)


def compute_losses(
    model,
    batch: dict[str, torch.Tensor],
    losses: dict[str, float],
    shard: Shard,
    device: str | torch.device = "cpu",
    itm_negatives: str = "official",
    itc_grad: str = "exact",
) -> dict[str, torch.Tensor]:
    """Every active loss (weight > 0) on the local rows of a global micro-batch (``itc_grad``: see
    :func:`contrastive_loss`).

    Returns:
        ``{name: local share}``; the sum over ranks of each value is that loss on the global batch.
    """
    active = [k for k in LOSS_NAMES if losses.get(k, 0) > 0]
    unknown = set(losses) - set(LOSS_NAMES)
    if unknown:
        raise KeyError(f"unknown loss name(s) {sorted(unknown)}; expected some of {list(LOSS_NAMES)}")
    dtype = model.dtype  # float inputs follow the model's dtype (float64 in exactness tests)
    loc = {
        k: _local(batch, k, shard).to(device, dtype=dtype if batch[k].is_floating_point() else None)
        for k in batch
        if batch[k].ndim > 0
    }
    out: dict[str, torch.Tensor] = {}
    if {"mlm", "itc", "itc_vl", "itm"} & set(active):
        img_h = model.image_bottom(loc["images"])  # (b, 1+N, D)
        txt_h = model.text_bottom(loc["ids"], loc["mask"])  # (b, T, D)
        logits = None  # temperature-scaled unimodal ITC logits: what the hard negatives are drawn from
        for name, top_i, top_t, p_i, p_t, scale in (
            ("itc", "v", "l", model.heads.itc_image, model.heads.itc_text, model.logit_scale),
            ("itc_vl", "vl", "vl", model.heads.itc_vl_image, model.heads.itc_vl_text, model.logit_scale_vl),
        ):
            if name not in active and not (name == "itc" and "itm" in active and logits is None):
                continue
            fi = F.normalize(p_i(model.image_top(img_h, top_i)["cls"]), dim=-1)  # (b, D)
            ft = F.normalize(p_t(model.text_top(txt_h, loc["mask"], top_t)["cls"]), dim=-1)  # (b, D)
            loss, lg = contrastive_loss(fi, ft, scale, shard, itc_grad)
            if name in active:
                out[name] = loss
            logits = lg if logits is None else logits
        if "itm" in active:
            out["itm"] = itm_loss(model, batch, img_h, txt_h, logits, shard, itm_negatives)
        if "mlm" in active:
            txt_m = model.text_bottom(loc["mlm_ids"], loc["mask"])
            tokens = model.fused_top(img_h, txt_m, loc["mask"])["text_tokens"]  # (b, T, D)
            count = int((batch["mlm_labels"] != MLM_IGNORE_INDEX).sum())
            out["mlm"] = masked_lm_loss(model, tokens, loc["mlm_labels"], count)
    if "mim" in active:
        count = int(batch["patch_mask"].sum())
        out["mim"] = mim_loss(model, loc["io_images"], loc["patch_mask"], loc["io_codes"], count)
    if "tags" in active:
        count = int(batch["io_tags"].shape[0])
        out["tags"] = tags_loss(model, loc["io_images"], loc["io_tags"], count)
    if "text_mlm" in active:
        tokens = model.forward_text(loc["txt_mlm_ids"], loc["txt_mask"])["tokens"]
        count = int((batch["txt_mlm_labels"] != MLM_IGNORE_INDEX).sum())
        out["text_mlm"] = masked_lm_loss(model, tokens, loc["txt_mlm_labels"], count)
    return out


class LossModule(torch.nn.Module):
    """The model plus its objectives as one module (what DDP wraps): ``forward(batch) -> losses``."""

    def __init__(
        self,
        model: torch.nn.Module,
        losses: dict[str, float],
        shard: Shard,
        device: str | torch.device = "cpu",
        itm_negatives: str = "official",
        itc_grad: str = "exact",
    ) -> None:
        super().__init__()
        self.model, self.losses, self.shard, self.device = model, dict(losses), shard, device
        self.itm_negatives, self.itc_grad = itm_negatives, itc_grad

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return compute_losses(
            self.model, batch, self.losses, self.shard, self.device, self.itm_negatives, self.itc_grad
        )
