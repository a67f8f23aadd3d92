"""The experts of a modality-specific (MS) model: names, parameter names, and which ones a task uses.

The one definition of these concepts; every other module imports them from here.

- Experts ``v`` (image), ``l`` (text) and ``vl`` (fusion, in blocks ``>= vl_start`` only), of the
  components ``attn``, ``mlp``, ``norm1``, ``norm2`` (Sung et al. 2023, §3; VLMo's multiway blocks).
- An expert's parameter is named ``blocks.{i}.{component}.{expert}.{rest}`` (:data:`EXPERT_KEY`);
  its modality-agnostic (MA) name is the same without the expert level (:func:`strip_expert`).
- The task -> experts rule of the official merge code (``vilt_module.py``, PAPER.md §4):
  below ``vl_start`` every merge uses ``{v, l}``. From ``vl_start``, ``merge_weights`` and
  ``sum_task_vectors`` use all three experts unless ``only_activate_used_experts`` (default False)
  is on; then retrieval -> ``{v, l}``, VQA and NLVR2 -> ``{vl}`` (other tasks: the official code has
  no branch; PAPER.md reads it as all three). The official ``regmean`` applies its own rule whatever
  the flag: retrieval -> ``{v, l}``, VQA -> ``{vl}``, anything else (NLVR2 included) -> all three.
  ``unimodal_paths`` (ours, off by default) merges image-only tasks from ``{v}`` and text-only tasks
  from ``{l}`` in every block.
- A *task group* is the set of tasks evaluated with one merged checkpoint: a task-independent merge
  has the single group ``"all"``; a task-dependent one (RegMean always; every method when
  ``only_used_experts`` or ``unimodal_paths`` is on) has one group per distinct expert choice.
"""

from __future__ import annotations

import re

__all__ = [
    "COMPONENTS",
    "EXPERTS",
    "EXPERT_KEY",
    "FUSION_TASKS",
    "IMAGE_TASKS",
    "RETRIEVAL_TASKS",
    "TASKS",
    "TASK_GROUPS",
    "TEXT_TASKS",
    "block_experts",
    "experts_for_block",
    "merge_group_of",
    "merge_groups",
    "parse_experts",
    "split_expert_key",
    "strip_expert",
]

EXPERTS = ("v", "l", "vl")  # image, text, fusion; this order is the merge order of the official code
COMPONENTS = ("attn", "mlp", "norm1", "norm2")  # components that can be modality-specific
# blocks.{i}.{component}.{expert}.{rest}
EXPERT_KEY = re.compile(r"^blocks\.(\d+)\.(attn|mlp|norm1|norm2)\.(v|l|vl)\.(.+)$")

RETRIEVAL_TASKS = ("coco", "flickr")  # image-text retrieval (official loss ``irtr``)
FUSION_TASKS = ("vqa", "nlvr2")  # tasks that run the fused (vl) path
IMAGE_TASKS = ("imagenet", "ade20k")  # image-only tasks
TEXT_TASKS = ("text",)  # text-only tasks
TASKS = ("vqa", "coco", "flickr", "nlvr2", "imagenet", "ade20k", "text")  # every downstream task

# name of a merge's task group -> what it holds (see merge_groups)
TASK_GROUPS: dict[str, str] = {
    "all": "a task-independent merge: one checkpoint for every task",
    "retrieval": "tasks merged from {v, l} in the fusion blocks (coco, flickr)",
    "fusion": "tasks merged from {vl} alone in the fusion blocks (vqa, nlvr2 with only_used_experts)",
    "vqa": "vqa, merged from {vl} alone in the fusion blocks (the official RegMean rule)",
    "image": "image-only tasks merged from {v} (unimodal_paths)",
    "text": "text-only tasks merged from {l} (unimodal_paths)",
    "other": "tasks merged from every expert present",
}
_NAMED_SETS = {RETRIEVAL_TASKS: "retrieval", FUSION_TASKS: "fusion", IMAGE_TASKS: "image", TEXT_TASKS: "text"}


def split_expert_key(key: str) -> tuple[str, int, str] | None:
    """``blocks.3.mlp.vl.fc1.weight`` -> (``blocks.3.mlp.fc1.weight``, 3, ``vl``); None if not per expert."""
    m = EXPERT_KEY.match(key)
    if m is None:
        return None
    block, comp, expert, rest = m.groups()
    return f"blocks.{block}.{comp}.{rest}", int(block), expert


def strip_expert(name: str) -> str:
    """The MA name of an MS parameter name (``blocks.3.attn.vl.proj.weight`` -> ``blocks.3.attn.proj.weight``)."""
    parsed = split_expert_key(name)
    return parsed[0] if parsed else name


