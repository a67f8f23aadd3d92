"""REPORT.md and report.html from the built artefacts, the verdicts and the generated numbers."""

from __future__ import annotations

import html
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import jinja2
import pandas as pd

from vlmerge_core.io import atomic_write
from vlmerge_core.report.build import Built
from vlmerge_core.report.generated import verdict_table
from vlmerge_core.report.outcomes import rule_markdown
from vlmerge_core.report.schema import TASK_NAMES
from vlmerge_core.report.tableio import to_markdown
from vlmerge_core.report.templates import (
    ARITHMETIC_NOTE,
    DISTANCE_NOTE,
    OPEN_ITEMS,
    REPORT_HTML,
    REPORT_MD,
)
from vlmerge_core.report.validity import CHECKS, TaskValidity
from vlmerge_core.report.verdict import Verdict


def _html(df: pd.DataFrame) -> str:
    return df.to_html(border=0, escape=True, na_rep="—")


def _inline(text: str) -> str:
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def markdown_html(text: str) -> str:
    """The rule's Markdown (paragraphs, numbered lists, ``**bold**``, backticks) as simple HTML."""
    out = []
    for block in text.strip().split("\n\n"):
        lines = [ln.strip() for ln in block.splitlines()]
        if all(re.match(r"\d+\. ", ln) for ln in lines):
            items = [_inline(re.sub(r"^\d+\. ", "", ln)) for ln in lines]
            out.append("<ol>" + "".join(f"<li>{i}</li>" for i in items) + "</ol>")
        else:
            out.append(f"<p>{_inline(' '.join(lines))}</p>")
    return "\n".join(out)


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def render_report(
    *,
    out_dir: str | Path,
    source: str,
    missing: Sequence[str],
    built: Sequence[Built],
    verdicts: Mapping[str, Verdict],
    validity: Mapping[str, TaskValidity],
    numbers: Mapping[str, str],
    published: pd.DataFrame,
) -> list[Path]:
    """Write ``<out_dir>/REPORT.md`` and ``<out_dir>/report.html``; returns their paths."""
    out = Path(out_dir)
    tables = {b.artefact.name: to_markdown(b.table) for b in built if b.table is not None}
    html = {b.artefact.name: _html(b.table) for b in built if b.table is not None}
    artefacts = []
    for b in built:
        files = [_rel(f, out) for f in b.files]
        png = next((f for f in files if f.endswith(".png")), "")
        caption = b.artefact.caption + (f" (not run: {b.reason})" if b.status != "built" else "")
        artefacts.append({"id": b.artefact.id, "name": b.artefact.name, "kind": b.artefact.kind,
                          "caption": caption, "files": files, "png": png})  # fmt: skip
    vlist = []
    for v in verdicts.values():
        table = v.table()
        vlist.append({"claim": v.claim, "title": v.title, "criterion": v.criterion, "verdict": v.verdict,
                      "verdict_valid": v.verdict_valid, "notes": v.notes, "rule": v.rule, "parts": v.parts,
                      "table_md": to_markdown(table) if len(table) else "",
                      "table_html": _html(table) if len(table) else ""})  # fmt: skip
    details = [
        f"{TASK_NAMES.get(t, t)}: "
        + "; ".join(f"{c} {tv.checks[c]} ({tv.details[c]})" for c in CHECKS if c in tv.details)
        for t, tv in validity.items()
        if tv.details
    ]
    found = published[published["status"] == "found"]
    pub = found.set_index(["claim", "experiment", "task", "quantity"])[["value", "unit", "source", "note"]]
    context = {
        "source": source,
        "missing": list(missing),
        "n": numbers,
        "verdicts": vlist,
        "tables": tables,
        "html": html,
        "e0_details": details,
        "artefacts": artefacts,
        "verdict_table": to_markdown(verdict_table(verdicts)),
        "verdict_table_html": _html(verdict_table(verdicts)),
        "rule": rule_markdown(),
        "rule_html": markdown_html(rule_markdown()),
        "arithmetic_note": ARITHMETIC_NOTE,
        "distance_note": DISTANCE_NOTE,
        "open_items": OPEN_ITEMS,
        "shown_elsewhere": ("e0_validity", "e0_scores", "e0_zeroshot", "e6_merge_forms"),
        "published_md": to_markdown(pub.astype(str)),
        "published_html": _html(pub.astype(str)),
    }
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    md = env.from_string(REPORT_MD).render(**context)
    html_env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=True
    )
    page = html_env.from_string(REPORT_HTML).render(**context)
    paths = [out / "REPORT.md", out / "report.html"]
    for path, text in zip(paths, (md, page)):
        with atomic_write(path) as fh:
            fh.write(text)
    return paths
