"""MS -> MA unification: merge the per-expert copies of each block parameter into one shared copy.

An MS state dict names expert copies ``blocks.{i}.{attn|mlp|norm1|norm2}.{v|l|vl}.<param>``
(:data:`~vlmerge_core.model.experts.EXPERT_KEY`); the MA name is the same without the expert level.
Each such group is merged by one method of :mod:`vlmerge_core.merge.methods`; every other tensor
(embeddings, layer scales, relative position bias, final norm, heads, and components that are shared
in this MS variant) passes through, as ``merge_weights`` / ``sum_task_vectors`` / ``regmean`` of the
official code (PAPER.md §4).

Which experts are merged in a block follows :func:`vlmerge_core.model.experts.block_experts` (the
official rule; ``only_used_experts`` defaults to False as the official ``config.py``; methods
declared ``task_dependent``, RegMean, follow the task whatever the flag). A lone expert passes
through unchanged in every method (the official code gives it weight 1).
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

from vlmerge_core.merge.methods import MergeError, MergeMethod, get_method
from vlmerge_core.merge.methods.registry import chunk_sums
from vlmerge_core.model.experts import EXPERTS, block_experts, experts_for_block, split_expert_key

__all__ = [
    "LazyGrams",
    "check_finite",
    "gram_key",
    "iter_unified",
    "group_call",
    "method_params",
    "plan_groups",
    "split_expert_key",
    "unified_outputs",
    "unify_state_dict",
    "used_experts",
]

_LINEAR = re.compile(r"^blocks\.(\d+)\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.weight$")


def check_finite(t: Tensor, key: str, source: str) -> None:
    """Raise :class:`MergeError` ``"<source>: tensor <key> holds NaN/inf"`` if ``t`` is not all finite.

    Sums detect it without a boolean temporary (NaN and inf propagate); only when a sum is not
    finite (a non-finite value, or an overflow of the sum itself) does the element-wise test decide.
    """
    if not t.is_floating_point() or t.numel() == 0:
        return
    if all(math.isfinite(s) for s in chunk_sums(t)) or bool(torch.isfinite(t).all()):
        return
    bad = "NaN" if bool(torch.isnan(t).any()) else "inf"
    raise MergeError(f"{source}: tensor {key} holds {bad} values; nothing was merged")


class LazyGrams(Sequence):
    """The Gram matrices of one group, read when indexed and not kept: a method that uses one at a
    time (RegMean accumulates ``sum_m G~^m``) holds one ``[in, in]`` float64 matrix, not ``M``."""

    def __init__(self, target: str, keys: Sequence[str], get: Callable[[str], Tensor]):
        self.target, self.keys, self.get = target, list(keys), get

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int | slice) -> Tensor | list[Tensor]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        try:
            return self.get(self.keys[i])
        except KeyError:
            raise MergeError(f"{self.target}: Gram matrix {self.keys[i]} not found") from None


def gram_key(target: str, expert: str) -> str | None:
    """Gram-matrix key of a merged linear weight for one expert (``blocks.3.attn.v.qkv``); None otherwise."""
    m = _LINEAR.match(target)
    if m is None:
        return None
    comp, lin = m.group(2).split(".")
    return f"blocks.{m.group(1)}.{comp}.{expert}.{lin}"


def plan_groups(
    keys: Sequence[str], vl_start: int, source: str = "MS state dict"
) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Group MS keys by MA target: ``{target: {expert: ms_key}}``, plus the pass-through keys.

    Raises :class:`MergeError` when there is no expert tensor at all (an MA checkpoint given as
    the MS input), an expert copy is missing (naming the missing key) or a target is also present
    as a shared tensor.
    """
    groups: dict[str, dict[str, str]] = {}
    passthrough: list[str] = []
    for key in keys:
        parsed = split_expert_key(key)
        if parsed is None:
            passthrough.append(key)
            continue
        target, _, expert = parsed
        groups.setdefault(target, {})[expert] = key
    if not groups:
        raise MergeError(
            f"{source}: no expert tensor (blocks.<i>.<component>.<v|l|vl>.*): a modality-agnostic "
            "checkpoint given where a modality-specific one is expected?"
        )
    shared = set(passthrough)
    for target, members in groups.items():
        if target in shared:
            raise MergeError(f"{target}: present both shared and per expert ({sorted(members)})")
        block = int(target.split(".")[1])
        expected = experts_for_block(block, vl_start)
        missing = [e for e in expected if e not in members]
        if missing:
            some = next(iter(members.values()))
            names = [some.replace(f".{next(iter(members))}.", f".{e}.", 1) for e in missing]
            raise MergeError(
                f"{target}: expert tensor(s) {names} missing (present: {sorted(members)}; "
                f"vl_start={vl_start})"
            )
        extra = [e for e in members if e not in expected]
        if extra:
            raise MergeError(
                f"{target}: unexpected expert(s) {extra} in block {block} below vl_start={vl_start}"
            )
    return groups, passthrough


