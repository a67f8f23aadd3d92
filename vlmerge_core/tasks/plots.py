"""Figures of fine-tuning runs: learning curves and a few test predictions per task (pure functions).

Every function returns a ``matplotlib.figure.Figure`` and does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from vlmerge_core.figstyle import subplots


def fig_learning_curves(records: Sequence[Mapping[str, Any]]) -> Figure:
    """One panel per task: training loss per step (left axis) and the val selection metric per epoch
    (right axis, from epoch 0 = before fine-tuning), one line per fine-tuning seed.

    Args:
        records: the ``records`` of :func:`~vlmerge_core.tasks.stage.run_finetune_stage` (``task``,
            ``ft_seed``, ``select_metric``, ``curve``).
    """
    tasks = list(dict.fromkeys(r["task"] for r in records))
    fig, axes = subplots(1, max(1, len(tasks)), 3.0 * max(1, len(tasks)), 2.6)
    for ax, task in zip(axes[0], tasks):
        runs = [r for r in records if r["task"] == task]
        ax2 = ax.twinx()
        for k, r in enumerate(runs):
            c = r["curve"]
            label = f"seed {r.get('ft_seed', k)}"
            ax.plot(c["step"], c["loss"], lw=0.8, color="tab:blue", alpha=1.0 / (1 + k), label=label)
            ax2.plot(c["val_step"], c["val_select"], "o-", ms=3, color="tab:orange", alpha=1.0 / (1 + k))
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("train loss", fontsize=8, color="tab:blue")
        ax2.set_ylabel(f"val {runs[0]['select_metric']}", fontsize=8, color="tab:orange")
        ax.tick_params(labelsize=7)
        ax2.tick_params(labelsize=7)
        if len(runs) > 1:
            ax.legend(fontsize=6, frameon=False)
    return fig


def _show(ax: Any, img: np.ndarray, cmap: str | None = None, vmax: int | None = None) -> None:
    ax.imshow(img, cmap=cmap, vmin=0 if vmax else None, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def fig_predictions(examples: Sequence[Mapping[str, Any]], title: str = "") -> Figure:
    """A row of test examples: image(s) (and predicted / true masks), the input text, prediction and truth.

    Args:
        examples: from :func:`~vlmerge_core.tasks.predictions` or the stage's ``predictions``
            (``images``, ``text``, ``pred``, ``truth``, optional ``mask_pred`` / ``mask_true``).
    """
    n = max(1, len(examples))
    per = max([len(e["images"]) + (2 if "mask_pred" in e else 0) for e in examples] + [1])
    fig, axes = subplots(1, n * per, 1.9 * n * per, 2.4)
    for ax in axes[0]:
        ax.axis("off")
    vmax = max(
        [int(max(e["mask_pred"].max(), e["mask_true"].max())) for e in examples if "mask_pred" in e] + [1]
    )
    for k, e in enumerate(examples):
        cells = list(axes[0][k * per : (k + 1) * per])
        for ax, img in zip(cells, e["images"]):
            ax.axis("on")
            _show(ax, np.asarray(img))
        if "mask_pred" in e:
            for ax, key in zip(cells[len(e["images"]) :], ("mask_true", "mask_pred")):
                ax.axis("on")
                _show(ax, np.asarray(e[key]), cmap="tab10", vmax=vmax)
                ax.set_title(key.replace("mask_", ""), fontsize=7)
        ok = "" if not e["truth"] else (" ok" if e["pred"] == e["truth"] else " x")
        text = f"{e['text'][:40]}\npred: {str(e['pred'])[:40]}{ok}\ntrue: {str(e['truth'])[:40]}"
        cells[0].text(0.0, -0.08, text, transform=cells[0].transAxes, fontsize=6, va="top", ha="left")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
