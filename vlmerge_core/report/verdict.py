"""A claim's verdict: its criterion, per-task rows, the tests behind it and the rules that decided it.

:func:`decide` applies :mod:`.outcomes` to a claim's tests twice, over every measured task and over
the tasks E0 marks valid stand-ins (Holm's correction then runs over those tasks only), and records
the rule that gave each verdict, so the report can quote it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from vlmerge_core.report.outcomes import TaskTest, combine, combine_parts, judge, pair_outcome
from vlmerge_core.report.schema import NOT_RUN, TASK_NAMES
from vlmerge_core.report.validity import TaskValidity, valid_tasks


@dataclass
class Verdict:
    """The judgement of one claim.

    Attributes:
        claim: ``C1`` ... ``C5``.
        title: the claim in a few words.
        criterion: what is tested, in words (margins, sets, tests).
        verdict: over every measured task; ``verdict_valid``: over the E0-valid tasks only.
        rule: the text of the rule that gave ``verdict``; ``rule_valid`` that of ``verdict_valid``.
        parts: per part of a multi-part claim, ``{"verdict": ..., "verdict_valid": ...}``.
        summary: one line of what was measured (the verdict table of ``paper/generated/verdicts.md``).
        rows: one dict per table row (task, or task and part).
        tests: the judged tests over every measured task.
        invalid_tasks: judged tasks E0 does not mark valid.
        notes: remarks shown under the claim.
        numbers: values quoted in prose (macros).
    """

    claim: str
    title: str
    criterion: str
    verdict: str = NOT_RUN
    verdict_valid: str = NOT_RUN
    rule: str = ""
    rule_valid: str = ""
    parts: dict[str, dict[str, str]] = field(default_factory=dict)
    summary: str = ""
    rows: list[dict[str, str]] = field(default_factory=list)
    tests: list[TaskTest] = field(default_factory=list)
    invalid_tasks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    numbers: dict[str, str] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """The per-task rows as a DataFrame of strings."""
        return pd.DataFrame(self.rows).set_index(list(self.rows[0])[0]) if self.rows else pd.DataFrame()

    def test(self, task: str, part: str = "") -> TaskTest | None:
        """The judged test of ``task`` (and ``part``), if any."""
        return next((t for t in self.tests if t.task == task and t.part == part), None)


def _verdict(tests: list[TaskTest], parts: Sequence[str], pair_parts: Sequence[str]) -> tuple[str, str, dict]:
    judged = judge(tests)
    per_part = {}
    for part in parts:
        ts = [t for t in judged if t.part == part]
        if part in pair_parts:
            tasks = list(dict.fromkeys(t.task for t in ts))
            outcomes = [pair_outcome([t for t in ts if t.task == task]) for task in tasks]
        else:
            outcomes = [t.outcome for t in ts]
        per_part[part] = combine(outcomes)
    if len(parts) == 1:
        verdict, rule = per_part[parts[0]]
    else:
        verdict, rule = combine_parts([v for v, _ in per_part.values()])
    return verdict, rule.text, {p: v for p, (v, _) in per_part.items()}


def task_outcomes(v: Verdict, part: str, pair: bool = False) -> dict[str, str]:
    """``{task: outcome}`` of one part over every measured task (pairs combined for a pair part)."""
    ts = [t for t in v.tests if t.part == part]
    tasks = list(dict.fromkeys(t.task for t in ts))
    if pair:
        return {task: pair_outcome([t for t in ts if t.task == task]) for task in tasks}
    return {t.task: t.outcome for t in ts}


def decide(
    v: Verdict, tests: list[TaskTest], validity: dict[str, TaskValidity], pair_parts: Sequence[str] = ()
) -> Verdict:
    """Set ``v``'s verdicts, rules, parts, judged tests and notes from its ``tests`` (every task)."""
    parts = list(dict.fromkeys(t.part for t in tests)) or [""]
    v.tests = judge(tests)
    v.verdict, v.rule, per_part = _verdict(tests, parts, pair_parts)
    valid = set(valid_tasks(validity))
    v.verdict_valid, v.rule_valid, per_valid = _verdict(
        [t for t in tests if t.task in valid], parts, pair_parts
    )
    if len(parts) > 1:
        v.parts = {p: {"verdict": per_part[p], "verdict_valid": per_valid[p]} for p in parts}
    judged = list(dict.fromkeys(t.task for t in tests if t.n > 0))
    v.invalid_tasks = [t for t in judged if t not in valid]
    if not validity or all(tv.status == NOT_RUN for tv in validity.values()):
        v.notes.append("E0 was not run: whether each task is a valid stand-in is unknown.")
    elif v.invalid_tasks:
        names = ", ".join(f"{TASK_NAMES.get(t, t)} ({validity[t].status if t in validity else NOT_RUN})"
                          for t in v.invalid_tasks)  # fmt: skip
        v.notes.append(f"Judged on tasks that E0 does not mark valid stand-ins: {names}.")
    not_run = [TASK_NAMES.get(t, t) for t in dict.fromkeys(t.task for t in tests) if t not in judged]
    if not_run and judged:
        v.notes.append(f"Not run on: {', '.join(not_run)}.")
    v.numbers.update({"verdict": v.verdict, "verdict_valid": v.verdict_valid})
    v.numbers.update({f"{p}.verdict": s["verdict"] for p, s in v.parts.items()})
    return v


def not_run(v: Verdict, reason: str) -> Verdict:
    """``v`` marked "not run" with ``reason`` as its note and summary."""
    v.verdict = v.verdict_valid = NOT_RUN
    v.notes.append(reason)
    v.summary = reason
    v.numbers.update({"verdict": NOT_RUN, "verdict_valid": NOT_RUN})
    return v
