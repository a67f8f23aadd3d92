"""Tables as files: a tidy DataFrame of formatted cells -> LaTeX (booktabs) and Markdown, atomically.

Cells are strings made by :meth:`Cell.fmt` (``"31.2 ± 0.4"``); the LaTeX writer escapes them and
turns ``±`` into ``$\\pm$``. The output depends only on the frame, so a rebuild changes no byte.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from vlmerge_core.io import atomic_write
from vlmerge_core.report.schema import TASK_NAMES

_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_TEX_UNICODE = {"±": r"$\pm$", "—": "---", "–": "--", "·": r"$\cdot$", "≥": r"$\geq$", "≤": r"$\leq$"}
_TEX_RE = re.compile("|".join(re.escape(k) for k in (*_TEX_SPECIAL, *_TEX_UNICODE)))


def tex_escape(text: object) -> str:
    """``text`` safe for LaTeX: special characters escaped, ``±``, ``—``, ``·``, ``≥``, ``≤`` as math."""
    return _TEX_RE.sub(lambda m: _TEX_SPECIAL.get(m.group(0)) or _TEX_UNICODE[m.group(0)], str(text))


def _flat(col: object) -> str:
    return " / ".join(str(c) for c in col if str(c)) if isinstance(col, tuple) else str(col)


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub Markdown table (multi-level columns joined with `` / ``), newline-terminated."""
    flat = df.copy()
    flat.columns = [_flat(c) for c in df.columns]
    if isinstance(flat.index, pd.MultiIndex):
        flat.index = [_flat(i) for i in flat.index]
    flat.index.name = _flat(tuple(df.index.names)) if isinstance(df.index, pd.MultiIndex) else df.index.name
    body = flat.reset_index() if flat.index.name else flat
    return body.to_markdown(index=False, disable_numparse=True) + "\n"


def to_latex(df: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A booktabs ``tabular`` (inside a ``table`` when ``caption`` is given), cells escaped."""
    esc = df.map(tex_escape)
    if isinstance(df.columns, pd.MultiIndex):
        esc.columns = pd.MultiIndex.from_tuples([tuple(tex_escape(x) for x in c) for c in df.columns])
    else:
        esc.columns = [tex_escape(c) for c in df.columns]
    if isinstance(df.index, pd.MultiIndex):
        esc.index = pd.MultiIndex.from_tuples(
            [tuple(tex_escape(x) for x in i) for i in df.index], names=[tex_escape(n) for n in df.index.names]
        )
    else:
        esc.index = pd.Index([tex_escape(i) for i in df.index], name=tex_escape(df.index.name or ""))
    kwargs = {"caption": tex_escape(caption), "label": label} if caption else {}
    text = esc.to_latex(escape=False, multicolumn_format="c", **kwargs)
    return text if text.endswith("\n") else text + "\n"


def write_table(
    df: pd.DataFrame,
    out_dir: str | Path,
    name: str,
    caption: str = "",
    formats: Sequence[str] = ("tex", "md"),
) -> list[Path]:
    """Write ``<out_dir>/<name>.tex`` and ``.md``; returns the paths written."""
    out, paths = Path(out_dir), []
    for fmt in formats:
        text = to_latex(df, caption, f"tab:{name}") if fmt == "tex" else to_markdown(df)
        path = out / f"{name}.{fmt}"
        with atomic_write(path) as fh:
            fh.write(text)
        paths.append(path)
    return paths


def not_run_table(what: str, reason: str) -> pd.DataFrame:
    """The one-row table written in place of an artefact whose metrics are missing."""
    return pd.DataFrame({"status": ["not run"], "reason": [reason]}, index=pd.Index([what], name="artefact"))


# ---------------------------------------------------------------------------------- table layout
PAPER_ROW = "paper (published)"


def task_column(task: str, metric: str) -> str:
    """A column header naming the task and its main metric, e.g. ``VQA (vqa_score)``."""

    return f"{TASK_NAMES.get(task, task)} ({metric})"


def paper_row(df: pd.DataFrame, text: str = "not found") -> pd.DataFrame:
    """``df`` with a last row :data:`PAPER_ROW` of ``text`` (what the paper published for the cells)."""
    out = df.copy()
    out.loc[PAPER_ROW] = [text] * len(out.columns)
    return out
