"""Figure of a pre-training run: the loss curve of every objective (from ``metrics.json``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vlmerge_core.figstyle import subplots

__all__ = ["fig_pretrain_losses"]


def fig_pretrain_losses(
    metrics: Mapping[str, Any] | list[Mapping[str, Any]], labels: list[str] | None = None
):
    """One panel per loss component, one line per run; x = step, y = windowed mean loss.

    Args:
        metrics: the metrics dict of a run (:func:`run_pretrain`), or a list of them.
        labels: legend labels (default: each run's ``stage``).

    Returns:
        A matplotlib ``Figure``.
    """
    runs = [metrics] if isinstance(metrics, Mapping) else list(metrics)
    labels = labels or [str(r.get("stage", i)) for i, r in enumerate(runs)]
    names = sorted({n for r in runs for n in r.get("loss_curve", {}) if n != "step"})
    fig, axes = subplots(1, max(len(names), 1), 3.2 * max(len(names), 1), 2.8)
    for ax, name in zip(axes[0], names):
        for run, label in zip(runs, labels):
            curve = run.get("loss_curve", {})
            if name in curve:
                ax.plot(curve["step"], curve[name], label=label, lw=1.5)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss")
    if len(runs) > 1:
        axes[0][-1].legend(fontsize=8)
    return fig
