"""E0: is each micro-world task a valid stand-in? The bar of issue 11, computed per task.

A task is a valid stand-in when all four checks pass on its main metric:

1. **chance**: the untrained model (random init, no fine-tuning) scores no more than
   ``max(chance_points, chance_sd x spread)`` above the task's chance level. Chance is the
   majority-class predictor (``collect.chance_rows``), the best a model without information can do,
   so the check is one-sided: an untrained model with a random head may score below it (ADE20k's
   random head: mIoU 10.9 against the majority class's 15.3), but a score above it would mean the
   evaluation leaks the answer;
2. **pre-training matters**: the best pre-trained backbone (init, seed or MA baseline), fine-tuned,
   beats the fine-tuned random init by more than ``pretrain_sd`` pooled standard deviations of the
   fine-tuning seeds (needs >= 2 seeds of each);
3. **no ceiling**: the best fine-tuned model scores below ``ceiling`` % of the metric's 0-100 range;
4. **converged**: the best pre-trained model's val metric gained at most ``converge_points`` points
   per epoch over its last validation interval (``val_last_gain``; the interval is
   ``finetune.val_every`` epochs), averaged over fine-tuning seeds.

Each check is ``pass``, ``fail`` or ``not run``; the task is ``valid`` (all pass), ``invalid`` (any
fails), ``incomplete`` (none fails, some not run) or ``not run`` (no E0 rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from vlmerge_core.report.load import Study
from vlmerge_core.report.schema import CONVERGENCE_METRIC, NOT_RUN, TASKS, order_key
from vlmerge_core.report.select import get, label, main_metrics, models
from vlmerge_core.report.stats import MISSING, Cell, aggregate, difference

PRETRAINED_KINDS = ("init", "seed", "ma_baseline")
FINETUNED_KINDS = ("random", *PRETRAINED_KINDS)
CHECKS = ("chance", "pretraining", "ceiling", "converged")


@dataclass(frozen=True)
class ValidityBar:
    """The thresholds of issue 11's bar (0-100 scale points)."""

    chance_points: float = 2.0  # untrained within this many points of chance ...
    chance_sd: float = 3.0  # ... or within this many of its own spreads, whichever is larger
    pretrain_sd: float = 3.0  # best pre-trained above random init by > this many pooled seed sds
    ceiling: float = 95.0  # best model below this % of the metric range
    converge_points: float = 1.0  # val metric gained at most this per epoch over the last val interval


@dataclass
class TaskValidity:
    """The E0 verdict of one task, with every number each check used."""

    task: str
    metric: str = ""
    chance: float = math.nan
    untrained: Cell = MISSING
    random: Cell = MISSING
    best_pretrained: str = ""  # label of the best pre-trained model
    best_pretrained_cell: Cell = MISSING
    best: Cell = MISSING  # best fine-tuned model of any kind
    gap: Cell = MISSING  # best pre-trained - random init
    pooled_sd: float = math.nan
    last_gain: Cell = MISSING
    checks: dict[str, str] = field(default_factory=lambda: dict.fromkeys(CHECKS, NOT_RUN))
    details: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> str:
        values = list(self.checks.values())
        if all(v == NOT_RUN for v in values):
            return NOT_RUN
        if "fail" in values:
            return "invalid"
        return "valid" if all(v == "pass" for v in values) else "incomplete"


def _best(cells: dict, ids: list[str], task: str) -> tuple[str, Cell]:
    scored = [(get(cells, m, task), m) for m in ids if get(cells, m, task).measured]
    if not scored:
        return "", MISSING
    cell, mid = max(scored, key=lambda x: (x[0].mean, x[1]))
    return mid, cell


def _task_validity(task: str, metric: str, study: Study, bar: ValidityBar) -> TaskValidity:
    rows = study.experiment("E0")
    out = TaskValidity(task, metric)
    task_rows = rows[rows["task"] == task]
    if len(task_rows) == 0:
        return out
    mods = models(task_rows)
    cells = {(m, t): c for (m, t, _), c in aggregate(task_rows[task_rows["metric"] == metric]).items()}
    of_kind = lambda *kinds: list(mods.loc[mods["kind"].isin(kinds), "model_id"])  # noqa: E731
    _, out.untrained = _best(cells, of_kind("untrained"), task)
    _, out.random = _best(cells, of_kind("random"), task)
    best_pt, out.best_pretrained_cell = _best(cells, of_kind(*PRETRAINED_KINDS), task)
    _, out.best = _best(cells, of_kind(*FINETUNED_KINDS), task)
    if best_pt:
        out.best_pretrained = label(mods.set_index("model_id").loc[best_pt].to_dict() | {"model_id": best_pt})
    if study.has("chance"):
        ch = study.chance[(study.chance["task"] == task) & (study.chance["metric"] == metric)]
        out.chance = float(ch["value"].iloc[0]) if len(ch) else math.nan
    # 1. chance
    u = out.untrained
    if u.measured and not math.isnan(out.chance):
        spread = 0.0 if math.isnan(u.spread) else u.spread
        tol = max(bar.chance_points, bar.chance_sd * spread)
        dev = u.mean - out.chance
        out.checks["chance"] = "pass" if dev <= tol else "fail"
        out.details["chance"] = f"{u.mean:.1f} - {out.chance:.1f} = {dev:+.1f} vs at most +{tol:.1f}"
    # 2. pre-training matters
    b, r = out.best_pretrained_cell, out.random
    out.gap = difference(b, r)
    if b.measured and r.measured:
        if b.kind == "sd" and r.kind == "sd":
            out.pooled_sd = math.sqrt((b.spread**2 + r.spread**2) / 2)
            need = bar.pretrain_sd * out.pooled_sd
            out.checks["pretraining"] = "pass" if out.gap.mean > need else "fail"
            out.details["pretraining"] = f"gap {out.gap.mean:.1f} vs {bar.pretrain_sd:g} sd = {need:.1f}"
        else:
            out.details["pretraining"] = "needs >= 2 fine-tuning seeds of both models"
    # 3. ceiling
    if out.best.measured:
        out.checks["ceiling"] = "pass" if out.best.mean < bar.ceiling else "fail"
        out.details["ceiling"] = f"best {out.best.mean:.1f} vs {bar.ceiling:g}"
    # 4. converged
    if best_pt:
        conv = task_rows[(task_rows["model_id"] == best_pt) & (task_rows["metric"] == CONVERGENCE_METRIC)]
        if len(conv):
            out.last_gain = next(iter(aggregate(conv).values()))
            ok = out.last_gain.mean <= bar.converge_points
            out.checks["converged"] = "pass" if ok else "fail"
            out.details["converged"] = (
                f"last val gain {out.last_gain.mean:.2f} per epoch vs {bar.converge_points:g}"
            )
    return out


def e0_validity(study: Study, bar: ValidityBar | None = None) -> dict[str, TaskValidity]:
    """``{task: TaskValidity}`` for every task of the study (``not run`` where E0 has no rows)."""
    bar = bar or ValidityBar()
    if not study.has("results"):
        return {}
    mains = main_metrics(study.results)
    return {t: _task_validity(t, mains[t], study, bar) for t in order_key(list(mains), TASKS)}


def invalid_tasks(validity: dict[str, TaskValidity], tasks) -> list[str]:
    """The tasks among ``tasks`` that E0 does not mark valid (invalid, incomplete or not run)."""
    return [t for t in tasks if t not in validity or validity[t].status != "valid"]
