"""The downstream metrics of the paper, as pure tensor functions.

- VQA score (Antol et al. 2015; Goyal et al. 2017): the prediction earns ``min(#humans who gave
  it / 3, 1)``; the official vl-merging code trains and scores with the soft score table of
  ``write_vqa.get_score`` (0, 0.3, 0.6, 0.9, 1.0 for 0, 1, 2, 3, >= 4 humans), both are here.
- Retrieval recall@K both directions (Karpathy & Fei-Fei 2015 protocol, ``compute_irtr_recall`` of
  the official code), with several captions per image and pessimistic ties.
- Accuracy (NLVR2, ImageNet top-1, text classification).
- Semantic segmentation mIoU and pixel accuracy (Everingham et al. 2010; ADE20k, Zhou et al. 2017),
  accumulated over a confusion matrix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

# ------------------------------------------------------------------------------------------------ VQA


def vqa_official_soft_score(count: int) -> float:
    """The soft target of the official code (``write_vqa.get_score``): 0/.3/.6/.9/1 for 0/1/2/3/>=4."""
    return (0.0, 0.3, 0.6, 0.9)[count] if count < 4 else 1.0


def vqa_accuracy_from_count(count: int) -> float:
    """The VQA accuracy of one answer given by ``count`` of the annotators: ``min(count / 3, 1)``."""
    return min(count / 3.0, 1.0)


def vqa_targets(
    answers: Sequence[str], ans2label: dict[str, int], scheme: str = "accuracy"
) -> tuple[list[int], list[float]]:
    """Labels and scores of one question from its human answers (answers outside the vocabulary dropped).

    Args:
        answers: the answer strings of the annotators (10 in VQAv2; one in the micro-world).
        ans2label: the answer vocabulary.
        scheme: ``"accuracy"`` (``min(n/3, 1)``, the metric), ``"official"`` (the soft score table of
            the official code, used as the BCE training target) or ``"exact"`` (1 for every answer
            given: a single ground-truth answer, as in the micro-world, scores by exact match).
    """
    score_fn = {
        "accuracy": vqa_accuracy_from_count,
        "official": vqa_official_soft_score,
        "exact": lambda n: 1.0,
    }[scheme]
    counts: dict[str, int] = {}
    for a in answers:
        counts[a] = counts.get(a, 0) + 1
    labels, scores = [], []
    for a, n in counts.items():  # insertion order: deterministic
        if a in ans2label:
            labels.append(ans2label[a])
            scores.append(score_fn(n))
    return labels, scores


def dense_targets(
    labels: Sequence[Sequence[int]], scores: Sequence[Sequence[float]], num_answers: int
) -> torch.Tensor:
    """Dense ``[B, A]`` soft-target matrix from per-question label and score lists."""
    out = torch.zeros(len(labels), num_answers)
    for i, (ls, ss) in enumerate(zip(labels, scores)):
        for lab, s in zip(ls, ss):
            out[i, lab] = s
    return out


def vqa_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-question VQA score: the target score of the arg-max answer (``VQAScore`` of the official code).

    Args:
        logits: ``[B, A]`` answer logits.
        targets: ``[B, A]`` score of every answer for every question.

    Returns:
        ``[B]`` scores in [0, 1]; their mean is the VQA score.
    """
    pred = logits.argmax(dim=1)  # first maximum on ties: deterministic
    return targets.gather(1, pred[:, None]).squeeze(1)


# ------------------------------------------------------------------------------------------ retrieval


def _hits(scores: torch.Tensor, positive: torch.Tensor, ks: Iterable[int]) -> dict[int, torch.Tensor]:
    """For each query row, whether any positive is in the top K under pessimistic ties.

    The best positive of a row (its highest score ``s*``) is at position ``#{negatives with score >= s*}``:
    a negative tied with a positive is ranked above it, so ties count against the model.
    """
    neg_inf = torch.finfo(scores.dtype).min
    best_pos = scores.masked_fill(~positive, neg_inf).max(dim=1).values  # (Q,)
    rank = ((scores >= best_pos[:, None]) & ~positive).sum(dim=1)  # (Q,) 0-based position of best positive
    has_pos = positive.any(dim=1)
    return {k: (rank < k) & has_pos for k in ks}


def retrieval_recalls(
    sim: torch.Tensor, text_to_image: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K of text retrieval (image query, ``tr_r{K}``) and image retrieval (text query, ``ir_r{K}``).

    An image query is correct when any of its captions is in the top K texts; a text query is
    correct when its own image is in the top K images (as ``compute_irtr_recall`` of the official
    code). Ties are pessimistic: a wrong item with the same score as the right one ranks above it.
    Values are percentages, with ``ir_mean``, ``tr_mean`` and ``r_mean`` (mean of all six) and
    ``r1_sum`` = IR@1 + TR@1 (the paper's model-selection criterion).

    Args:
        sim: ``[I, T]`` image-text similarities.
        text_to_image: ``[T]`` index of the image of every text.
    """
    n_img, n_txt = sim.shape
    if text_to_image.shape != (n_txt,):
        raise ValueError(f"text_to_image has shape {tuple(text_to_image.shape)}, expected ({n_txt},)")
    sim = sim.float()
    positive = text_to_image[None, :] == torch.arange(n_img)[:, None]  # (I, T)
    tr = _hits(sim, positive, ks)  # image queries
    ir = _hits(sim.t(), positive.t(), ks)  # text queries
    out: dict[str, float] = {}
    for k in ks:
        out[f"tr_r{k}"] = 100.0 * tr[k].float().mean().item()
        out[f"ir_r{k}"] = 100.0 * ir[k].float().mean().item()
    out["tr_mean"] = sum(out[f"tr_r{k}"] for k in ks) / len(ks)
    out["ir_mean"] = sum(out[f"ir_r{k}"] for k in ks) / len(ks)
    out["r_mean"] = (out["tr_mean"] + out["ir_mean"]) / 2
    out["r1_sum"] = out[f"ir_r{ks[0]}"] + out[f"tr_r{ks[0]}"]
    return out


# ------------------------------------------------------------------------------------ classification


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent (NLVR2, ImageNet, text classification); first maximum on ties."""
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set")
    return 100.0 * (logits.argmax(dim=-1) == labels).float().mean().item()


# -------------------------------------------------------------------------------------- segmentation


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """``[C, C]`` int64 confusion matrix (rows: ground truth, columns: prediction), ignored pixels dropped."""
    valid = target != ignore_index
    t, p = target[valid].long(), pred[valid].long()
    if t.numel() and (int(t.max()) >= num_classes or int(t.min()) < 0):
        raise ValueError(f"segmentation target has class {int(t.max())} outside 0..{num_classes - 1}")
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def segmentation_scores(conf: torch.Tensor) -> dict[str, float]:
    """mIoU and pixel accuracy (percent) from a confusion matrix.

    IoU_c = TP / (TP + FP + FN). A class absent from both the ground truth and the predictions
    (TP + FP + FN = 0) is left out of the mean (as mmsegmentation's ``nanmean``).
    """
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    iou = tp[present] / union[present]
    total = conf.sum()
    return {
        "miou": 100.0 * iou.mean().item() if present.any() else 0.0,
        "pixel_acc": 100.0 * (tp.sum() / total).item() if total > 0 else 0.0,
    }
