"""The rules that turn tests into outcomes and outcomes into verdicts, and the text that states them.

Every rule is a :class:`Rule`: an outcome, its definition in words and the predicate that applies it.
The judging functions evaluate the rules in order and take the first that applies; :func:`rule_markdown`
prints the same tuples, so the rule the report states and the rule the code applies are one text
(DESIGN.md §11).

* A **test** (:class:`TaskTest`) is one task of one claim (or of one part of a claim): a paired difference
  over replicates against a margin, or a rank correlation against zero, with its unadjusted two-sided
  p-value. Within a family (the tasks of one claim part) p-values are Holm-adjusted.
* :data:`TASK_RULES` give each test an outcome: holds / fails / inconclusive / not run.
* :data:`CLAIM_RULES` combine a claim's task outcomes into its verdict: reproduced / not reproduced /
  mixed / inconclusive / not run; :data:`PART_RULES` combine the verdicts of a claim's parts (C2's two
  MA controls, C3's two distances, C5's methods and architecture).
* :data:`PAIR_RULES` (C5) turn the pairwise method comparisons of one task into its outcome.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from vlmerge_core.analysis.correlation import EXACT_MAX, MIN_BOOTSTRAP_POINTS, N_PERMUTATIONS
from vlmerge_core.report.schema import NOT_RUN
from vlmerge_core.report.stats import CONFIDENCE, holm

ALPHA = 0.05  # significance level after Holm's correction
MIN_UNITS = 3  # replicates paired by pt_seed, for a difference
MIN_POINTS = 5  # points (pre-trained models), for a rank correlation
HOLDS, FAILS, INCONCLUSIVE = "holds", "fails", "inconclusive"
REPRODUCED, NOT_REPRODUCED, MIXED = "reproduced", "not reproduced", "mixed"
TASK_OUTCOMES = (HOLDS, FAILS, INCONCLUSIVE, NOT_RUN)
VERDICTS = (REPRODUCED, NOT_REPRODUCED, MIXED, INCONCLUSIVE, NOT_RUN)


@dataclass(frozen=True)
class Rule:
    """An outcome, its definition in words, and the predicate that applies it."""

    outcome: str
    text: str
    applies: Callable[[Any], bool]


@dataclass(frozen=True)
class TaskTest:
    """One statistical test of a claim on one task.

    Attributes:
        task: the task.
        part: the part of the claim it belongs to ("" for a one-part claim).
        n: units measured (pairs of replicates, or points of a correlation).
        estimate: the mean difference or the correlation (NaN when not measured).
        p: two-sided p-value of "estimate = null" (NaN when it cannot be computed).
        null: the margin of a difference, 0 for a correlation.
        direction: +1 when the claim expects ``estimate > null``, -1 when ``<``.
        min_n: the fewest units the test needs (:data:`MIN_UNITS` or :data:`MIN_POINTS`).
        lo: lower end of a difference's 95 % t-interval (NaN for correlations).
        hi: upper end.
        equivalence: the margin of practical equivalence of :data:`PAIR_RULES` (NaN: not used).
        p_adj: the Holm-adjusted p-value within its family (set by :func:`judge`).
        outcome: set by :func:`judge`.
    """

    task: str
    part: str = ""
    n: int = 0
    estimate: float = math.nan
    p: float = math.nan
    null: float = 0.0
    direction: int = 1
    min_n: int = MIN_UNITS
    lo: float = math.nan
    hi: float = math.nan
    equivalence: float = math.nan
    p_adj: float = math.nan
    outcome: str = NOT_RUN

    @property
    def side(self) -> int:
        """+1 above the null, -1 below, 0 on it or unmeasured."""
        if math.isnan(self.estimate) or self.estimate == self.null:
            return 0
        return 1 if self.estimate > self.null else -1

    @property
    def decidable(self) -> bool:
        return self.n >= self.min_n and not math.isnan(self.p)

    @property
    def equivalent(self) -> bool:
        """Its interval lies inside plus or minus ``equivalence``."""
        return self.decidable and max(abs(self.lo), abs(self.hi)) < self.equivalence


def _pct(x: float) -> str:
    return f"{100 * x:g} %"


TASK_RULES: tuple[Rule, ...] = (
    Rule(NOT_RUN, "nothing was measured on the task (no unit on one side of the comparison)", lambda t: t.n == 0),
    Rule(INCONCLUSIVE, f"too few units to decide: fewer than {MIN_UNITS} replicates paired by `pt_seed` for a "
         f"difference, fewer than {MIN_POINTS} pre-trained models for a rank correlation (at {MIN_POINTS - 1} "
         f"points the exact two-sided permutation p-value cannot go below 2/{math.factorial(MIN_POINTS - 1)}), "
         "or no p-value (constant data)",
         lambda t: not t.decidable),
    Rule(HOLDS, "the estimate lies on the claimed side of the margin and the two-sided test of \"estimate = "
         f"margin\" rejects at {_pct(ALPHA)} after Holm's correction across the tasks of the claim (Holm-adjusted "
         f"p < {ALPHA:g}; for one task, a paired difference's {_pct(CONFIDENCE)} t-interval then excludes the margin)",
         lambda t: t.p_adj < ALPHA and t.side == t.direction),
    Rule(FAILS, f"the estimate lies on the other side of the margin and the same test rejects (Holm-adjusted p < "
         f"{ALPHA:g})", lambda t: t.p_adj < ALPHA and t.side == -t.direction),
    Rule(INCONCLUSIVE, "otherwise: the data do not separate the effect from the margin (its interval spans the "
         "margin)", lambda t: True),
)  # fmt: skip

CLAIM_RULES: tuple[Rule, ...] = (
    Rule(NOT_RUN, "no task was measured (missing metrics never count for or against a claim)",
         lambda c: c[HOLDS] + c[FAILS] + c[INCONCLUSIVE] == 0),
    Rule(REPRODUCED, "every measured task holds", lambda c: c[HOLDS] == c[HOLDS] + c[FAILS] + c[INCONCLUSIVE]),
    Rule(MIXED, "at least one task holds and at least one does not (fails or is inconclusive)",
         lambda c: c[HOLDS] > 0),
    Rule(NOT_REPRODUCED, "no task holds and at least one fails", lambda c: c[FAILS] > 0),
    Rule(INCONCLUSIVE, "every measured task is inconclusive", lambda c: True),
)  # fmt: skip

PART_RULES: tuple[Rule, ...] = (
    Rule(NOT_RUN, "no part was run", lambda ps: all(p == NOT_RUN for p in ps)),
    Rule(REPRODUCED, "every part is reproduced", lambda ps: all(p == REPRODUCED for p in ps)),
    Rule(NOT_REPRODUCED, "every part is not reproduced", lambda ps: all(p == NOT_REPRODUCED for p in ps)),
    Rule(INCONCLUSIVE, "every part is inconclusive or not run", lambda ps: all(p in (INCONCLUSIVE, NOT_RUN) for p in ps)),
    Rule(MIXED, "otherwise: the parts disagree, or a part was not run beside a decided one", lambda ps: True),
)  # fmt: skip

PAIR_RULES: tuple[Rule, ...] = (
    Rule(NOT_RUN, "no pair of methods was measured on the task", lambda ts: all(t.n == 0 for t in ts)),
    Rule(INCONCLUSIVE, f"no pair has {MIN_UNITS} replicates", lambda ts: not any(t.decidable for t in ts)),
    Rule(HOLDS, "at least one pair of methods differs: its paired two-sided t-test has a Holm-adjusted p < "
         f"{ALPHA:g} (Holm across every pair and task)", lambda ts: any(t.p_adj < ALPHA for t in ts)),
    Rule(FAILS, f"every pair is equivalent: each pair's {_pct(CONFIDENCE)} t-interval lies inside plus or minus "
         "the report's margin (`report.c2_margin`)", lambda ts: all(t.equivalent for t in ts)),
    Rule(INCONCLUSIVE, "otherwise", lambda ts: True),
)  # fmt: skip


def first_rule(rules: Sequence[Rule], x: Any) -> Rule:
    """The first rule of ``rules`` that applies to ``x`` (the last one always applies)."""
    return next(r for r in rules if r.applies(x))


def judge(tests: Iterable[TaskTest]) -> list[TaskTest]:
    """``tests`` with ``p_adj`` (Holm within each part, over its decidable tests) and ``outcome`` set."""
    tests = list(tests)
    out = list(tests)
    for part in dict.fromkeys(t.part for t in tests):
        idx = [i for i, t in enumerate(tests) if t.part == part and t.decidable]
        for i, pa in zip(idx, holm([tests[i].p for i in idx])):
            out[i] = replace(tests[i], p_adj=pa)
    return [replace(t, outcome=first_rule(TASK_RULES, t).outcome) for t in out]


def combine(outcomes: Iterable[str]) -> tuple[str, Rule]:
    """A claim's verdict from its task outcomes, and the rule that gave it (:data:`CLAIM_RULES`)."""
    outcomes = list(outcomes)
    unknown = set(outcomes) - set(TASK_OUTCOMES)
    if unknown:
        raise ValueError(f"task outcomes must be in {TASK_OUTCOMES}, got {sorted(unknown)}")
    counts = {o: outcomes.count(o) for o in TASK_OUTCOMES}
    rule = first_rule(CLAIM_RULES, counts)
    return rule.outcome, rule


