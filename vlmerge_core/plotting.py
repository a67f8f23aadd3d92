"""The one place figures are made: pyplot-free ``Figure`` objects in a fixed paper style.

Figures built here are not registered with pyplot, so no global state is touched, any backend
works (Agg in scripts, inline in notebooks, where a returned Figure is shown exactly once), and
figure functions stay pure in their inputs.
"""

from __future__ import annotations

import io
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

STYLE: dict[str, Any] = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "vlmerge",  # deterministic SVG ids
}


class PaperFigure(Figure):
    """A ``Figure`` that renders itself as PNG for IPython/Jupyter, whatever the backend."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=110)
        return buf.getvalue()


def new_figure(w: float, h: float) -> Figure:
    """An empty ``w`` x ``h`` inch figure in the paper style."""

    with matplotlib.rc_context(STYLE):
        return PaperFigure(figsize=(w, h), layout="constrained")


def subplots(rows: int, cols: int, w: float, h: float, **kwargs: Any) -> tuple[Figure, np.ndarray]:
    """A figure and its ``rows`` x ``cols`` axes (always a 2-D array)."""

    fig = new_figure(w, h)
    with matplotlib.rc_context(STYLE):
        axes = fig.subplots(rows, cols, squeeze=False, **kwargs)
    return fig, axes
