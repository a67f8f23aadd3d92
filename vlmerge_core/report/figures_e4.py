"""Figures of E4: the merged score against each distance of the E4 grid (one panel per distance and
task, every MS model a point, Spearman's rho and its permutation p-value in the title), and the
per-block rank correlations as a heatmap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from scipy import stats

from vlmerge_core.figstyle import not_run_figure, styled, subplots
from vlmerge_core.report.colors import PALETTE
from vlmerge_core.report.design import Design
from vlmerge_core.report.e4 import e4_points
from vlmerge_core.report.schema import DISTANCE_METRICS, TASK_NAMES, TASKS, order_key
from vlmerge_core.report.stats import fmt_p


def _title(metric: str, task: str, res: dict | None) -> str:
    head = f"{metric} · {TASK_NAMES.get(task, task)}"
    if not res or res.get("rho") is None:
        return f"{head}\nrho —"
    how = "exact" if res["exact"] else "MC"
    return f"{head}\nrho {res['rho']:+.2f}, p {fmt_p(res['p_value'])} ({how}), n {res['n']}"


@styled
def fig_e4_scatter(points: pd.DataFrame, corr: dict[tuple[str, str], dict]) -> Figure:
    """E4: one panel per distance (rows) and task (columns): the merged score of every MS model of the
    E4 grid against its total distance, coloured by what the run varies; Spearman's rho with its
    two-sided permutation p-value (exact or Monte Carlo) and n in each title."""
    pts = points[points["in_grid"]] if len(points) else points
    if len(pts) == 0:
        return not_run_figure("E4: distance vs merged score", "no E4 merges or distances")
    metrics = order_key(list(pts["metric"]), DISTANCE_METRICS)
    tasks = order_key(list(pts["task"]), TASKS)
    groups = sorted(pts["group"].unique(), key=lambda g: (g != "recipe replicate", g))
    fig, axes = subplots(len(metrics), len(tasks), 2.0 * len(tasks), 1.75 * len(metrics))
    for i, metric in enumerate(metrics):
        for j, task in enumerate(tasks):
            ax = axes[i, j]
            p = pts[(pts["metric"] == metric) & (pts["task"] == task)]
            for k, g in enumerate(groups):
                q = p[p["group"] == g]
                ax.scatter(q["distance"], q["score"], s=10, color=PALETTE[k % len(PALETTE)], label=g, lw=0)
            ax.set_title(_title(metric, task, corr.get((metric, task), {}).get("spearman")), fontsize=6.5)
            ax.set_xlabel(f"{metric} (total)", fontsize=6.5)
            if j == 0:
                ax.set_ylabel("merged score")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(5, max(1, len(labels))), frameon=False)
    return fig


@styled
def fig_e4_layers(results: pd.DataFrame, distances: pd.DataFrame, d: Design) -> Figure:
    """E4 per layer: Spearman's rho between each block's distance and the merged score averaged over the
    tasks every MS model of the E4 grid has (heatmap, metric x block; no test here: see the E4 table)."""
    blocks = sorted({s for s in distances["scope"] if s.startswith("block")}, key=lambda s: int(s[5:] or 0))
    if len(results) == 0 or not blocks:
        return not_run_figure("E4: per-layer distances", "no E4 merges or per-block distances")
    metrics = [m for m in DISTANCE_METRICS if m in set(distances["metric"])]
    rho = pd.DataFrame(np.nan, index=metrics, columns=[s[5:] for s in blocks])
    n_tasks = 0
    for scope in blocks:
        pts = e4_points(results, distances, d, scope)
        pts = pts[pts["in_grid"]]
        if len(pts) == 0:
            continue
        per = pts.pivot_table(index=["ms_model", "metric"], columns="task", values="score").dropna(axis=1)
        n_tasks = per.shape[1]
        score = per.mean(axis=1)
        dist = pts.groupby(["ms_model", "metric"])["distance"].first()
        for metric in metrics:
            x, y = dist.xs(metric, level="metric"), score.xs(metric, level="metric")
            if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
                rho.loc[metric, scope[5:]] = float(stats.spearmanr(x, y.loc[x.index]).statistic)
    if rho.isna().all().all():
        return not_run_figure("E4: per-layer distances", "no E4 points per block")
    fig, axes = subplots(1, 1, 0.45 * len(blocks) + 1.6, 0.35 * len(metrics) + 1.0)
    sns.heatmap(rho, ax=axes[0, 0], vmin=-1, vmax=1, cmap="vlag", annot=True, fmt=".2f", annot_kws={"size": 6},
                cbar_kws={"label": "Spearman rho"})  # fmt: skip
    axes[0, 0].set_xlabel("block")
    axes[0, 0].set_ylabel("distance")
    axes[0, 0].set_title(f"E4 grid vs merged score, mean of {n_tasks} tasks")
    return fig
