"""The merges a params file asks for: every method, every value of its swept knob, every task group.

Read from the registry (:mod:`vlmerge_core.merge.methods`): each method's knobs name their
``params.yaml`` key (``merge.ratios``, ``merge.ties_lambda``...), so a method registered anywhere
appears here without any change. A merge whose expert choice depends on the task (the method is
``task_dependent``, or ``only_used_experts``/``unimodal_paths`` is on) is one merge per task group
(:func:`vlmerge_core.model.experts.merge_groups`), named ``<run name>__<group>``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vlmerge_core.config import ParamsError
from vlmerge_core.merge.methods import METHODS, Knob, MergeError, get_method
from vlmerge_core.model.experts import TASKS, merge_groups

__all__ = ["MergeJob", "knob_value", "merge_jobs", "method_grid", "run_name"]

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
    """One merged checkpoint to write."""

    method: str  # registry name
    params: dict[str, Any]  # the method's knobs
    run_name: str  # method and swept knob, e.g. regmean_alpha1
    group: str  # task group ("all" for a task-independent merge)
    tasks: tuple[str, ...]  # tasks evaluated with this checkpoint
    task: str | None = None  # the task the expert rule is applied for (None: "all")
    knob: str | None = None  # swept knob name
    knob_value: Any = None  # its value

    @property
    def stem(self) -> str:
        """``<run_name>`` for a task-independent merge, else ``<run_name>__<group>``."""
        return self.run_name if self.group == "all" else f"{self.run_name}__{self.group}"


def merge_jobs(
    grid: Sequence[tuple[str, dict[str, Any]]],
    *,
    only_used_experts: bool = False,
    unimodal_paths: bool = False,
    tasks: Sequence[str] = TASKS,
) -> list[MergeJob]:
    """One :class:`MergeJob` per ``(method, params)`` of ``grid`` and per task group of ``tasks``."""
    jobs = []
    for method, params in grid:
        m = get_method(method)
        groups = merge_groups(
            task_dependent=m.task_dependent,
            only_used_experts=only_used_experts,
            unimodal_paths=unimodal_paths,
            tasks=tuple(tasks),
        )
        sweep = m.sweep_knob
        for group, members in groups.items():
            jobs.append(
                MergeJob(
                    method,
                    dict(params),
                    run_name(method, params),
                    group,
                    tuple(members),
                    None if group == "all" else members[0],
                    sweep.name if sweep else None,
                    params.get(sweep.name) if sweep else None,
                )
            )
    return jobs
