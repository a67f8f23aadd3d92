"""MS -> MA unification: merge the per-expert copies of each block parameter into one shared copy.

An MS state dict names expert copies ``blocks.{i}.{attn|mlp|norm1|norm2}.{v|l|vl}.<param>``; the MA
name is the same without the expert level. Each such group is merged by one method of
:mod:`vlmerge_core.merge.methods`; every other tensor (embeddings, layer scales, relative position
bias, final norm, heads, and components that are shared in this MS variant) passes through, as
``merge_weights`` / ``sum_task_vectors`` / ``regmean`` of the official code (PAPER.md §4).

Which experts are merged in block ``i`` (``used_experts``) follows the official code:
below ``vl_start`` ``{v, l}``; from ``vl_start`` with ``only_used_experts``: retrieval (coco, flickr)
-> ``{v, l}``, vqa and nlvr2 -> ``{vl}``, any other task or none -> all experts (the official
interpolation/arithmetic code has no branch for other tasks; PAPER.md reads it as "all"). RegMean in
the official code ignores ``only_used_experts``: retrieval -> ``{v, l}``, vqa -> ``{vl}``, else all
(nlvr2 included); we mirror that. ``unimodal_paths=True`` (ours, off by default) merges image-only
tasks (imagenet, ade20k) from ``{v}`` and text-only tasks (text) from ``{l}``, the experts they run.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from torch import Tensor

from vlmerge_core.merge.methods import MergeError, MergeMethod, get_method, interpolation_weights

EXPERTS = ("v", "l", "vl")
COMPONENTS = ("attn", "mlp", "norm1", "norm2")
RETRIEVAL_TASKS = ("coco", "flickr")
FUSION_TASKS = ("vqa", "nlvr2")
IMAGE_TASKS = ("imagenet", "ade20k")
TEXT_TASKS = ("text",)
_EXPERT_KEY = re.compile(r"^blocks\.(\d+)\.(attn|mlp|norm1|norm2)\.(v|l|vl)\.(.+)$")
_LINEAR = re.compile(r"^blocks\.(\d+)\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.weight$")
_SINGLE_EXPERT_LAMBDA_ONE = ("arithmetic", "ties", "dare")


def split_expert_key(key: str) -> tuple[str, int, str] | None:
    """``blocks.3.mlp.vl.fc1.weight`` -> (``blocks.3.mlp.fc1.weight``, 3, ``vl``); None if not per expert."""
    m = _EXPERT_KEY.match(key)
    if m is None:
        return None
    block, comp, expert, rest = m.groups()
    return f"blocks.{block}.{comp}.{rest}", int(block), expert


def gram_key(target: str, expert: str) -> str | None:
    """Gram-matrix key of a merged linear weight for one expert (``blocks.3.attn.v.qkv``); None otherwise."""
    m = _LINEAR.match(target)
    if m is None:
        return None
    comp, lin = m.group(2).split(".")
    return f"blocks.{m.group(1)}.{comp}.{expert}.{lin}"


def plan_groups(keys: Sequence[str], vl_start: int) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Group MS keys by MA target: ``{target: {expert: ms_key}}``, plus the pass-through keys.

    Raises :class:`MergeError` when an expert copy is missing (naming the missing key) or a target
    is also present as a shared tensor.
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
    shared = set(passthrough)
    for target, members in groups.items():
        if target in shared:
            raise MergeError(f"{target}: present both shared and per expert ({sorted(members)})")
        block = int(target.split(".")[1])
        expected = ("v", "l") if block < vl_start else EXPERTS
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
    only_used_experts: bool = True,
    method: str = "interpolation",
    experts: Sequence[str] | None = None,
    unimodal_paths: bool = False,
) -> list[str]:
    """The experts merged in ``block`` (see the module docstring), in ``v, l, vl`` order."""
    avail = [e for e in EXPERTS if e in available]
    if experts is not None:
        chosen = [e for e in avail if e in experts]
        if not chosen:
            raise MergeError(
                f"block {block}: none of the requested experts {list(experts)} is present ({avail})"
            )
        return chosen
    if unimodal_paths and task in IMAGE_TASKS:
        return [e for e in avail if e == "v"]
    if unimodal_paths and task in TEXT_TASKS:
        return [e for e in avail if e == "l"]
    if block < vl_start:
        return [e for e in avail if e in ("v", "l")]
    if method == "regmean" or only_used_experts:
        if task in RETRIEVAL_TASKS:
            return [e for e in avail if e in ("v", "l")]
        if task == "vqa" or (task == "nlvr2" and method != "regmean"):
            return [e for e in avail if e == "vl"]
    return avail


def method_params(method: MergeMethod | str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``params`` against the keyword parameters ``method`` accepts; return them without Nones."""
    method = get_method(method) if isinstance(method, str) else method
    sig = inspect.signature(method.fn).parameters
    allowed = {n for n, p in sig.items() if p.kind is p.KEYWORD_ONLY} - {
        "name",
        "central",
        "grams",
        "weights",
    }
    if method.name == "interpolation":
        allowed |= {"ratio", "weights"}
    given = {k: v for k, v in params.items() if v is not None}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise MergeError(f"merge method {method.name!r} does not take {unknown}; it takes {sorted(allowed)}")
    return given