def used_experts(
    block: int,
    available: Sequence[str],
    *,
    vl_start: int,
    task: str | None = None,
    only_used_experts: bool = False,
    method: str | MergeMethod = "interpolation",
    experts: Sequence[str] | None = None,
    unimodal_paths: bool = False,
) -> list[str]:
    """The experts merged in ``block``, in ``v, l, vl`` order (``experts`` overrides the task rule)."""
    avail = [e for e in EXPERTS if e in available]
    if experts is not None:
        chosen = [e for e in avail if e in experts]
        if not chosen:
            raise MergeError(
                f"block {block}: none of the requested experts {list(experts)} is present ({avail})"
            )
        return chosen
    rule = block_experts(
        block,
        vl_start=vl_start,
        task=task,
        task_dependent=get_method(method).task_dependent,
        only_used_experts=only_used_experts,
        unimodal_paths=unimodal_paths,
    )
    return [e for e in avail if e in rule]


def method_params(method: MergeMethod | str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` without Nones, checked against the knobs ``method`` declares."""
    return get_method(method).check_params(params)


def group_call(
    method: MergeMethod,
    target: str,
    experts: Sequence[str],
    *,
    central: Tensor | None = None,
    grams: Sequence[Tensor] | None = None,
    params: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The keyword arguments ``(kwargs, params)`` that ``method.fn`` merges the expert tensors of one
    MA parameter ``target`` with (:func:`iter_unified` calls ``method.fn(tensors, **kwargs, **params)``).
    """
    params = dict(params or {})
    kwargs: dict[str, Any] = {"name": target, **(extra or {})}
    if method.bind is not None:
        try:
            kwargs.update(method.bind(experts, params))
        except MergeError as exc:
            raise MergeError(f"{target}: {exc}") from None
        params = {}  # bind consumed them
    if method.needs_central:
        if central is None:
            raise MergeError(f"{target}: merge method {method.name!r} needs the central (seed) checkpoint")
        kwargs["central"] = central
    if method.needs_grams and grams is not None:
        kwargs["grams"] = grams
    return kwargs, params


Plan = list[tuple[str, list[str], list[str]]]  # (MA target, experts merged, their MS keys), by target


def _check_inputs(
    method: MergeMethod, get_central: Callable[[str], Tensor] | None, get_gram: Callable[[str], Tensor] | None
) -> None:
    """Refuse a method without the inputs it declares it needs."""
    if method.needs_central and get_central is None:
        raise MergeError(f"merge method {method.name!r} needs the central (seed) checkpoint")
    if method.needs_grams and get_gram is None:
        raise MergeError(f"merge method {method.name!r} needs Gram matrices")


def _plan(
    groups: Mapping[str, Mapping[str, str]], method: MergeMethod, *, vl_start: int, **rule: Any
) -> Plan:
    """One ``(target, experts, ms_keys)`` per group in sorted target order (``rule``: :func:`used_experts`)."""
    plan = []
    for target in sorted(groups):
        members = groups[target]
        use = used_experts(int(target.split(".")[1]), list(members), vl_start=vl_start, method=method, **rule)
        plan.append((target, use, [members[e] for e in use]))
    return plan


def _largest_grams_first(plan: Plan) -> Plan:
    """``plan`` with the groups of ``mlp.fc2`` first (stable otherwise), for a method that reads Gram
    matrices.

    ``fc2`` reads the MLP's hidden width (4x the model width), so its Gram matrices are 16x the others';
    merged first, their float64 temporaries are alive while the output holds little, and the peak memory
    of the merge stays near the output size. Groups are independent, so the order changes no value
    (and the written file sorts its header).
    """
    return sorted(plan, key=lambda group: not group[0].endswith("mlp.fc2.weight"))


def _central_reader(
    method: MergeMethod, get_central: Callable[[str], Tensor] | None
) -> Callable[[str], Tensor | None]:
    """``central_of(target)``: the central tensor of ``target`` (None unless the method needs it)."""

    def central_of(target: str) -> Tensor | None:
        if not method.needs_central:
            return None
        try:
            return get_central(target)
        except KeyError:
            raise MergeError(
                f"central checkpoint has no tensor {target} (a checkpoint of another architecture?)"
            ) from None

    return central_of


def _prepared(
    method: MergeMethod,
    plan: Plan,
    get: Callable[[str], Tensor],
    central_of: Callable[[str], Tensor | None],
    params: dict[str, Any],
) -> Callable[[str, Sequence[str]], dict[str, Any] | None] | None:
    """The method's ``prepare`` hook run over every merged group (None without a hook)."""
    if method.prepare is None:
        return None

    def read_groups(
        want: Callable[[str, str], bool] | None = None,
    ) -> Iterator[tuple[str, list[str], list[Tensor], Tensor | None]]:
        """Every merged group; with ``want(target, expert)``, only the experts wanted (others unread).
        The next groups are read by other threads while the caller works on this one."""
        items = []
        for target, use, ms_keys in plan:
            pick = [(e, k) for e, k in zip(use, ms_keys) if want is None or want(target, e)]
            if len(use) > 1 and pick:
                items.append((target, [e for e, _ in pick], [k for _, k in pick]))

        def read(target: str, names: list[str], keys: list[str]) -> tuple:
            return target, names, [get(k) for k in keys], central_of(target)

        yield from _in_order(read, items, threads=2)

    return method.prepare(read_groups, params)


def iter_unified(
    keys: Sequence[str],
    get: Callable[[str], Tensor],
    method: str | MergeMethod,
    *,
    vl_start: int,
    get_central: Callable[[str], Tensor] | None = None,
    get_gram: Callable[[str], Tensor] | None = None,
    task: str | None = None,
    only_used_experts: bool = False,
    experts: Sequence[str] | None = None,
    unimodal_paths: bool = False,
    source: str = "MS state dict",
    drop_gramless: bool = False,
    **params: Any,
) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(ma_name, tensor)`` one group at a time, reading tensors lazily through ``get``.

    The driver of :func:`unify_state_dict` and of the streaming ``merge_checkpoint``; it calls the
    registered method function itself (:func:`group_call` gives its arguments). A method with
    a ``prepare`` hook (TIES per modality vector) first reads every merged group once more.
    ``drop_gramless`` (the official RegMean with Grams from COCO retrieval, which has none for
    ``vl``): a linear weight is merged over the experts that have a Gram matrix only; biases and
    norms still over every expert of the group.
    """
    method = get_method(method)
    params = method_params(method, params)
    _check_inputs(method, get_central, get_gram)
    rule = {"task": task, "only_used_experts": only_used_experts, "experts": experts}
    passthrough, plan = _outputs_plan(keys, method, vl_start, source, unimodal_paths=unimodal_paths, **rule)
    central_of = _central_reader(method, get_central)
    for key in passthrough:  # first: the writer writes them while a prepare hook reads the groups
        yield key, get(key)
    per_group = _prepared(method, plan, get, central_of, params)
    if method.needs_grams:
        plan = _largest_grams_first(plan)

    def load_group(target: str, use: Sequence[str], ms_keys: Sequence[str]) -> tuple:
        """One group's expert tensors, read, and for a Gram method its Gram matrices (read on demand)."""
        if drop_gramless and method.needs_grams and len(use) > 1 and gram_key(target, use[0]) is not None:
            use, ms_keys = _with_grams(target, use, ms_keys, get_gram)
        grams = None
        if method.needs_grams and len(use) > 1 and gram_key(target, use[0]) is not None:
            grams = LazyGrams(target, [gram_key(target, e) for e in use], get_gram)
        return target, use, [get(k) for k in ms_keys], grams

    def merge_loaded(
        target: str, use: Sequence[str], tensors: list[Tensor], grams: LazyGrams | None
    ) -> Tensor:
        if len(use) == 1:  # a lone expert passes through unchanged in every method (official: weight 1)
            return tensors[0].detach().clone()
        extra = per_group(target, use) if per_group is not None else None
        kwargs, knobs = group_call(
            method, target, use, central=central_of(target), grams=grams, params=params, extra=extra
        )
        return method.fn(tensors, **kwargs, **knobs).contiguous()  # the writer needs contiguous

    if method.needs_grams:  # the products already use every thread: one group after the other
        for item in plan:
            yield item[0], merge_loaded(*load_group(*item))
        return
    # element-wise ops run on one thread each (registry.by_slices): the groups side by side, one per thread
    workers = max(1, torch.get_num_threads())
    merged = _in_order(lambda *item: merge_loaded(*load_group(*item)), plan, threads=workers)
    yield from zip([t for t, _, _ in plan], merged)


def _in_order(fn: Callable[..., Any], items: Iterable[tuple], threads: int) -> Iterator[Any]:
    """``fn(*item)`` for each item, in order, computed by ``threads`` threads (torch ops, reads and
    numpy's large ops release the GIL), at most ``threads`` items beyond the one being consumed. An
    error is raised at its item, in order, after the items already started have finished."""
    with ThreadPoolExecutor(threads, thread_name_prefix="merge") as pool:
        pending: deque[Future] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, *item))
                if len(pending) > threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def _outputs_plan(
    keys: Sequence[str], method: MergeMethod, vl_start: int, source: str, **rule: Any
) -> tuple[list[str], Plan]:
    """The pass-through keys and the plan of the merged groups (``rule``: :func:`used_experts`)."""
    groups, passthrough = plan_groups(keys, vl_start, source)
    return passthrough, _plan(groups, method, vl_start=vl_start, **rule)


def unified_outputs(
    keys: Sequence[str],
    method: str | MergeMethod,
    *,
    vl_start: int,
    source: str = "MS state dict",
    task: str | None = None,
    only_used_experts: bool = False,
    experts: Sequence[str] | None = None,
    unimodal_paths: bool = False,
) -> dict[str, str]:
    """Every tensor :func:`iter_unified` yields for these arguments -> the MS key whose dtype and shape
    it has (itself for a pass-through key; the first expert's for a merged group), nothing read."""
    rule = {"task": task, "only_used_experts": only_used_experts, "experts": experts}
    passthrough, plan = _outputs_plan(
        keys, get_method(method), vl_start, source, unimodal_paths=unimodal_paths, **rule
    )
    return {**{k: k for k in passthrough}, **{target: ms_keys[0] for target, _, ms_keys in plan}}


def _with_grams(
    target: str, use: Sequence[str], ms_keys: Sequence[str], get_gram: Callable[[str], Tensor]
) -> tuple[list[str], list[str]]:
    """The experts of ``use`` (and their MS keys) whose Gram matrix for ``target`` exists (asked of
    the getter's ``has``, nothing read)."""
    keep = [i for i, e in enumerate(use) if get_gram.has(gram_key(target, e))]
    if not keep:
        raise MergeError(f"{target}: no Gram matrix for any of the experts {list(use)}")
    return [use[i] for i in keep], [ms_keys[i] for i in keep]


def _getter(sd: Mapping[str, Tensor], what: str) -> Callable[[str], Tensor]:
    def get(key: str) -> Tensor:
        if key not in sd:
            raise KeyError(f"{what}: no tensor {key}")
        return sd[key]

    get.has = sd.__contains__  # whether a tensor is there, without reading it (see _with_grams)
    return get


def unify_state_dict(
    ms_sd: Mapping[str, Tensor],
    method: str | MergeMethod,
    *,
    vl_start: int,
    central: Mapping[str, Tensor] | None = None,
    grams: Mapping[str, Tensor] | None = None,
    task: str | None = None,
    only_used_experts: bool = False,
    experts: Sequence[str] | None = None,
    unimodal_paths: bool = False,
    **method_params: Any,
) -> dict[str, Tensor]:
    """Merge an MS state dict into an MA state dict (names without the expert level).

    Args:
        ms_sd: modality-specific state dict.
        method: a name of :data:`~vlmerge_core.merge.methods.METHODS`.
        vl_start: first fusion block (experts ``v, l`` below it, ``v, l, vl`` from it).
        central: the seed (MA) state dict, for methods that declare ``needs_central``.
        grams: Gram matrices keyed by expert module name (``blocks.3.attn.v.qkv``), for ``needs_grams``.
        task: downstream task, for the task -> experts rule.
        only_used_experts: keep only the experts the task uses in fusion blocks (official flag).
        experts: explicit experts to merge in every block (overrides the task rule).
        unimodal_paths: merge image-only tasks from ``v`` and text-only tasks from ``l`` (ours).
        **method_params: the method's knobs (its registration lists them).

    Raises:
        MergeError: a non-finite value in any input tensor, no expert tensor, a missing tensor...
    """
    for what, sd in (("MS state dict", ms_sd), ("central state dict", central), ("grams", grams)):
        for k, t in (sd or {}).items():
            check_finite(t, k, what)
    return dict(
        iter_unified(
            list(ms_sd),
            _getter(ms_sd, "ms"),
            method,
            vl_start=vl_start,
            get_central=_getter(central, "central") if central is not None else None,
            get_gram=_getter(grams, "grams") if grams is not None else None,
            task=task,
            only_used_experts=only_used_experts,
            experts=experts,
            unimodal_paths=unimodal_paths,
            **method_params,
        )
    )
