"""Notebook contract: python3 kernelspec, exactly one `parameters` cell, committed without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found under notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_contract(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters'"
    assert tagged[0].cell_type == "code"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name}: committed with outputs"
            assert cell.execution_count is None, f"{path.name}: committed with execution counts"


EXPERIMENT_IDS = ("E0", "E1", "E2", "E3", "E4", "E5", "E6", "F1")
STUDY_NOTEBOOKS = [p for p in NOTEBOOKS if p.name[:2] in ("05", "06", "07", "08", "09")]


@pytest.mark.parametrize("path", STUDY_NOTEBOOKS, ids=[p.name for p in STUDY_NOTEBOOKS])
def test_study_notebook_header_names_its_experiments(path):
    """The first cell of a notebook the study runs says which experiments of PAPER.md §7 it feeds."""
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown", f"{path.name}: the first cell is not a markdown header"
    assert any(e in first.source for e in EXPERIMENT_IDS), f"{path.name}: header names no experiment (E0–E6)"