def combine_parts(verdicts: Iterable[str]) -> tuple[str, Rule]:
    """A claim's verdict from the verdicts of its parts (:data:`PART_RULES`)."""
    rule = first_rule(PART_RULES, list(verdicts))
    return rule.outcome, rule


def pair_outcome(tests: Sequence[Any]) -> str:
    """One task's C5 methods outcome from its judged pairwise tests (:data:`PAIR_RULES`)."""
    return first_rule(PAIR_RULES, list(tests)).outcome


def _list(rules: Sequence[Rule]) -> str:
    return "\n".join(f"{i}. **{r.outcome}**: {r.text};" for i, r in enumerate(rules, 1)).rstrip(";") + "."


def rule_markdown() -> str:
    """The verdict rule as the report states it, generated from the rules the code applies."""

    exact_n = max(n for n in range(1, 13) if math.factorial(n) <= EXACT_MAX)
    return f"""\
**How a claim is judged.** Each claim is judged task by task on the task's main metric (test split).
The unit is a pre-trained model: a claim row's replicates are pre-training runs with different RNG
seeds (`pt_seed`), each fine-tuned once. A comparison of two rows is the mean of their differences
paired by replicate, with its {_pct(CONFIDENCE)} t-interval and the two-sided t-test of "difference =
margin" (`scipy.stats.t`, n - 1 degrees of freedom). A rank correlation is Spearman's rho (average ranks
for ties) over pre-trained models, with a two-sided permutation p-value: every permutation when n <=
{exact_n} (exact), else a Monte Carlo test with {N_PERMUTATIONS} random permutations (seeded; p = (hits + 1) /
(N + 1)); each p-value says which. No bootstrap interval is given on fewer than {MIN_BOOTSTRAP_POINTS} points. Holm's correction runs across the tasks of each claim (or of each part of
it).

Each task's outcome is the first of these that applies:

{_list(TASK_RULES)}

A claim's verdict is the first of these that applies to its task outcomes (tasks not run are listed
and left out):

{_list(CLAIM_RULES)}

A claim with parts (C2: one per MA control; C3: one per distance; C5: methods and architecture) gets a
verdict per part by the rule above, and the claim's verdict is the first of these that applies:

{_list(PART_RULES)}

C5's methods part: on each task, every pair of the recipe's methods (each at its default knob) is
compared over the recipe replicates (margin 0, two-sided), and the task's outcome is the first of these
that applies:

{_list(PAIR_RULES)}

Every verdict is given over every measured task and again over the tasks E0 marks valid stand-ins;
Holm's correction then runs over those tasks only.
"""
