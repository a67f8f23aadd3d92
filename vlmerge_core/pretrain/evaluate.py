"""Zero-shot image-text retrieval from the ITC heads (VLMo's dual-encoder retrieval).

Images run the ``v`` path, captions the ``l`` path (or both ``vl`` on top with ``head="itc_vl"``);
features are projected by the ITC heads, L2-normalised, and ranked by cosine similarity.
Image retrieval (IR, caption -> image) and text retrieval (TR, image -> any of its captions),
recall at 1/5/10, with the chance level of each for comparison.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlmerge_core.data.loaders import encode_text, image_to_tensor
from vlmerge_core.data.stats import random_recall
from vlmerge_core.tasks.metrics import retrieval_recalls as recalls

__all__ = ["evaluate_retrieval", "retrieval_recalls"]


def retrieval_recalls(
    sim: torch.Tensor, text_image: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K of both directions from image-text similarities.

    Args:
        sim: [N_images, N_texts] similarities.
        text_image: Long [N_texts], the image of each text.

    Returns:
        ``ir_r{k}``, ``tr_r{k}`` (percent), ``rsum``, and ``chance_ir_r{k}``/``chance_tr_r{k}``.
    """
    # the one recall@K (official ties); imported here: vlmerge_core.tasks imports this package

    n_img = sim.shape[0]
    full = recalls(sim, text_image, ks)
    out = {f"{d}_r{k}": full[f"{d}_r{k}"] for d in ("ir", "tr") for k in ks}
    caps = torch.bincount(text_image, minlength=n_img).tolist()  # captions per image
    for k in ks:
        chance = random_recall(caps, k)
        out[f"chance_ir_r{k}"] = 100.0 * chance["t2i"]
        out[f"chance_tr_r{k}"] = 100.0 * chance["i2t"]
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("ir", "tr") for k in ks)
    return out


@torch.no_grad()
def evaluate_retrieval(
    model,
    world,
    split: str = "val",
    style: str = "coco",
    head: str = "itc",
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Zero-shot retrieval of ``split`` with the ITC head ``"itc"`` (v/l path) or ``"itc_vl"``.

    Returns:
        :func:`retrieval_recalls` plus ``n_images`` and ``n_texts``.
    """
    if head not in ("itc", "itc_vl"):
        raise ValueError(f"evaluate_retrieval: head must be 'itc' or 'itc_vl', got {head!r}")
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    vl = head == "itc_vl"
    p_img = model.heads.itc_vl_image if vl else model.heads.itc_image
    p_txt = model.heads.itc_vl_text if vl else model.heads.itc_text
    styles = ("coco", "flickr") if style == "both" else (style,)
    caps = [per for s in styles for per in world.captions(split, s)]
    n_img = len(world.images(split))
    text_image = torch.tensor([i % n_img for i, per in enumerate(caps) for _ in per])
    ids, mask = encode_text(world.tokenizer(), [t for per in caps for t in per], model.cfg.max_text_len)
    images = image_to_tensor(world.images(split)).to(model.dtype)
    fi = torch.cat(
        [
            F.normalize(
                p_img(
                    model.forward_image(images[i : i + batch_size].to(device), top="vl" if vl else "v")["cls"]
                ),
                dim=-1,
            ).float()
            for i in range(0, len(images), batch_size)
        ]
    )
    ft = torch.cat(
        [
            F.normalize(
                p_txt(
                    model.forward_text(
                        ids[i : i + batch_size].to(device),
                        mask[i : i + batch_size].to(device),
                        top="vl" if vl else "l",
                    )["cls"]
                ),
                dim=-1,
            ).float()
            for i in range(0, len(ids), batch_size)
        ]
    )
    model.train(was_training)
    out = retrieval_recalls((fi @ ft.T).cpu(), text_image)
    out.update(n_images=n_img, n_texts=len(ids))
    return out
