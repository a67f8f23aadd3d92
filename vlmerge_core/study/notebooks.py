"""Clean copies of the notebooks: what a DVC stage depends on and runs.

A notebook saved from JupyterLab carries outputs, execution counts and run metadata; none of it changes
what the notebook does. :func:`clean_notebook` keeps only what does (cell types, sources, the
``parameters`` tag, the kernelspec), so the cleaned copy of a notebook that was only run and saved is
byte-identical to before, its DVC hash is unchanged, and ``dvc repro`` retrains nothing.

    python -m vlmerge_core.study.notebooks notebooks runs/clean
    python -m vlmerge_core.study.notebooks notebooks/09_paper.ipynb runs/paper/09_paper.ipynb
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vlmerge_core.io import atomic_path

KEEP_CELL_TAGS = ("parameters",)


class NotebookError(ValueError):
    """A notebook that cannot be cleaned (not JSON, not nbformat 4); the message names the file."""


def clean_notebook_dict(nb: dict[str, Any], src: str = "<notebook>") -> dict[str, Any]:
    """The notebook without outputs, execution counts, ids or metadata other than kernelspec and tags."""
    if not isinstance(nb, dict) or nb.get("nbformat") != 4 or not isinstance(nb.get("cells"), list):
        raise NotebookError(f"{src}: not an nbformat 4 notebook")
    cells = []
    for i, cell in enumerate(nb["cells"]):
        kind = cell.get("cell_type")
        if kind not in ("code", "markdown", "raw"):
            raise NotebookError(f"{src}: cell {i} has unknown type {kind!r}")
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        tags = [t for t in (cell.get("metadata") or {}).get("tags", []) if t in KEEP_CELL_TAGS]
        out: dict[str, Any] = {
            "cell_type": kind,
            "metadata": {"tags": tags} if tags else {},
            "source": source,
        }
        if kind == "code":
            out.update({"execution_count": None, "outputs": []})
        cells.append(out)
    meta = nb.get("metadata") or {}
    kernelspec = meta.get("kernelspec") or {}
    if kernelspec.get("name") != "python3":
        raise NotebookError(f"{src}: kernelspec name is {kernelspec.get('name')!r}, expected 'python3'")
    return {
        "cells": cells,
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def clean_notebook(src: str | Path, dst: str | Path) -> Path:
    """Write the clean copy of notebook ``src`` to ``dst`` (atomically, deterministic bytes)."""
    src, dst = Path(src), Path(dst)
    try:
        nb = json.loads(src.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotebookError(f"{src}: notebook not found") from None
    except json.JSONDecodeError as exc:
        raise NotebookError(f"{src}: not valid JSON ({exc})") from None
    text = json.dumps(clean_notebook_dict(nb, str(src)), indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    with atomic_path(dst) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return dst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write clean copies (no outputs) of notebooks.")
    ap.add_argument("src", help="a folder of .ipynb files, or one .ipynb file")
    ap.add_argument("dst", help="output folder (for a folder) or output file (for a file)")
    args = ap.parse_args(argv)
    src = Path(args.src)
    if src.suffix == ".ipynb":
        try:
            clean_notebook(src, Path(args.dst))
        except NotebookError as exc:
            print(exc, file=sys.stderr)
            return 2
        return 0
    files = sorted(src.glob("*.ipynb"))
    if not files:
        print(f"{src}: no notebooks", file=sys.stderr)
        return 2
    for f in files:
        clean_notebook(f, Path(args.dst) / f.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