def parse_experts(text: str | None, what: str = "--experts") -> list[str] | None:
    """``"v,l"`` -> ``["v", "l"]``; empty -> None; an unknown name raises ValueError naming ``what``."""
    if not text:
        return None
    out = [e.strip() for e in text.split(",") if e.strip()]
    bad = [e for e in out if e not in EXPERTS]
    if bad:
        raise ValueError(f"{what}: unknown expert(s) {bad}; use {', '.join(EXPERTS)}")
    return out


def experts_for_block(index: int, vl_start: int) -> tuple[str, ...]:
    """The experts a block holds: ``v``, ``l`` and, from ``vl_start`` up, ``vl``."""
    return EXPERTS if index >= vl_start else EXPERTS[:2]


def block_experts(
    block: int,
    *,
    vl_start: int,
    task: str | None = None,
    task_dependent: bool = False,
    only_used_experts: bool = False,
    unimodal_paths: bool = False,
) -> tuple[str, ...]:
    """The experts merged in ``block`` for ``task``, in ``v, l, vl`` order (module docstring).

    Args:
        block: block index.
        vl_start: first fusion block.
        task: downstream task the merged model is evaluated on; None = no task.
        task_dependent: the method applies the official RegMean rule whatever ``only_used_experts``.
        only_used_experts: ``only_activate_used_experts`` of the official code.
        unimodal_paths: image-only tasks from ``v``, text-only tasks from ``l`` (ours).
    """
    if unimodal_paths and task in IMAGE_TASKS:
        return ("v",)
    if unimodal_paths and task in TEXT_TASKS:
        return ("l",)
    if block < vl_start:
        return ("v", "l")
    if task_dependent or only_used_experts:
        if task in RETRIEVAL_TASKS:
            return ("v", "l")
        if task == "vqa" or (task == "nlvr2" and not task_dependent):
            return ("vl",)
    return EXPERTS


def _signature(task: str | None, **rule: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The expert choice of ``task`` below and from ``vl_start`` (vl_start = 1 stands for any)."""
    return block_experts(0, vl_start=1, task=task, **rule), block_experts(1, vl_start=1, task=task, **rule)


def merge_groups(
    *,
    task_dependent: bool = False,
    only_used_experts: bool = False,
    unimodal_paths: bool = False,
    tasks: tuple[str, ...] = TASKS,
) -> dict[str, tuple[str, ...]]:
    """Task groups of a merge: ``{group name: tasks}``, one merged checkpoint per group.

    A merge whose expert choice does not depend on the task has the one group ``"all"``. Otherwise
    the tasks are grouped by their expert choice (:func:`block_experts`); the group that uses every
    expert is ``"other"``, a group equal to a named family is named after it (``retrieval``,
    ``fusion``, ``image``, ``text``), a one-task group after its task (RegMean's ``vqa``). The names
    are decided over all :data:`TASKS`, so a subset of ``tasks`` keeps the same names.
    """
    rule = {"task_dependent": task_dependent, "only_used_experts": only_used_experts}
    rule["unimodal_paths"] = unimodal_paths
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    if not (task_dependent or only_used_experts or unimodal_paths):
        return {"all": tuple(tasks)}
    by_sig: dict[tuple, list[str]] = {}
    for t in TASKS:
        by_sig.setdefault(_signature(t, **rule), []).append(t)
    everything = _signature(None, **rule)
    names: dict[str, str] = {}
    for sig, members in by_sig.items():
        key = tuple(members)
        name = (
            "other" if sig == everything else _NAMED_SETS.get(key, members[0] if len(members) == 1 else None)
        )
        if name is None:  # a combination no rule above produces; keep it explicit
            name = "+".join(members)
        for t in members:
            names[t] = name
    out: dict[str, list[str]] = {}
    for t in tasks:
        out.setdefault(names[t], []).append(t)
    return {g: tuple(ts) for g, ts in out.items()}


def merge_group_of(
    task: str | None,
    *,
    task_dependent: bool = False,
    only_used_experts: bool = False,
    unimodal_paths: bool = False,
) -> str:
    """The task group (:func:`merge_groups`) whose merged checkpoint ``task`` is evaluated with.

    ``task=None`` (no task) is the group that merges every expert: ``"all"`` or ``"other"``.
    """
    groups = merge_groups(
        task_dependent=task_dependent, only_used_experts=only_used_experts, unimodal_paths=unimodal_paths
    )
    if task is None:
        for name in ("all", "other"):
            if name in groups:
                return name
        raise ValueError("no task group merges every expert under this rule; name a task")
    for name, members in groups.items():
        if task in members:
            return name
    raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
