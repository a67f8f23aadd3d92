"""The one figure-style module: pyplot-free ``Figure`` objects in a fixed paper style, the style
applied around each whole figure function, the "not run" placeholder, and byte-identical PDF/PNG files.

Figures built here are not registered with pyplot, so no global state is touched, any backend
works (Agg in scripts, inline in notebooks, where a returned Figure is shown exactly once), and
figure functions stay pure in their inputs.

It sits low (next to :mod:`vlmerge_core.io`) because ``data``, ``pretrain``, ``tasks``, ``analysis``
and ``report`` all draw with it; the report's fixed colours per method and task, which need the
report's schema, are in :mod:`vlmerge_core.report.colors`.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from vlmerge_core.io import atomic_write

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
PNG_DPI = 200
# fixed metadata: no creation dates, no software version, so a rebuild changes no byte
PDF_METADATA: dict[str, Any] = {"CreationDate": None, "ModDate": None, "Creator": None, "Producer": None}
PNG_METADATA: dict[str, Any] = {"Software": None}


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


def styled(fn: Callable[..., Figure]) -> Callable[..., Figure]:
    """Run a whole figure function inside the paper style, so that text added after the axes were
    made (titles, labels, legends) is styled too, and the global rcParams are left untouched."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


@styled
def not_run_figure(title: str, reason: str) -> Figure:
    """The placeholder drawn for a figure whose metrics are missing."""
    fig = new_figure(5.0, 1.0)
    fig.set_layout_engine("none")  # text only: nothing to lay out
    fig.text(0.5, 0.62, title, ha="center", va="center", weight="bold")
    fig.text(0.5, 0.32, f"not run: {reason}", ha="center", va="center")
    return fig


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """The figure rendered as ``pdf`` or ``png`` with fixed metadata (deterministic bytes)."""
    buf = io.BytesIO()
    with matplotlib.rc_context({**STYLE, "svg.hashsalt": "vlmerge", "pdf.compression": 6}):
        if fmt == "pdf":
            fig.savefig(buf, format="pdf", metadata=PDF_METADATA)
        elif fmt == "png":
            fig.savefig(buf, format="png", dpi=PNG_DPI, metadata=PNG_METADATA)
        else:
            raise ValueError(f"figure format must be 'pdf' or 'png', got {fmt!r}")
    return buf.getvalue()


def save_figure(
    fig: Figure, out_dir: str | Path, name: str, formats: Sequence[str] = ("pdf", "png")
) -> list[Path]:
    """Write ``<out_dir>/<name>.<fmt>`` for each format, atomically; returns the paths."""
    paths = []
    engine = fig.get_layout_engine()
    if engine is not None and len(formats) > 1:  # lay out once, not once per format
        with matplotlib.rc_context(STYLE):
            fig.draw_without_rendering()
        fig.set_layout_engine("none")
    try:
        for fmt in formats:
            path = Path(out_dir) / f"{name}.{fmt}"
            with atomic_write(path, "wb") as fh:
                fh.write(figure_bytes(fig, fmt))
            paths.append(path)
    finally:
        if engine is not None:
            fig.set_layout_engine(engine)
    return paths
