"""Figures of E1 (score vs K_seed) and E2 (score vs each method's knob, picked on validation).

Each ``fig_<name>`` takes the collected metrics and the design and returns a pyplot-free ``Figure`` in
the paper style. Replicates are drawn as points, their mean with its 95 % t-interval as error bars;
reference rows (MS, both MA controls) as lines with their t-interval as a band.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from vlmerge_core.figstyle import not_run_figure, styled, subplots
from vlmerge_core.report.colors import BASELINE_COLORS, BASELINE_STYLES, color
from vlmerge_core.report.design import ROLE_NAMES, Design, role_rows
from vlmerge_core.report.e1 import e1_recipe
from vlmerge_core.report.e2 import best_of_methods
from vlmerge_core.report.schema import METHOD_NAMES, TASK_NAMES
from vlmerge_core.report.select import main_metrics, seed_label, unit_values
from vlmerge_core.report.stats import t_interval


def grid(n: int, cols: int, w: float = 1.9, h: float = 1.6) -> tuple[Figure, np.ndarray]:
    """A figure with ``n`` panels in rows of ``cols`` (spare axes switched off)."""
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = subplots(rows, cols, w * cols, h * rows)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    return fig, axes


def band(ax, values: pd.Series, role: str, name: str) -> None:
    """A reference row: its mean as a line, its 95 % t-interval as a band."""
    mean, lo, hi = t_interval(values)
    if math.isnan(mean):
        return
    c = BASELINE_COLORS[role]
    ax.axhline(mean, color=c, ls=BASELINE_STYLES[role], lw=1, label=name)
    if not math.isnan(lo):
        ax.axhspan(lo, hi, color=c, alpha=0.08, lw=0)


def _jitter(n: int, width: float = 0.18) -> np.ndarray:
    return np.zeros(n) if n < 2 else np.linspace(-width / 2, width / 2, n)


@styled
def fig_e1_seed(results: pd.DataFrame, d: Design) -> Figure:
    """E1: the recipe merge's score on each task vs K_seed (0 = naive): every replicate as a point, the
    mean with its 95 % t-interval; the unmerged MS models as markers; the paper's MA baseline and the
    compute-matched MA as horizontal bands (mean, 95 % t-interval)."""
    rows = e1_recipe(results, d)
    if len(rows) == 0:
        return not_run_figure("E1: score vs K_seed", "no E1 merges in results.csv")
    mains = main_metrics(results)
    ks = sorted({0, *d.seed_lengths} | {int(k) for k in rows["seed_steps"].dropna()})
    pos = {k: i for i, k in enumerate(ks)}
    fig, axes = grid(len(mains), 4, 2.1, 1.8)
    c = color(d.recipe_method)
    for ax, (task, metric) in zip(axes.flat, mains.items()):
        xs, means, errs = [], [], []
        for k in ks:
            v = unit_values(rows[rows["seed_steps"].astype("Float64") == k], task)
            if not len(v):
                continue
            ax.scatter(pos[k] + _jitter(len(v)), v.to_numpy(), s=6, color=c, alpha=0.5, lw=0,
                       label="replicates" if not xs else None)  # fmt: skip
            mean, lo, hi = t_interval(v)
            xs.append(pos[k])
            means.append(mean)
            errs.append(0.0 if math.isnan(lo) else hi - mean)
        ax.errorbar(xs, means, yerr=errs, marker="o", ms=3, capsize=2, lw=1, color=c,
                    label=f"{METHOD_NAMES.get(d.recipe_method, d.recipe_method)} (mean, 95 % t)")  # fmt: skip
        for role, k in (("ms_naive", 0), ("ms_recipe", d.recipe_seed)):
            mean, lo, hi = t_interval(unit_values(role_rows(results, d, role), task))
            if not math.isnan(mean):
                ax.errorbar([pos[k] + 0.25], [mean], yerr=[0.0 if math.isnan(lo) else hi - mean], marker="s", ms=3,
                            mfc="none", capsize=2, lw=0.8, color=BASELINE_COLORS[role], label=ROLE_NAMES[role])  # fmt: skip
        for role in ("ma_baseline", "ma_matched"):
            band(ax, unit_values(role_rows(results, d, role), task), role,
                 f"{ROLE_NAMES[role]} ({d.pretrain_steps[role]} steps)")  # fmt: skip
        ax.set_xticks(range(len(ks)), [seed_label(k) for k in ks])
        ax.set_title(TASK_NAMES.get(task, task))
        ax.set_xlabel("K_seed (steps)")
        ax.set_ylabel(metric)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(3, max(1, len(labels))), frameon=False)
    return fig


@styled
def fig_e2_methods(results: pd.DataFrame, d: Design) -> Figure:
    """E2: the merged score vs each method's knob, one panel per (task, method) that was swept (two or
    more knob values): test (solid, mean ± sd over its replicates) and validation (dashed) scores, the
    knob picked on validation starred, the unmerged MS model and the MA baseline as bands."""
    panels = [(t, name, p) for name, picks in best_of_methods(results, d).items()
              for t, p in picks.items() if p.n_knobs >= 2]  # fmt: skip
    if not panels:
        return not_run_figure("E2: score vs knob", "no knob sweep (two or more knob values) in results.csv")
    mains = main_metrics(results)
    fig, axes = grid(len(panels), 4, 1.9, 1.7)
    for ax, (task, name, pick) in zip(axes.flat, panels):
        kv = [x for x, _, _, _ in pick.curve]
        test = [c for _, _, c, _ in pick.curve]
        col = color(pick.method)
        ax.errorbar(kv, [c.mean for c in test], yerr=[0.0 if math.isnan(c.spread) else c.spread for c in test],
                    marker="o", ms=3, capsize=2, lw=1, color=col, label="test")  # fmt: skip
        ax.plot(
            kv, [v for _, v, _, _ in pick.curve], ls="--", lw=0.8, marker="x", ms=3, color=col, label="val"
        )
        best = next(i for i, x in enumerate(pick.curve) if x[3] == pick.config)
        ax.plot([kv[best]], [test[best].mean], marker="*", ms=9, color="black", lw=0, label="picked on val")
        for role in ("ms_recipe", "ma_baseline"):
            band(ax, unit_values(role_rows(results, d, role), task), role, ROLE_NAMES[role])
        ax.set_title(f"{name}\n{TASK_NAMES.get(task, task)}", fontsize=7)
        ax.set_xlabel(pick.knob.split("=")[0])
        ax.set_ylabel(mains[task])
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(5, max(1, len(labels))), frameon=False)
    return fig
