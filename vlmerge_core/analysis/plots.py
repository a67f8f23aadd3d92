"""Figures of the weight-distance analysis (pure in their inputs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from vlmerge_core.analysis.distance import METRICS, layer_table
from vlmerge_core.figstyle import subplots


def fig_layer_distances(dists: Mapping[str, Mapping[str, Any]], metrics: Sequence[str] = METRICS) -> Figure:
    """One panel per metric: the per-block value for each labelled distance result (``{label: dist}``)."""
    metrics = [m for m in metrics if any(r["metric"] == m for d in dists.values() for r in layer_table(d))]
    fig, axes = subplots(1, max(1, len(metrics)), 3.2 * max(1, len(metrics)), 2.8)
    for ax, metric in zip(axes[0], metrics):
        for label, dist in dists.items():
            rows = sorted((r["block"], r["value"]) for r in layer_table(dist) if r["metric"] == metric)
            if rows:
                ax.plot([b for b, _ in rows], [v for _, v in rows], marker="o", label=label)
        ax.set_title(metric)
        ax.set_xlabel("block")
    if dists and metrics:
        axes[0][0].legend(fontsize=7)
    return fig
