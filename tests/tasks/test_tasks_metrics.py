"""The task metrics against values computed by hand."""

from __future__ import annotations

import pytest
import torch

from vlmerge_core.tasks.metrics import (
    accuracy,
    confusion_matrix,
    dense_targets,
    retrieval_recalls,
    segmentation_scores,
    vqa_accuracy_from_count,
    vqa_official_soft_score,
    vqa_score,
    vqa_targets,
)


def test_vqa_soft_scores_by_hand():
    # 10 annotators: "2" x4, "3" x3, "two" x2, "4" x1
    answers = ["2"] * 4 + ["3"] * 3 + ["two"] * 2 + ["4"]
    vocab = {"2": 0, "3": 1, "two": 2, "4": 3, "yes": 4}
    labels, scores = vqa_targets(answers, vocab, scheme="accuracy")
    assert labels == [0, 1, 2, 3]
    assert scores == pytest.approx([1.0, 1.0, 2 / 3, 1 / 3])
    _, official = vqa_targets(answers, vocab, scheme="official")
    assert official == pytest.approx([1.0, 0.9, 0.6, 0.3])
    assert [vqa_official_soft_score(n) for n in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    assert vqa_accuracy_from_count(0) == 0.0 and vqa_accuracy_from_count(5) == 1.0
    # out-of-vocabulary answers are dropped
    assert vqa_targets(["maybe", "yes"], vocab) == ([4], [pytest.approx(1 / 3)])


def test_vqa_score_picks_target_of_argmax():
    targets = dense_targets([[0, 2], [1], [3]], [[1.0, 2 / 3], [1.0], [1 / 3]], num_answers=5)
    logits = torch.tensor(
        [
            [0.0, 0.0, 5.0, 0.0, 0.0],  # answer 2 -> 2/3
            [0.0, 1.0, 1.0, 0.0, 0.0],  # tie 1/2 -> first max (1) -> 1.0
            [9.0, 0.0, 0.0, 0.0, 0.0],  # answer 0 -> 0
        ]
    )
    s = vqa_score(logits, targets)
    assert s.tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert s.mean().item() == pytest.approx((2 / 3 + 1.0) / 3)


def test_recall_multi_caption_and_pessimistic_ties():
    # 3 images, 5 texts; captions of image 0: texts 0,1; image 1: texts 2,3; image 2: text 4
    t2i = torch.tensor([0, 0, 1, 1, 2])
    sim = torch.tensor(
        [
            [0.1, 0.9, 0.9, 0.0, 0.0],  # img0: best positive (0.9) tied with text 2 -> position 1
            [0.5, 0.0, 0.4, 0.0, 0.0],  # img1: best positive 0.4 behind text 0 -> position 1
            [0.0, 0.0, 0.0, 0.0, 0.7],  # img2: its text first -> position 0
        ]
    )
    r = retrieval_recalls(sim, t2i, ks=(1, 2))
    assert r["tr_r1"] == pytest.approx(100 / 3)
    assert r["tr_r2"] == pytest.approx(100.0)
    # text queries (columns): t0 -> scores (0.1, 0.5, 0) own img0 behind img1 -> pos 1
    # t1 -> (0.9, 0, 0) pos 0; t2 -> (0.9, 0.4, 0) own img1 pos 1; t3 -> (0, 0, 0) all tied -> pos 2
    # t4 -> (0, 0, 0.7) pos 0
    assert r["ir_r1"] == pytest.approx(40.0)
    assert r["ir_r2"] == pytest.approx(80.0)
    assert r["r1_sum"] == pytest.approx(40.0 + 100 / 3)
    assert r["r_mean"] == pytest.approx((100 / 3 + 100 + 40 + 80) / 4)


def test_recall_all_tied_scores_nothing():
    r = retrieval_recalls(torch.zeros(4, 4), torch.arange(4), ks=(1, 3))
    assert r["tr_r1"] == 0.0 and r["ir_r3"] == 0.0  # 3 tied negatives rank above the positive


def test_recall_rejects_bad_shape():
    with pytest.raises(ValueError, match="text_to_image"):
        retrieval_recalls(torch.zeros(2, 3), torch.tensor([0, 1]))


def test_nlvr2_accuracy_on_pairs():
    # logits of the pair classifier (false, true) for 4 statements about image pairs
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 1.0], [0.5, -0.5]])
    labels = torch.tensor([0, 1, 1, 1])  # third is a tie -> predicts 0 (first max): wrong
    assert accuracy(logits, labels) == pytest.approx(50.0)


def test_miou_with_absent_class_and_ignore():
    # 4 classes; class 3 absent from both prediction and ground truth -> left out of the mean
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 3, 0]])  # last two pixels ignored
    conf = confusion_matrix(pred, target, num_classes=4)
    assert conf.sum() == 6
    s = segmentation_scores(conf)
    # class 0: TP1 FP1 FN1 -> 1/3; class 1: TP2 FP1 FN0 -> 2/3; class 2: TP1 FP0 FN1 -> 1/2
    assert s["miou"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert s["pixel_acc"] == pytest.approx(100 * 4 / 6)


def test_miou_rejects_out_of_range_class():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.zeros(2, dtype=torch.long), torch.tensor([0, 5]), num_classes=3)
