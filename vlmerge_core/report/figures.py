"""Figures of E1 (score vs K_seed), E2 (score vs each method's knob) and E4 (distances vs score).

Each ``fig_<name>`` takes the collected metrics frames and returns a pyplot-free ``Figure`` in the
paper style; error bars are the spread of :class:`~vlmerge_core.report.stats.Cell` (seed sd, or the
sd implied by the bootstrap interval of a single run).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from vlmerge_core.plotting import subplots
from vlmerge_core.report.figstyle import BASELINE_COLORS, color, not_run_figure, styled
from vlmerge_core.report.load import rows_of
from vlmerge_core.report.schema import DISTANCE_METRICS, METHOD_NAMES, TASK_NAMES, TASKS, order_key
from vlmerge_core.report.select import (
    get,
    main_cells,
    main_metrics,
    method_rank,
    models,
    primary_merge,
    seed_label,
    with_setting,
)
from vlmerge_core.report.stats import Cell, mean_of, rank_correlation
from vlmerge_core.report.tables_main import e4_points


def _err(cells: list[Cell]) -> np.ndarray:
    return np.array([0.0 if math.isnan(c.spread) else c.spread for c in cells])


def _grid(n: int, cols: int, w: float = 1.9, h: float = 1.6) -> tuple[Figure, np.ndarray]:
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = subplots(rows, cols, w * cols, h * rows)
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    return fig, axes


def _baseline(ax, cell: Cell, name: str, kind: str) -> None:
    if not cell.measured:
        return
    c = BASELINE_COLORS[kind]
    ax.axhline(cell.mean, color=c, ls=":" if kind == "ma_baseline" else "--", lw=1, label=name)
    if not math.isnan(cell.spread):
        ax.axhspan(cell.mean - cell.spread, cell.mean + cell.spread, color=c, alpha=0.08, lw=0)


@styled
def fig_e1_seed(results: pd.DataFrame) -> Figure:
    """E1: the merged score on each task vs K_seed (0 = naive), one line per merge method, with the
    unmerged MS model (dashed, per K_seed) and the MA baseline (dotted, band = spread) as lines."""
    rows = rows_of(results, "E1")
    if len(rows) == 0:
        return not_run_figure("E1: score vs K_seed", "no E1 rows in results.csv")
    mains, cells, mods = main_metrics(results), main_cells(rows), models(rows)
    ks = sorted(int(k) for k in mods["seed_steps"].dropna().unique())
    pos = {k: i for i, k in enumerate(ks)}
    merged = mods[(mods["kind"] == "merged") & (mods["option"] == "")]
    fig, axes = _grid(len(mains), 4)
    for ax, (task, metric) in zip(axes.flat, mains.items()):
        for (method, knob_value), grp in sorted(
            merged.groupby(["method", "knob_value"], dropna=False),
            key=lambda g: (method_rank(g[0][0]), g[0][1]),
        ):
            grp = grp.sort_values("seed_steps")
            cs = [get(cells, m, task) for m in grp["model_id"]]
            xs = [pos[int(k)] for k in grp["seed_steps"]]
            name = METHOD_NAMES.get(method, method) + ("" if math.isnan(knob_value) else f" {knob_value:g}")
            ax.errorbar(xs, [c.mean for c in cs], yerr=_err(cs), marker="o", ms=3, capsize=2, lw=1,
                        color=color(method), label=name)  # fmt: skip
        ms = mods[mods["kind"] == "ms"].sort_values("seed_steps")
        if len(ms) > 1:
            cs = [get(cells, m, task) for m in ms["model_id"]]
            ax.errorbar([pos[int(k)] for k in ms["seed_steps"]], [c.mean for c in cs], yerr=_err(cs), ls="--",
                        lw=1, capsize=2, color=BASELINE_COLORS["ms"], label="MS (unmerged)")  # fmt: skip
        elif len(ms) == 1:
            _baseline(ax, get(cells, ms["model_id"].iloc[0], task), "MS (unmerged)", "ms")
        for m in mods.loc[mods["kind"] == "ma_baseline", "model_id"]:
            _baseline(ax, get(cells, m, task), "MA baseline", "ma_baseline")
        ax.set_xticks(range(len(ks)), [seed_label(k) for k in ks])
        ax.set_title(TASK_NAMES.get(task, task))
        ax.set_xlabel("K_seed (steps)")
        ax.set_ylabel(metric)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, max(1, len(labels))), frameon=False)
    return fig


@styled
def fig_e2_methods(results: pd.DataFrame) -> Figure:
    """E2: the merged score vs each method's knob (rows: tasks, columns: methods), with the MS and MA
    baselines as lines; methods beyond the paper are marked "(ours)"."""
    rows = pd.concat([rows_of(results, "E2"), rows_of(results, "E6")]).drop_duplicates()
    merged = models(rows[(rows["kind"] == "merged") & (rows["option"] == "")])
    merged = merged[merged["knob"] != ""]
    if len(merged) == 0:
        return not_run_figure("E2: score vs knob", "no E2 merges in results.csv")
    mains, cells = main_metrics(results), main_cells(rows)
    base = models(rows_of(results, "E2"))
    methods = sorted(merged["method"].unique(), key=method_rank)
    fig, axes = subplots(len(mains), len(methods), 1.7 * len(methods), 1.35 * len(mains))
    for i, (task, metric) in enumerate(mains.items()):
        for j, method in enumerate(methods):
            ax = axes[i, j]
            grp = merged[merged["method"] == method]
            for (_k, _v), g in grp.groupby([grp["seed_steps"].fillna(-1), "variant"]):
                g = g.sort_values("knob_value")
                cs = [get(cells, m, task) for m in g["model_id"]]
                ax.errorbar(g["knob_value"], [c.mean for c in cs], yerr=_err(cs), marker="o", ms=3, capsize=2,
                            lw=1, color=color(method))  # fmt: skip
            for kind, name in (("ms", "MS (unmerged)"), ("ma_baseline", "MA baseline")):
                for m in base.loc[base["kind"] == kind, "model_id"]:
                    _baseline(ax, get(cells, m, task), name, kind)
            if i == 0:
                ours = " (ours)" if method in ("arithmetic_formula", "ties", "dare") else ""
                ax.set_title(METHOD_NAMES.get(method, method) + ours, fontsize=7)
            if i == len(mains) - 1:
                ax.set_xlabel(grp["knob"].iloc[0])
            if j == 0:
                ax.set_ylabel(f"{TASK_NAMES.get(task, task)}\n{metric}")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if labels:
        fig.legend(handles, labels, loc="outside lower center", ncols=2, frameon=False)
    return fig


def _fit(ax, x: np.ndarray, y: np.ndarray, c: str) -> None:
    if len(np.unique(x)) >= 2:
        slope, icpt = np.polyfit(x, y, 1)
        xs = np.array([x.min(), x.max()])
        ax.plot(xs, slope * xs + icpt, color=c, lw=1, alpha=0.8)


@styled
def fig_e4_scatter(results: pd.DataFrame, distances: pd.DataFrame) -> Figure:
    """E4: one panel per distance metric: each merge's score (per task, colour) vs the total distance
    of its MS model's experts, with a least-squares line per task."""
    pts = e4_points(results, distances)
    if len(pts) == 0:
        return not_run_figure("E4: distance vs merged score", "no E4 merges or distances")
    metrics = order_key(list(pts["metric"]), DISTANCE_METRICS)
    fig, axes = _grid(len(metrics), 5, 1.9, 1.8)
    tasks = order_key(list(pts["task"]), TASKS)
    for ax, metric in zip(axes.flat, metrics):
        p = pts[pts["metric"] == metric]
        for i, task in enumerate(tasks):
            q = p[p["task"] == task]
            c = color(task, i)
            ax.errorbar(q["distance"], q["score"], yerr=q["spread"].fillna(0.0), fmt="o", ms=2.5, capsize=1.5,
                        lw=0.8, color=c, label=TASK_NAMES.get(task, task))  # fmt: skip
            _fit(ax, q["distance"].to_numpy(float), q["score"].to_numpy(float), c)
        ax.set_title(metric)
        ax.set_xlabel(f"{metric} (total)")
        ax.set_ylabel("merged score")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(7, len(labels)), frameon=False)
    return fig


