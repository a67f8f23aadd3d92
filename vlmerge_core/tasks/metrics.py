"""The downstream metrics of the paper, as pure tensor functions over per-example outcomes.

Every task scores its test set as :class:`Outcomes`: per resampling unit (a question, a pair, an
image) the numerators and denominators its metrics are ratios of. The metrics are the ratios of the
column sums; :func:`~vlmerge_core.tasks.bootstrap.bootstrap_ci` resamples the units to get their
confidence intervals without re-running the model.

- VQA score (Antol et al. 2015; Goyal et al. 2017) as the official ``VQAScore``: the prediction
  earns the soft target of the arg-max answer, ``write_vqa.get_score``'s 0, .3, .6, .9, 1 for 0, 1,
  2, 3, >= 4 annotators. ``min(#humans / 3, 1)`` stays available as the ``"min3"`` scheme.
- Retrieval recall@K both directions as ``compute_irtr_recall`` of the official code (Karpathy &
  Fei-Fei 2015 protocol): top-K ranking with ties broken by index (lower index first, ``topk``'s
  order); the pessimistic count (a tied wrong item ranks above the right one) is kept as extra
  ``*_pessimistic`` fields.
- Accuracy (NLVR2, ImageNet top-1, text classification).
- Semantic segmentation mIoU and pixel accuracy (Everingham et al. 2010; ADE20k, Zhou et al. 2017)
  from per-image intersection and union counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from vlmerge_core.data.real import SEG_IGNORE_LABEL  # the one definition, beside the ADE20k reader

Finish = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


@dataclasses.dataclass
class Outcomes:
    """Per-unit outcomes of one evaluation.

    Attributes:
        num: ``[N, M]`` float64 numerators per unit (``N`` resampling units, ``M`` columns).
        den: ``[N, M]`` float64 denominators per unit.
        finish: maps column sums ``[B, M]`` (numerators, denominators) of ``B`` (re)samples to
            ``{metric: [B]}``; the metrics of the evaluation are ``finish`` of the plain sums.
    """

    num: torch.Tensor
    den: torch.Tensor
    finish: Finish

    def __post_init__(self) -> None:
        if self.num.shape != self.den.shape or self.num.ndim != 2:
            raise ValueError(
                f"outcomes: num {tuple(self.num.shape)} and den {tuple(self.den.shape)} must be equal [N, M]"
            )

    def metrics(self) -> dict[str, float]:
        """The metrics of the whole evaluation set."""
        out = self.finish(self.num.sum(0, keepdim=True), self.den.sum(0, keepdim=True))
        return {k: float(v[0]) for k, v in out.items()}


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``100 * num / den``, NaN where ``den`` is 0."""
    return torch.where(den > 0, 100.0 * num / den.clamp(min=1e-300), torch.full_like(num, float("nan")))


def mean_outcomes(values: torch.Tensor, name: str) -> Outcomes:
    """Outcomes of a per-example score in [0, 1] whose metric (percent) is its mean."""
    v = values.detach().double().reshape(-1, 1)

    def finish(num: torch.Tensor, den: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: _ratio(num[:, 0], den[:, 0])}

    return Outcomes(v, torch.ones_like(v), finish)


# ------------------------------------------------------------------------------------------------ VQA
def vqa_official_soft_score(count: int) -> float:
    """The soft target of the official code (``write_vqa.get_score``): 0/.3/.6/.9/1 for 0/1/2/3/>=4."""
    return (0.0, 0.3, 0.6, 0.9)[count] if count < 4 else 1.0


def vqa_min3_score(count: int) -> float:
    """``min(count / 3, 1)``: the VQA accuracy formula of Antol et al. 2015 (not the official code's)."""
    return min(count / 3.0, 1.0)


_VQA_SCHEMES: dict[str, Callable[[int], float]] = {
    "official": vqa_official_soft_score,
    "min3": vqa_min3_score,
    "exact": lambda n: 1.0,
}


