"""The report's figure conventions on top of :mod:`vlmerge_core.plotting` (the one paper style):
the style applied around each whole figure function, fixed colours per method and task, and
byte-identical PDF/PNG files."""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import seaborn as sns
from matplotlib.figure import Figure

from vlmerge_core.io import atomic_write
from vlmerge_core.plotting import STYLE, new_figure
from vlmerge_core.report.schema import METHODS, TASKS

PALETTE = sns.color_palette("colorblind", 10).as_hex()  # a list: no global seaborn state is set
METHOD_COLORS = {m: PALETTE[i] for i, m in enumerate(METHODS)}
TASK_COLORS = {t: PALETTE[i] for i, t in enumerate(TASKS)}
# claim rows drawn as references: the unmerged MS models and both MA controls
BASELINE_COLORS = {
    "ms_recipe": "#555555",
    "ms_naive": "#999999",
    "ma_baseline": "#000000",
    "ma_matched": PALETTE[3],
}
BASELINE_STYLES = {"ms_recipe": "--", "ms_naive": "--", "ma_baseline": ":", "ma_matched": "-."}
PNG_DPI = 200
# fixed metadata: no creation dates, no software version, so a rebuild changes no byte
PDF_METADATA: dict[str, Any] = {"CreationDate": None, "ModDate": None, "Creator": None, "Producer": None}
PNG_METADATA: dict[str, Any] = {"Software": None}


def styled(fn: Callable[..., Figure]) -> Callable[..., Figure]:
    """Run a whole figure function inside the paper style, so that text added after the axes were
    made (titles, labels, legends) is styled too, and the global rcParams are left untouched."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def color(key: str, i: int = 0) -> str:
    """The fixed colour of a method or task, else the ``i``-th palette colour."""
    return METHOD_COLORS.get(key) or TASK_COLORS.get(key) or PALETTE[i % len(PALETTE)]


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