@styled
def fig_e4_layers(results: pd.DataFrame, distances: pd.DataFrame) -> Figure:
    """E4 per layer: Spearman rho between each block's distance and the merged score averaged over the
    tasks every E4 merge has (heatmap, metric x block; no interval: see the E4 table for those)."""
    rows = rows_of(results, "E4")
    rows = rows[(rows["kind"] == "merged") & (rows["option"] == "")]
    blocks = (
        distances[distances["scope"].str.startswith("block")] if distances is not None else pd.DataFrame()
    )
    if len(rows) == 0 or len(blocks) == 0:
        return not_run_figure("E4: per-layer distances", "no E4 merges or per-block distances")
    cells, mods = main_cells(rows), models(rows)
    mods = with_setting(mods, primary_merge(results, mods))
    tasks = [t for t in main_metrics(results) if all(get(cells, m, t).measured for m in mods["model_id"])]
    score = {
        m["model_id"]: mean_of([get(cells, m["model_id"], t) for t in tasks]).mean for _, m in mods.iterrows()
    }
    scopes = sorted(blocks["scope"].unique(), key=lambda s: int(s[5:]) if s[5:].isdigit() else 10**6)
    metrics = order_key(list(blocks["metric"]), DISTANCE_METRICS)
    rho = pd.DataFrame(np.nan, index=metrics, columns=[s[5:] for s in scopes])
    for metric in metrics:
        for scope in scopes:
            d = blocks[(blocks["metric"] == metric) & (blocks["scope"] == scope)]
            xy = [(r["value"], score[m["model_id"]]) for _, m in mods.iterrows()
                  for _, r in d[(d["seed_steps"] == m["seed_steps"]) & (d["variant"] == m["variant"])].iterrows()]  # fmt: skip
            if len(xy) >= 3:
                res = rank_correlation([a for a, _ in xy], [b for _, b in xy], n_bootstrap=0)
                rho.loc[metric, scope[5:]] = np.nan if res["rho"] is None else res["rho"]
    fig, axes = subplots(1, 1, 0.45 * len(scopes) + 1.6, 0.35 * len(metrics) + 1.0)
    sns.heatmap(rho, ax=axes[0, 0], vmin=-1, vmax=1, cmap="vlag", annot=True, fmt=".2f", annot_kws={"size": 6},
                cbar_kws={"label": "Spearman rho"})  # fmt: skip
    axes[0, 0].set_xlabel("block")
    axes[0, 0].set_ylabel("distance")
    axes[0, 0].set_title(f"vs merged score, mean of {len(tasks)} tasks")
    return fig
