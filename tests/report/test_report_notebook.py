"""Notebook 09: the contract (python3 kernel, one parameters cell, no outputs) and a smoke run."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "09_paper.ipynb"


def test_contract():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and 'metrics_dir = ""' in tagged[0].source
    assert all(not c.outputs and c.execution_count is None for c in nb.cells if c.cell_type == "code")
    calls = [c for c in nb.cells if c.cell_type == "code" and "run_paper_stage(" in c.source]
    assert len(calls) == 1


@pytest.mark.slow
@pytest.mark.notebooks
def test_smoke_run(tmp_path):
    import papermill as pm

    pm.execute_notebook(str(NOTEBOOK), str(tmp_path / "out.ipynb"), kernel_name="python3",
                        cwd=str(NOTEBOOK.parent), progress_bar=False,
                        parameters={"out_dir": str(tmp_path / "paper")})  # fmt: skip
    assert (tmp_path / "paper" / "REPORT.md").exists()
