"""The task metrics against values computed by hand, and the official semantics re-derived."""

from __future__ import annotations

import pytest
import torch

from vlmerge_core.tasks.metrics import (
    SEG_IGNORE_LABEL,
    accuracy,
    accuracy_outcomes,
    best_positive_rank,
    dense_targets,
    retrieval_recalls,
    segmentation_counts,
    segmentation_outcomes,
    vqa_min3_score,
    vqa_official_soft_score,
    vqa_score,
    vqa_targets,
)


def test_vqa_soft_scores_by_hand():
    # 10 annotators: "2" x4, "3" x3, "two" x2, "4" x1
    answers = ["2"] * 4 + ["3"] * 3 + ["two"] * 2 + ["4"]
    vocab = {"2": 0, "3": 1, "two": 2, "4": 3, "yes": 4}
    labels, scores = vqa_targets(answers, vocab)  # default: the official soft score
    assert labels == [0, 1, 2, 3]
    assert scores == pytest.approx([1.0, 0.9, 0.6, 0.3])
    _, min3 = vqa_targets(answers, vocab, scheme="min3")
    assert min3 == pytest.approx([1.0, 1.0, 2 / 3, 1 / 3])
    assert [vqa_official_soft_score(n) for n in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    assert vqa_min3_score(0) == 0.0 and vqa_min3_score(5) == 1.0
    # out-of-vocabulary answers are dropped; one annotator -> 0.3
    assert vqa_targets(["maybe", "yes"], vocab) == ([4], [pytest.approx(0.3)])
    # the micro-world's single answer scores by exact match
    assert vqa_targets(["yes"], vocab, scheme="exact") == ([4], [1.0])
    with pytest.raises(ValueError, match="unknown scheme 'accuracy'"):
        vqa_targets(answers, vocab, scheme="accuracy")


def test_vqa_two_of_ten_annotators_score_point_six():
    """``VQAScore`` over ``get_score`` targets: 2 matching annotators earn 0.6, not min(2/3, 1)."""
    answers = ["red"] * 8 + ["blue"] * 2
    vocab = {"red": 0, "blue": 1}
    labels, scores = vqa_targets(answers, vocab)
    targets = dense_targets([labels], [scores], num_answers=2)
    got = vqa_score(torch.tensor([[0.0, 1.0]]), targets)  # predicts "blue"
    assert got.item() == pytest.approx(0.6)


def test_vqa_score_picks_target_of_argmax():
    targets = dense_targets([[0, 2], [1], [3]], [[1.0, 0.6], [1.0], [0.3]], num_answers=5)
    logits = torch.tensor(
        [
            [0.0, 0.0, 5.0, 0.0, 0.0],  # answer 2 -> 0.6
            [0.0, 1.0, 1.0, 0.0, 0.0],  # tie 1/2 -> first max (1) -> 1.0
            [9.0, 0.0, 0.0, 0.0, 0.0],  # answer 0 -> 0
        ]
    )
    s = vqa_score(logits, targets)
    assert s.tolist() == pytest.approx([0.6, 1.0, 0.0])


def test_recall_multi_caption_and_index_ties():
    # 3 images, 5 texts; captions of image 0: texts 0,1; image 1: texts 2,3; image 2: text 4
    t2i = torch.tensor([0, 0, 1, 1, 2])
    sim = torch.tensor(
        [
            [0.1, 0.9, 0.9, 0.0, 0.0],  # img0: text 1 (own, 0.9) tied with text 2, lower index -> first
            [0.5, 0.0, 0.4, 0.0, 0.0],  # img1: best positive 0.4 behind text 0 -> position 1
            [0.0, 0.0, 0.0, 0.0, 0.7],  # img2: its text first -> position 0
        ]
    )
    r = retrieval_recalls(sim, t2i, ks=(1, 2))
    assert r["tr_r1"] == pytest.approx(200 / 3) and r["tr_r1_pessimistic"] == pytest.approx(100 / 3)
    assert r["tr_r2"] == pytest.approx(100.0)
    # text queries (columns): t0 (0.1, 0.5, 0) own img0 behind img1 -> 1; t1 (0.9, 0, 0) -> 0;
    # t2 (0.9, 0.4, 0) own img1 -> 1; t3 (0, 0, 0) all tied: own img1 after img0 by index -> 1
    # (pessimistic: 2); t4 (0, 0, 0.7) -> 0
    assert r["ir_r1"] == pytest.approx(40.0) and r["ir_r1_pessimistic"] == pytest.approx(40.0)
    assert r["ir_r2"] == pytest.approx(100.0) and r["ir_r2_pessimistic"] == pytest.approx(80.0)
    assert r["r1_sum"] == pytest.approx(40.0 + 200 / 3)
    assert r["r_mean"] == pytest.approx((200 / 3 + 100 + 40 + 100) / 4)
    assert r["r_mean_pessimistic"] == pytest.approx((100 / 3 + 100 + 40 + 80) / 4)


def test_recall_all_tied_ranks_by_index():
    """``compute_irtr_recall`` ranks by ``topk``: with every score tied, query i finds its item i at
    position i (ties by index). The old pessimistic count scored 0 everywhere."""
    r = retrieval_recalls(torch.zeros(4, 4), torch.arange(4), ks=(1, 3))
    assert r["tr_r1"] == pytest.approx(25.0) and r["ir_r3"] == pytest.approx(75.0)
    assert r["tr_r1_pessimistic"] == 0.0 and r["ir_r3_pessimistic"] == 0.0


def _stable_topk_hits(scores: torch.Tensor, positive: torch.Tensor, k: int) -> torch.Tensor:
    """Official semantics re-derived: rank items by score (descending), ties by index (a stable sort),
    and hit when any of the top k is a right item (``(ids == topk_ids).max()``)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return positive.gather(1, order).any(dim=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_index_ties_match_a_stable_topk(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (30, 12), generator=g).float()  # many ties
    positive = torch.rand(30, 12, generator=g) < 0.2
    positive[0] = False  # a query with no right item never hits
    rank = best_positive_rank(scores, positive, ties="index")
    for k in (1, 3, 5, 12):
        assert torch.equal(rank < k, _stable_topk_hits(scores, positive, k)), k


def test_recall_rejects_bad_shape():
    with pytest.raises(ValueError, match="text_to_image"):
        retrieval_recalls(torch.zeros(2, 3), torch.tensor([0, 1]))


def test_nlvr2_accuracy_on_pairs():
    # logits of the pair classifier (false, true) for 4 statements about image pairs
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 1.0], [0.5, -0.5]])
    labels = torch.tensor([0, 1, 1, 1])  # third is a tie -> predicts 0 (first max): wrong
    assert accuracy(logits, labels) == pytest.approx(50.0)
    assert accuracy_outcomes(logits, labels).metrics() == {"accuracy": pytest.approx(50.0)}


def test_miou_with_absent_class_and_ignore():
    # 4 classes; class 3 absent from the ground truth, predicted only on ignored pixels -> left out
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, SEG_IGNORE_LABEL, SEG_IGNORE_LABEL]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 0, 3, 0]]])  # last two pixels ignored
    inter, union = segmentation_counts(pred, target, num_classes=4)
    assert inter.tolist() == [[1, 2, 1, 0]] and union.tolist() == [[3, 3, 2, 0]]
    s = segmentation_outcomes(inter, union).metrics()
    # class 0: TP1 FP1 FN1 -> 1/3; class 1: TP2 FP1 FN0 -> 2/3; class 2: TP1 FP0 FN1 -> 1/2
    assert s["miou"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert s["pixel_acc"] == pytest.approx(100 * 4 / 6)


def test_miou_sums_counts_over_images():
    """IoU_c is total intersection / total union over the split (not a mean of per-image IoUs)."""
    target = torch.tensor([[[0, 0], [0, 0]], [[1, 1], [1, 0]]])
    pred = torch.tensor([[[0, 0], [0, 1]], [[1, 1], [1, 1]]])
    inter, union = segmentation_counts(pred, target, num_classes=2)
    s = segmentation_outcomes(inter, union).metrics()
    # class 0: I = 3 + 0, U = 4 + 1; class 1: I = 0 + 3, U = 1 + 4
    assert s["miou"] == pytest.approx(100 * (3 / 5 + 3 / 5) / 2)
    assert s["pixel_acc"] == pytest.approx(100 * 6 / 8)


def test_miou_rejects_out_of_range_class():
    with pytest.raises(ValueError, match="outside"):
        segmentation_counts(torch.zeros(1, 2, dtype=torch.long), torch.tensor([[0, 5]]), num_classes=3)