def merge_group(
    method: MergeMethod,
    target: str,
    tensors: Sequence[Tensor],
    experts: Sequence[str],
    *,
    central: Tensor | None = None,
    grams: Sequence[Tensor] | None = None,
    params: Mapping[str, Any] | None = None,
) -> Tensor:
    """Merge the expert tensors of one MA parameter ``target`` with ``method``."""
    params = dict(params or {})
    kwargs: dict[str, Any] = {"name": target}
    if method.name == "interpolation":
        ratio = params.pop("ratio", 0.5)
        weights = params.pop("weights", None)
        if weights is not None:
            ws = [float(weights[e]) for e in experts]
            kwargs["weights"] = [w / sum(ws) for w in ws]
        else:
            try:
                kwargs["weights"] = interpolation_weights(experts, ratio)
            except MergeError as exc:
                raise MergeError(f"{target}: {exc}") from None
    if method.needs_central:
        if central is None:
            raise MergeError(f"{target}: merge method {method.name!r} needs the central (seed) checkpoint")
        kwargs["central"] = central
    if method.needs_grams and grams is not None:
        kwargs["grams"] = grams
    if method.name in _SINGLE_EXPERT_LAMBDA_ONE and len(tensors) == 1:
        params["lam"] = 1.0  # the official code gives a lone used expert weight 1
    return method.fn(list(tensors), **kwargs, **params)


def iter_unified(
    keys: Sequence[str],
    get: Callable[[str], Tensor],
    method: str | MergeMethod,
    *,
    vl_start: int,
    get_central: Callable[[str], Tensor] | None = None,
    get_gram: Callable[[str], Tensor] | None = None,
    task: str | None = None,
    only_used_experts: bool = True,
    experts: Sequence[str] | None = None,
    unimodal_paths: bool = False,
    **params: Any,
) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(ma_name, tensor)`` one group at a time, reading tensors lazily through ``get``.

    The driver of :func:`unify_state_dict` and of the streaming :func:`merge_checkpoint`.
    """
    method = get_method(method) if isinstance(method, str) else method
    params = method_params(method, params)
    if method.needs_central and get_central is None:
        raise MergeError(f"merge method {method.name!r} needs the central (seed) checkpoint")
    if method.needs_grams and get_gram is None:
        raise MergeError("merge method 'regmean' needs Gram matrices")
    groups, passthrough = plan_groups(keys, vl_start)
    for key in passthrough:
        yield key, get(key)
    for target in sorted(groups):
        members = groups[target]
        block = int(target.split(".")[1])
        use = used_experts(
            block,
            list(members),
            vl_start=vl_start,
            task=task,
            only_used_experts=only_used_experts,
            method=method.name,
            experts=experts,
            unimodal_paths=unimodal_paths,
        )
        tensors = [get(members[e]) for e in use]
        central = None
        if method.needs_central:
            try:
                central = get_central(target)
            except KeyError:
                raise MergeError(
                    f"central checkpoint has no tensor {target} (a checkpoint of another architecture?)"
                ) from None
        grams = None
        if method.needs_grams and gram_key(target, use[0]) is not None:
            grams = []
            for e in use:
                gk = gram_key(target, e)
                try:
                    grams.append(get_gram(gk))
                except KeyError:
                    raise MergeError(f"{target}: Gram matrix {gk} not found") from None
        yield target, merge_group(method, target, tensors, use, central=central, grams=grams, params=params)


def _getter(sd: Mapping[str, Tensor], what: str) -> Callable[[str], Tensor]:
    def get(key: str) -> Tensor:
        if key not in sd:
            raise KeyError(f"{what}: no tensor {key}")
        return sd[key]

    return get


def unify_state_dict(
    ms_sd: Mapping[str, Tensor],
    method: str | MergeMethod,
    *,
    vl_start: int,
    central: Mapping[str, Tensor] | None = None,
    grams: Mapping[str, Tensor] | None = None,
    task: str | None = None,
    only_used_experts: bool = True,
    experts: Sequence[str] | None = None,
    unimodal_paths: bool = False,
    **method_params: Any,
) -> dict[str, Tensor]:
    """Merge an MS state dict into an MA state dict (names without the expert level).

    Args:
        ms_sd: modality-specific state dict.
        method: a name of :data:`~vlmerge_core.merge.methods.METHODS`.
        vl_start: first fusion block (experts ``v, l`` below it, ``v, l, vl`` from it).
        central: the seed (MA) state dict; needed by arithmetic, ties and dare.
        grams: Gram matrices keyed by expert module name (``blocks.3.attn.v.qkv``); regmean.
        task: downstream task, for ``only_used_experts``.
        only_used_experts: keep only the experts the task uses in fusion blocks (official flag).
        experts: explicit experts to merge in every block (overrides the task rule).
        unimodal_paths: merge image-only tasks from ``v`` and text-only tasks from ``l`` (ours).
        **method_params: ``ratio``/``weights`` (interpolation), ``lam``, ``alpha``, ``density``,
            ``drop_rate``, ``seed``.
    """
    get_central = None
    if central is not None:
        get_central = _getter(central, "central")
    get_gram = _getter(grams, "grams") if grams is not None else None
    return dict(
        iter_unified(
            list(ms_sd),
            _getter(ms_sd, "ms"),
            method,
            vl_start=vl_start,
            get_central=get_central,
            get_gram=get_gram,
            task=task,
            only_used_experts=only_used_experts,
            experts=experts,
            unimodal_paths=unimodal_paths,
            **method_params,
        )
    )
