"""The one definition of experts, parameter names and the task -> experts rule (vlmerge_core.model.experts)."""

from __future__ import annotations

import pytest

from vlmerge_core.model.experts import (
    EXPERT_KEY,
    EXPERTS,
    TASK_GROUPS,
    TASKS,
    block_experts,
    experts_for_block,
    merge_group_of,
    merge_groups,
    parse_experts,
    split_expert_key,
    strip_expert,
)


def test_names_and_pattern():
    assert EXPERTS == ("v", "l", "vl")
    assert EXPERT_KEY.match("blocks.3.mlp.vl.fc1.weight").groups() == ("3", "mlp", "vl", "fc1.weight")
    assert split_expert_key("blocks.3.mlp.vl.fc1.weight") == ("blocks.3.mlp.fc1.weight", 3, "vl")
    assert (
        split_expert_key("blocks.3.gamma_1") is None and split_expert_key("blocks.3.mlp.fc1.weight") is None
    )
    assert strip_expert("blocks.3.attn.l.proj.bias") == "blocks.3.attn.proj.bias"
    assert experts_for_block(0, 1) == ("v", "l") and experts_for_block(1, 1) == EXPERTS
    assert parse_experts("v, vl") == ["v", "vl"] and parse_experts("") is None
    with pytest.raises(ValueError, match="--experts: unknown expert"):
        parse_experts("v,x")


def test_official_rule():
    """vilt_module.py: merge_weights/sum_task_vectors follow only_activate_used_experts, regmean the task."""
    fusion = {"vl_start": 1}
    for task in TASKS:
        assert block_experts(0, task=task, **fusion) == ("v", "l")
        assert block_experts(1, task=task, **fusion) == EXPERTS  # default: the flag is off
    used = {"vl_start": 1, "only_used_experts": True}
    assert block_experts(1, task="coco", **used) == ("v", "l")
    assert block_experts(1, task="vqa", **used) == ("vl",) == block_experts(1, task="nlvr2", **used)
    assert block_experts(1, task="imagenet", **used) == EXPERTS
    reg = {"vl_start": 1, "task_dependent": True}
    assert block_experts(1, task="flickr", **reg) == ("v", "l") and block_experts(1, task="vqa", **reg) == (
        "vl",
    )
    assert block_experts(1, task="nlvr2", **reg) == EXPERTS  # official regmean: no nlvr2 branch
    assert block_experts(0, task="ade20k", vl_start=1, unimodal_paths=True) == ("v",)
    assert block_experts(1, task="text", vl_start=1, unimodal_paths=True) == ("l",)


def test_task_groups():
    assert merge_groups() == {"all": TASKS}
    assert merge_groups(task_dependent=True) == {
        "vqa": ("vqa",),
        "retrieval": ("coco", "flickr"),
        "other": ("nlvr2", "imagenet", "ade20k", "text"),
    }
    assert merge_groups(only_used_experts=True) == {
        "fusion": ("vqa", "nlvr2"),
        "retrieval": ("coco", "flickr"),
        "other": ("imagenet", "ade20k", "text"),
    }
    assert merge_groups(task_dependent=True, tasks=("text", "vqa")) == {"other": ("text",), "vqa": ("vqa",)}
    assert set(merge_groups(unimodal_paths=True)) == {"other", "image", "text"}
    for kw in ({}, {"task_dependent": True}, {"only_used_experts": True}, {"unimodal_paths": True}):
        for group, tasks in merge_groups(**kw).items():
            assert group in TASK_GROUPS
            assert all(merge_group_of(t, **kw) == group for t in tasks)
    assert merge_group_of("coco") == "all" and merge_group_of(None, task_dependent=True) == "other"
    with pytest.raises(ValueError, match="unknown task"):
        merge_groups(tasks=("coco", "mnist"))
