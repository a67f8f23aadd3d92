"""C5: merging method and architecture change the outcome (the paper's orderings: not found).

Two parts, each judged by :data:`~.outcomes.PAIR_RULES` on every task and combined by the part rule:

* **methods**: every pair of the recipe's methods (each at its default knob) merged from the same
  recipe replicates, compared by a paired t-test over the replicates; Holm across every pair and task;
* **architecture**: every pair of MS variants, compared by their drops from merging (MS - the recipe's
  merge), paired by replicate. The variants are pre-trained for one replicate only, so with n = 1 no
  pair reaches the minimum number of replicates and the part is inconclusive by the rule; single
  runs' bootstrap spreads are never compared with replicate spreads.
"""

from __future__ import annotations

from itertools import combinations

import pandas as pd

from vlmerge_core.report.design import Design
from vlmerge_core.report.e2 import default_configs
from vlmerge_core.report.e3 import drop_units, e3_tasks
from vlmerge_core.report.outcomes import MIN_UNITS, TaskTest
from vlmerge_core.report.schema import METHOD_NAMES, NOT_FOUND, TASK_NAMES, VARIANT_NAMES
from vlmerge_core.report.select import main_metrics, unit_values, with_units
from vlmerge_core.report.stats import one_sample, paired
from vlmerge_core.report.validity import TaskValidity
from vlmerge_core.report.verdict import Verdict, decide, task_outcomes

PARTS = ("methods", "architecture")


def _pair_test(task: str, part: str, a: pd.Series, b: pd.Series, margin: float) -> tuple[TaskTest, str]:
    p = paired(a, b)
    return TaskTest(task, part, p.n, p.mean, p.p, 0.0, 1, lo=p.lo, hi=p.hi, equivalence=margin), p.fmt()


def judge_c5(results: pd.DataFrame, d: Design, validity: dict[str, TaskValidity], margin: float) -> Verdict:
    """C5: pairs of methods over the recipe replicates, pairs of variants by their drop from merging."""
    names = ", ".join(METHOD_NAMES.get(m, m) for m in d.recipe_methods)
    v = Verdict("C5", "Merging method and architecture change the outcome",
                "The paper's orderings are not found, so only the existence of each effect is judged, not its "
                f"direction. Methods: on every task, some pair of the recipe's methods ({names}; each at its "
                "default knob) differs, paired over the recipe replicates. Architecture: on every task, some pair "
                "of MS variants differs in its drop from merging (MS - the recipe's merge), paired by replicate. "
                f"A task fails a part when every pair is equivalent within {margin:g} points. Both parts must be "
                "reproduced.")  # fmt: skip
    rows = with_units(results)
    cfg = default_configs(results, d)
    drops = drop_units(results, d.recipe_method)
    tests: list[TaskTest] = []
    shown: dict[tuple[str, str], list[str]] = {}
    for t in main_metrics(results):
        vals = {m: unit_values(rows[rows["config"] == c], t) for m, c in cfg.items()}
        for a, b in combinations([m for m in d.recipe_methods if m in vals], 2):
            test, text = _pair_test(t, "methods", vals[a], vals[b], margin)
            tests.append(test)
            shown.setdefault((t, "methods"), []).append(
                f"{METHOD_NAMES.get(a, a)} - {METHOD_NAMES.get(b, b)} {text}"
            )
        dv = {var: by[t] for var, by in drops.items() if t in by and len(by[t])}
        for a, b in combinations(dv, 2):
            tests.append(_pair_test(t, "architecture", dv[a], dv[b], margin)[0])
        shown[(t, "architecture")] = [
            f"{VARIANT_NAMES.get(var, var)} {one_sample(s).fmt()}" for var, s in dv.items()
        ]
        if not any(x.task == t and x.part == "architecture" for x in tests):
            tests.append(TaskTest(t, "architecture", 0))
        if not any(x.task == t and x.part == "methods" for x in tests):
            tests.append(TaskTest(t, "methods", 0))
    decide(v, tests, validity, pair_parts=PARTS)
    outs = {p: task_outcomes(v, p, pair=True) for p in PARTS}
    for t, metric in main_metrics(results).items():
        v.rows.append({"task": TASK_NAMES.get(t, t), "metric": metric,
                       "methods: pairwise differences [95 % t]": "; ".join(shown.get((t, "methods"), [])) or "—",
                       "methods, paper": NOT_FOUND, "methods outcome": outs["methods"].get(t, "not run"),
                       "variants: drop from merging": "; ".join(shown.get((t, "architecture"), [])) or "—",
                       "variants, paper": NOT_FOUND, "architecture outcome": outs["architecture"].get(t, "not run")})  # fmt: skip
    units = {var: sorted({int(u) for s in by.values() for u in s.index}) for var, by in drops.items()}
    few = [VARIANT_NAMES.get(var, var) for var, u in units.items() if len(u) < MIN_UNITS]
    if few:
        counts = "; ".join(f"{VARIANT_NAMES.get(k, k)} {len(u)}" for k, u in units.items())
        shown = [
            t
            for t in e3_tasks(results)
            if any(len(by.get(t, ())) for var, by in drops.items() if var != "all")
        ]
        tasks = ", ".join(TASK_NAMES.get(t, t) for t in shown) or "none"
        v.notes.append(f"Architecture: {', '.join(few)} had fewer than {MIN_UNITS} pre-training replicates "
                       f"(replicates per variant: {counts}), so no pair of variants can be tested on a replicate "
                       f"spread and the part is inconclusive by the rule; the drops (tasks: {tasks}) are shown, "
                       "not judged.")  # fmt: skip
    v.summary = "; ".join(f"{p}: {v.parts.get(p, {}).get('verdict', 'not run')}" for p in PARTS)
    return v
