"""E0: is each micro-world task a valid stand-in? The bar of issue 11, computed per task.

The pre-trained backbones of E0 are the init (fine-tuning seeds are its units) and the MA runs of
``ma{K}_r{r}`` (one configuration per K, pre-training replicates are its units). A task is a valid
stand-in when all five checks pass on its main metric (test split):

1. **chance**: the untrained model (random init, no fine-tuning) scores no more than
   ``max(chance_points, chance_sd x spread)`` above the task's chance level. Chance is the
   majority-class predictor (``collect.chance_rows``), the best a model without information can do,
   so the check is one-sided: an untrained model with a random head may score below it, but a score
   above it would mean the evaluation leaks the answer;
2. **pre-training matters**: the best pre-trained backbone, fine-tuned, beats the fine-tuned random
   init by more than ``pretrain_sd`` pooled standard deviations of their units (needs >= 2 units each);
3. **no ceiling**: the best fine-tuned model scores below ``ceiling`` % of the metric's 0-100 range;
4. **converged**: the validation metric gained at most ``converge_points`` points per epoch over the
   last validation interval (``val_last_gain``, split val), averaged over units, for the best
   pre-trained backbone **and** for every claim row (the recipe merge, the naive merge, both MS models,
   both MA controls, :data:`~.design.ROLES`); the details name every row group that was still climbing;
5. **discriminates**: the models the claims compare (every claim row; without a design, the pre-trained
   backbones of E0) do not all score the same: their values (test split, every unit) span more than
   ``discriminate_points``. A saturated task, where every pre-trained model lands on one value, passes
   checks 1-4 and then decides every comparison by construction (a difference of exactly 0 "holds"
   against any margin and "fails" any test of a difference).

Each check is ``pass``, ``fail`` or ``not run``; the task is ``valid`` (all pass), ``invalid`` (any
fails), ``incomplete`` (none fails, some not run) or ``not run`` (no E0 rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from vlmerge_core.report.design import ROLE_NAMES, ROLES, role_rows
from vlmerge_core.report.load import Study
from vlmerge_core.report.schema import CONVERGENCE_METRIC, NOT_RUN, TASKS, order_key
from vlmerge_core.report.select import configs, get, label, main_cells, main_metrics, unit_values, with_units
from vlmerge_core.report.stats import MISSING, Cell, cell_of, difference

PRETRAINED_KINDS = ("init", "ma")
FINETUNED_KINDS = ("random", *PRETRAINED_KINDS)
CHECKS = ("chance", "pretraining", "ceiling", "converged", "discriminates")


@dataclass(frozen=True)
class ValidityBar:
    """The thresholds of issue 11's bar (0-100 scale points)."""

    chance_points: float = 2.0  # untrained within this many points of chance ...
    chance_sd: float = 3.0  # ... or within this many of its own spreads, whichever is larger
    pretrain_sd: float = 3.0  # best pre-trained above random init by > this many pooled sds of units
    ceiling: float = 95.0  # best model below this % of the metric range
    converge_points: float = 1.0  # val metric gained at most this per epoch over the last val interval
    discriminate_points: float = 0.0  # the compared models' values span more than this


@dataclass
class TaskValidity:
    """The E0 verdict of one task, with every number each check used."""

    task: str
    metric: str = ""
    chance: float = math.nan
    untrained: Cell = MISSING
    random: Cell = MISSING
    best_pretrained: str = ""  # label of the best pre-trained configuration
    best_pretrained_cell: Cell = MISSING
    best: Cell = MISSING  # best fine-tuned configuration of any E0 kind
    gap: Cell = MISSING  # best pre-trained - random init
    pooled_sd: float = math.nan
    last_gain: Cell = MISSING  # val_last_gain of the best pre-trained backbone
    last_gains: dict[str, Cell] = field(default_factory=dict)  # every row group of the converged check
    not_converged: list[str] = field(default_factory=list)  # the row groups above the bar
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


def _best(cells: dict, mods: pd.DataFrame, kinds: tuple[str, ...], task: str) -> tuple[str, Cell]:
    ids = list(mods.loc[mods["kind"].isin(kinds), "config"])
    scored = [(get(cells, c, task), c) for c in ids if get(cells, c, task).measured]
    if not scored:
        return "", MISSING
    cell, cid = max(scored, key=lambda x: (x[0].mean, x[1]))
    return cid, cell


def _gain(rows: pd.DataFrame, task: str) -> Cell:
    return cell_of(unit_values(rows, task, CONVERGENCE_METRIC, split="val"))


