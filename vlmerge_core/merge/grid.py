"""The merges a params file asks for: every method, every value of its swept knob, every task group.

Read from the registry (:mod:`vlmerge_core.merge.methods`): each method's knobs name their
``params.yaml`` key (``merge.ratios``, ``merge.ties_lambda``...), so a method registered anywhere
appears here without any change; the knob's declaration also checks the value the params give
(:func:`check_knobs`). A merge whose expert choice depends on the task (the method is
``task_dependent``, or ``only_used_experts``/``unimodal_paths`` is on) is one merge per task group
(:func:`vlmerge_core.model.experts.merge_groups`), named ``<run name>__<group>``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vlmerge_core.config import ParamsError
from vlmerge_core.merge.methods import METHODS, Knob, MergeError, get_method
from vlmerge_core.model.experts import TASKS, merge_groups

__all__ = ["MergeJob", "check_inputs", "check_knobs", "knob_value", "merge_jobs", "method_grid", "run_name"]

log = logging.getLogger(__name__)


def knob_value(cfg: Any, knob: Knob) -> Any:
    """The value(s) of ``knob`` in a :class:`~vlmerge_core.config.MergeConfig`, checked.

    A swept knob must be in the params (a list); a scalar knob the params lack takes its default.
    """
    attr = knob.attr
    if attr is None:
        return knob.default
    if not hasattr(cfg, attr):
        if knob.sweep:
            raise ParamsError(f"{knob.params_key}: missing from the merge params")
        return knob.default
    value = getattr(cfg, attr)
    try:
        if knob.sweep:
            if not isinstance(value, (list, tuple)) or not value:
                raise ParamsError(f"{knob.params_key}: expected a non-empty list, got {value!r}")
            return [knob.check(v, knob.params_key) for v in value]
        return knob.check(value, knob.params_key)
    except MergeError as exc:
        raise ParamsError(str(exc)) from None


def check_knobs(cfg: Any) -> None:
    """Every knob value of a ``MergeConfig`` in the range its declaration gives, for every registered
    method (the config holds the values only, the registry the ranges).

    Raises:
        ParamsError: naming the ``params.yaml`` key (e.g. ``merge.ratios``) and the allowed range.
    """
    for method in METHODS.values():
        for knob in method.knobs:
            knob_value(cfg, knob)


def method_grid(cfg: Any, methods: Sequence[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``(method, params)`` for every method and swept-knob value of a ``MergeConfig``.

    Args:
        cfg: the ``merge`` section of the params.
        methods: method names; default ``cfg.methods``.
    """
    out = []
    for m in methods or cfg.methods:
        if m not in METHODS:
            raise ParamsError(f"merge.methods: unknown method {m!r}; known: {', '.join(METHODS)}")
        method = METHODS[m]
        fixed = {k.name: knob_value(cfg, k) for k in method.knobs if not k.sweep}
        sweep = method.sweep_knob
        if sweep is None:
            out.append((m, fixed))
            continue
        out.extend((m, {sweep.name: v, **fixed}) for v in knob_value(cfg, sweep))
    return out


def run_name(method: str, params: dict[str, Any]) -> str:
    """File stem of one merge: the method and its swept knob, e.g. ``interpolation_ratio0.5``."""
    sweep = get_method(method).sweep_knob
    if sweep is None or sweep.name not in params:
        return method
    v = params[sweep.name]
    return f"{method}_{sweep.name}{v:g}" if isinstance(v, float) else f"{method}_{sweep.name}{v}"


@dataclass(frozen=True)
class MergeJob:
    """One merge: a method with its knobs, the tasks it serves, and (once split) its task group.

    The study's plan (:func:`vlmerge_core.study.plan.study_merges`) holds one job per merge of an MS
    run, ``group="all"``; :func:`merge_jobs` splits a merge into one job per task group, each one
    checkpoint to write.
    """

    method: str  # registry name
    params: dict[str, Any] = field(default_factory=dict, hash=False)  # the method's knobs
    option: str = ""  # the study's option ("" or one of study.plan.OPTIONS)
    experiments: tuple[str, ...] = ()  # the experiments it feeds (E1-E6)
    tasks: tuple[str, ...] = ()  # tasks evaluated with this merge
    group: str = "all"  # task group ("all": task-independent, or not split yet)
    task: str | None = None  # the task the expert rule is applied for (None: "all")

    @property
    def run_name(self) -> str:
        """Method and swept knob, e.g. ``regmean_alpha1`` (:func:`run_name`)."""
        return run_name(self.method, self.params)

    @property
    def knob(self) -> str | None:
        """The method's swept knob (None when it has none)."""
        sweep = get_method(self.method).sweep_knob
        return sweep.name if sweep else None

    @property
    def knob_value(self) -> Any:
        """The value of the swept knob in ``params`` (None when there is none)."""
        return self.params.get(self.knob) if self.knob else None

    @property
    def stem(self) -> str:
        """``<run_name>`` for a task-independent merge, else ``<run_name>__<group>``."""
        return self.run_name if self.group == "all" else f"{self.run_name}__{self.group}"


def merge_jobs(
    grid: Sequence[tuple[str, dict[str, Any]]],
    *,
    tasks: Sequence[str] = TASKS,
    only_used_experts: bool = False,
    unimodal_paths: bool = False,
    option: str = "",
    experiments: Sequence[str] = (),
) -> list[MergeJob]:
    """One :class:`MergeJob` per ``(method, params)`` of ``grid`` and per task group of ``tasks``.

    Args:
        grid: ``(method, knobs)`` pairs, e.g. from :func:`method_grid`.
        tasks: the tasks the merges serve.
        only_used_experts: the official ``only_activate_used_experts`` flag (splits by task group).
        unimodal_paths: image-only tasks from ``v``, text-only from ``l`` (splits by task group).
        option, experiments: copied to every job (the study's plan).
    """
    jobs = []
    for method, params in grid:
        groups = merge_groups(
            task_dependent=get_method(method).task_dependent,
            only_used_experts=only_used_experts,
            unimodal_paths=unimodal_paths,
            tasks=tuple(tasks),
        )
        for group, members in groups.items():
            task = None if group == "all" else members[0]
            jobs.append(
                MergeJob(method, dict(params), option, tuple(experiments), tuple(members), group, task)
            )
    return jobs


def check_inputs(methods: Iterable[str], *, central: bool, grams: bool) -> None:
    """Refuse a merge whose method needs an input that is not given (the registry's ``needs_*``).

    Raises:
        ParamsError: naming the missing input (``central_ckpt``, ``gram_path``) and the method.
    """
    for m in dict.fromkeys(methods):
        method = get_method(m)
        if method.needs_central and not central:
            raise ParamsError(f"central_ckpt: merge method {m!r} needs the seed (central) checkpoint")
        if method.needs_grams and not grams:
            raise ParamsError(f"gram_path: merge method {m!r} needs Gram matrices (write_grams)")
