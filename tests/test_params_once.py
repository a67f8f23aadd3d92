"""Parameters are parsed once, at an entry point, and travel down as the typed object: only the stage
entry points that the notebooks call take a params file name (CLI handlers take their parsed args)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from vlmerge_core.config import ParamsError, profile_params, stage_params

ROOT = Path(__file__).resolve().parents[1]


def notebook_entry_points() -> set[str]:
    """The ``run_*_stage`` functions the notebooks call."""
    names = set()
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] == "code":
                names |= set(re.findall(r"\b(run_\w+_stage)\(", "".join(cell["source"])))
    return names


def functions_taking(arg: str) -> list[str]:
    """``module:function`` of every function in vlmerge_core with a parameter named ``arg``."""
    out = []
    for path in sorted((ROOT / "vlmerge_core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                if arg in [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]:
                    out.append(f"{path.relative_to(ROOT).as_posix()}:{node.name}")
    return out


def test_only_notebook_entry_points_take_a_params_file():
    entry = notebook_entry_points()
    assert {"run_merge_grid_stage", "run_finetune_stage", "run_pretrain_stage"} <= entry
    takers = functions_taking("params_file")
    assert takers, "no entry point takes params_file any more: update this test"
    assert [t for t in takers if t.split(":")[1] not in entry] == []


def test_stage_params_parses_a_file_or_a_profile(tmp_path):
    assert stage_params("", "smoke") == profile_params("smoke")
    path = tmp_path / "p.yaml"
    path.write_text("profile: smoke\nmerge:\n  ratios: [0.25]\n")
    assert stage_params(str(path), "micro").merge.ratios == [0.25]  # the file wins over the profile
    with pytest.raises(ParamsError, match="not found"):
        stage_params(str(tmp_path / "missing.yaml"))