def _converged(out: TaskValidity, study: Study, e0: pd.DataFrame, best_cfg: str, bar: ValidityBar) -> None:
    task = out.task
    if best_cfg:
        out.last_gain = _gain(e0[e0["config"] == best_cfg], task)
        if out.last_gain.measured:
            out.last_gains[f"best pre-trained ({out.best_pretrained})"] = out.last_gain
    if not out.last_gain.measured:
        return
    if study.design is not None:
        for role in ROLES:
            cell = _gain(role_rows(study.results, study.design, role), task)
            if cell.measured:
                out.last_gains[ROLE_NAMES[role]] = cell
    out.not_converged = [name for name, c in out.last_gains.items() if c.mean > bar.converge_points]
    out.checks["converged"] = "fail" if out.not_converged else "pass"
    gains = "; ".join(f"{name} {c.mean:.2f}" for name, c in out.last_gains.items())
    verdict = f"above the bar: {', '.join(out.not_converged)}" if out.not_converged else "all at or below"
    out.details["converged"] = f"last val gain per epoch: {gains} (bar {bar.converge_points:g}; {verdict})"


def _task_validity(task: str, metric: str, study: Study, bar: ValidityBar) -> TaskValidity:
    rows = with_units(study.experiment("E0"))
    out = TaskValidity(task, metric)
    task_rows = rows[rows["task"] == task]
    if len(task_rows) == 0:
        return out
    mods = configs(task_rows)
    cells = main_cells(task_rows)
    _, out.untrained = _best(cells, mods, ("untrained",), task)
    _, out.random = _best(cells, mods, ("random",), task)
    best_cfg, out.best_pretrained_cell = _best(cells, mods, PRETRAINED_KINDS, task)
    _, out.best = _best(cells, mods, FINETUNED_KINDS, task)
    if best_cfg:
        out.best_pretrained = label(mods.set_index("config").loc[best_cfg].to_dict())
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
            out.details["pretraining"] = "needs >= 2 units of both models"
    # 3. ceiling
    if out.best.measured:
        out.checks["ceiling"] = "pass" if out.best.mean < bar.ceiling else "fail"
        out.details["ceiling"] = f"best {out.best.mean:.1f} vs {bar.ceiling:g}"
    # 4. converged
    _converged(out, study, task_rows, best_cfg, bar)
    # 5. discriminates
    _discriminates(out, study, task_rows, mods, bar)
    return out


def _discriminates(
    out: TaskValidity, study: Study, e0: pd.DataFrame, mods: pd.DataFrame, bar: ValidityBar
) -> None:
    """Check 5: the claim rows (without a design: E0's pre-trained backbones) do not all score the same."""
    task = out.task
    groups, what = [], "claim rows"
    if study.design is not None:
        groups = [unit_values(role_rows(study.results, study.design, role), task) for role in ROLES]
    if not any(len(g) for g in groups):
        pretrained = sorted(set(mods.loc[mods["kind"].isin(PRETRAINED_KINDS), "config"]))
        groups, what = [unit_values(e0[e0["config"] == c], task) for c in pretrained], "pre-trained models"
    measured = [g for g in groups if len(g)]
    values = pd.concat(measured) if measured else pd.Series(dtype=float)
    if len(values) < 2:
        return
    span = float(values.max() - values.min())
    out.checks["discriminates"] = "pass" if span > bar.discriminate_points else "fail"
    out.details["discriminates"] = (
        f"{len(values)} values of the {what} span {values.min():.1f}-{values.max():.1f}"
        f" ({span:.2f} points vs more than {bar.discriminate_points:g})"
    )


def e0_validity(study: Study, bar: ValidityBar | None = None) -> dict[str, TaskValidity]:
    """``{task: TaskValidity}`` for every task of the study (``not run`` where E0 has no rows)."""
    bar = bar or ValidityBar()
    if not study.has("results"):
        return {}
    mains = main_metrics(study.results)
    return {t: _task_validity(t, mains[t], study, bar) for t in order_key(list(mains), TASKS)}


def valid_tasks(validity: dict[str, TaskValidity]) -> list[str]:
    """The tasks E0 marks valid stand-ins."""
    return [t for t, v in validity.items() if v.status == "valid"]


def invalid_tasks(validity: dict[str, TaskValidity], tasks) -> list[str]:
    """The tasks among ``tasks`` that E0 does not mark valid (invalid, incomplete or not run)."""
    return [t for t in tasks if t not in validity or validity[t].status != "valid"]