def vqa_targets(
    answers: Sequence[str], ans2label: dict[str, int], scheme: str = "official"
) -> tuple[list[int], list[float]]:
    """Labels and scores of one question from its human answers (answers outside the vocabulary dropped).

    Args:
        answers: the answer strings of the annotators (10 in VQAv2; one in the micro-world).
        ans2label: the answer vocabulary.
        scheme: ``"official"`` (the soft score table of the official code: the BCE training target
            and, through :func:`vqa_score`, the metric), ``"min3"`` (``min(n/3, 1)``) or ``"exact"``
            (1 for every answer given: a single ground-truth answer, as in the micro-world, scores
            by exact match; equal to ``"official"`` only for n >= 4).
    """
    if scheme not in _VQA_SCHEMES:
        raise ValueError(f"vqa_targets: unknown scheme {scheme!r}; expected one of {sorted(_VQA_SCHEMES)}")
    score_fn = _VQA_SCHEMES[scheme]
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
        targets: ``[B, A]`` soft score of every answer for every question.

    Returns:
        ``[B]`` scores in [0, 1]; their mean is the VQA score.
    """
    pred = logits.argmax(dim=1)  # first maximum on ties: deterministic
    return targets.gather(1, pred[:, None]).squeeze(1)


# ------------------------------------------------------------------------------------------ retrieval
def best_positive_rank(scores: torch.Tensor, positive: torch.Tensor, ties: str = "index") -> torch.Tensor:
    """0-based rank of the best-ranked positive item of every query row (``Q`` if it has none).

    Args:
        scores: ``[Q, N]`` query-item scores.
        positive: ``[Q, N]`` bool, the right items of each query.
        ties: ``"index"``: items sorted by score, then by index (``topk`` of the official code), so
            an item tied with the best positive ranks above it only when its index is lower;
            ``"pessimistic"``: every wrong item tied with the best positive ranks above it.
    """
    Q, N = scores.shape
    neg_inf = torch.finfo(scores.dtype).min
    best = scores.masked_fill(~positive, neg_inf).max(dim=1).values  # (Q,) score of the best positive
    has_pos = positive.any(dim=1)
    if ties == "pessimistic":
        rank = ((scores >= best[:, None]) & ~positive).sum(dim=1)
    elif ties == "index":
        at_best = positive & (scores == best[:, None])  # (Q, N) positives at the best score
        first = at_best.int().argmax(dim=1)  # (Q,) lowest index among them (argmax: first maximum)
        before = torch.arange(N)[None, :] < first[:, None]
        rank = (scores > best[:, None]).sum(dim=1) + ((scores == best[:, None]) & before).sum(dim=1)
    else:
        raise ValueError(f"best_positive_rank: unknown ties {ties!r}; expected 'index' or 'pessimistic'")
    return torch.where(has_pos, rank, torch.full_like(rank, N))


def retrieval_outcomes(
    sim: torch.Tensor, text_to_image: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> Outcomes:
    """Per-image outcomes of image-text retrieval; the resampling unit is an image with its captions.

    Text retrieval (``tr_r{K}``, image query): hit when any of the image's captions is in its top K
    texts. Image retrieval (``ir_r{K}``, text query): hit when the caption's own image is in its
    top K images. Both as ``compute_irtr_recall`` of the official code, ties by index; the same with
    pessimistic ties as ``{ir,tr}_r{K}_pessimistic``. Metrics (percent): the six recalls,
    ``ir_mean``, ``tr_mean``, ``r_mean`` (mean of the six, the headline), ``r1_sum`` = IR@1 + TR@1
    (the paper's selection criterion) and ``r_mean_pessimistic``.

    Args:
        sim: ``[I, T]`` image-text similarities.
        text_to_image: ``[T]`` index of the image of every text.
        ks: the K of recall@K.
    """
    n_img, n_txt = sim.shape
    if text_to_image.shape != (n_txt,):
        raise ValueError(f"text_to_image has shape {tuple(text_to_image.shape)}, expected ({n_txt},)")
    ks = tuple(ks)
    sim = sim.float()
    positive = text_to_image[None, :] == torch.arange(n_img)[:, None]  # (I, T)
    caps = positive.sum(1).double()  # (I,) captions per image
    cols_num, cols_den, names = [], [], []
    for suffix, ties in (("", "index"), ("_pessimistic", "pessimistic")):
        tr_rank = best_positive_rank(sim, positive, ties)  # (I,)
        ir_rank = best_positive_rank(sim.t(), positive.t(), ties)  # (T,)
        for k in ks:
            cols_num.append((tr_rank < k).double())
            cols_den.append(torch.ones(n_img, dtype=torch.float64))
            names.append(f"tr_r{k}{suffix}")
            ir_hit = torch.zeros(n_img, dtype=torch.float64).index_add_(
                0, text_to_image.long(), (ir_rank < k).double()
            )  # (I,) hits of the captions of each image
            cols_num.append(ir_hit)
            cols_den.append(caps)
            names.append(f"ir_r{k}{suffix}")
    col = {n: i for i, n in enumerate(names)}

    def finish(num: torch.Tensor, den: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {n: _ratio(num[:, i], den[:, i]) for n, i in col.items()}
        for suffix in ("", "_pessimistic"):
            tr = torch.stack([out[f"tr_r{k}{suffix}"] for k in ks]).mean(0)
            ir = torch.stack([out[f"ir_r{k}{suffix}"] for k in ks]).mean(0)
            out[f"r_mean{suffix}"] = (tr + ir) / 2
            if not suffix:
                out["tr_mean"], out["ir_mean"] = tr, ir
                out["r1_sum"] = out[f"ir_r{ks[0]}"] + out[f"tr_r{ks[0]}"]
        return out

    return Outcomes(torch.stack(cols_num, 1), torch.stack(cols_den, 1), finish)


def retrieval_recalls(
    sim: torch.Tensor, text_to_image: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K of both directions (percent) as ``compute_irtr_recall``; see :func:`retrieval_outcomes`."""
    return retrieval_outcomes(sim, text_to_image, ks).metrics()


# ------------------------------------------------------------------------------------ classification
def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent (NLVR2, ImageNet, text classification); first maximum on ties."""
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set")
    return 100.0 * (logits.argmax(dim=-1) == labels).float().mean().item()


def accuracy_outcomes(logits: torch.Tensor, labels: torch.Tensor, name: str = "accuracy") -> Outcomes:
    """Per-example correctness (first maximum on ties); the metric ``name`` is top-1 accuracy (percent)."""
    return accuracy_from_predictions(logits.argmax(dim=-1), labels, name)


def accuracy_from_predictions(pred: torch.Tensor, labels: torch.Tensor, name: str = "accuracy") -> Outcomes:
    """:func:`accuracy_outcomes` from the predicted classes ``[N]`` (what evaluation ranks gather)."""
    if len(labels) == 0:
        raise ValueError(f"{name}: accuracy of an empty set")
    return mean_outcomes((pred == labels).double(), name)


# -------------------------------------------------------------------------------------- segmentation
def segmentation_counts(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_label: int = SEG_IGNORE_LABEL
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image ``[B, C]`` intersection and union pixel counts of ``pred`` vs ``target`` (``[B, H, W]``).

    Intersection_c = pixels of class c in both; union_c = pixels of class c in either; pixels
    labelled ``ignore_label`` are left out of both.
    """
    B, C = pred.shape[0], num_classes
    t, p = target.reshape(B, -1).long(), pred.reshape(B, -1).long()
    valid = t != ignore_label
    tv = t[valid]
    if tv.numel() and (int(tv.max()) >= C or int(tv.min()) < 0):
        raise ValueError(f"segmentation target has class {int(tv.max())} outside 0..{C - 1}")
    row = torch.arange(B)[:, None].expand_as(t)[valid] * C  # (V,) image offset of each valid pixel

    def count(cls: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return torch.bincount(row[keep] + cls[keep], minlength=B * C).reshape(B, C)

    ones = torch.ones_like(tv, dtype=torch.bool)
    pv = p[valid]
    gt, pr = count(tv, ones), count(pv, ones)
    inter = count(tv, tv == pv)
    return inter, gt + pr - inter


def segmentation_outcomes(inter: torch.Tensor, union: torch.Tensor) -> Outcomes:
    """Outcomes from per-image ``[N, C]`` intersection and union counts; the unit is an image.

    mIoU (percent) = mean over classes of IoU_c = sum intersection / sum union, a class with an empty
    union left out (mmsegmentation's ``nanmean``; 0 when no class is present); pixel accuracy
    (``pixel_acc``) = correct pixels / labelled pixels, where correct = sum_c intersection_c and
    labelled = sum_c (union_c + intersection_c) / 2 (each labelled pixel has one true and one
    predicted class).
    """
    C = inter.shape[1]
    correct = inter.sum(1, keepdim=True)
    labelled = (union + inter).sum(1, keepdim=True) // 2  # sum_c (gt_c + pred_c) / 2 = labelled pixels
    num = torch.cat([inter, correct], 1).double()
    den = torch.cat([union, labelled], 1).double()

    def finish(n: torch.Tensor, d: torch.Tensor) -> dict[str, torch.Tensor]:
        iou = _ratio(n[:, :C], d[:, :C])  # (B, C), NaN for classes absent from truth and prediction
        miou = torch.nan_to_num(iou.nanmean(1), nan=0.0)
        return {"miou": miou, "pixel_acc": torch.nan_to_num(_ratio(n[:, C], d[:, C]), nan=0.0)}

    return Outcomes(num, den, finish)
