"""The distance stage, the `vlmerge distance` subcommand and the direction of imports (merge below analysis)."""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

import pytest

import vlmerge_core
from vlmerge_core.analysis.distance import METRICS
from vlmerge_core.analysis.stage import expert_distances
from vlmerge_core.config import profile_params
from vlmerge_core.io import read_json


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from vlmerge_core.merge.stage import make_demo_checkpoints

    return make_demo_checkpoints(tmp_path_factory.mktemp("demo"))


def test_expert_distances(demo, tmp_path):
    res = expert_distances(
        profile_params("smoke"),
        ms_ckpt=str(demo["ms"]),
        central_ckpt=str(demo["central"]),
        metrics_out=str(tmp_path / "d.json"),
    )
    assert res["k"] == 0.5 and res["total"]["l2"] > 0 and 0 <= res["total"]["tssd"] <= 1
    scopes = {r["scope"] for r in res["rows"]}
    assert scopes == {"total", "block0", "block1"} and {r["metric"] for r in res["rows"]} == set(METRICS)
    written = read_json(tmp_path / "d.json")["rows"]
    assert [(r["metric"], r["scope"]) for r in written] == [(r["metric"], r["scope"]) for r in res["rows"]]
    assert written[0]["value"] == pytest.approx(res["rows"][0]["value"], abs=1e-6)  # rounded JSON
    raw = expert_distances(profile_params("smoke"), ms_ckpt=str(demo["ms"]))
    assert raw["total"]["ssd"] is None and {r["metric"] for r in raw["rows"]} == {"l2", "l2_rms", "cosine"}


def test_distance_subcommand(demo, tmp_path, capsys):
    from vlmerge_core.analysis.cli import register

    parser = argparse.ArgumentParser(prog="vlmerge")
    register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "d.json"
    args = parser.parse_args(
        ["distance", str(demo["ms"]), "--central", str(demo["central"]), "--k", "0.2", "-o", str(out)]
    )
    assert args.func(args) == 0
    d = read_json(out)
    assert d["k"] == 0.2 and 0 <= d["total"]["tssd"] <= 1 and set(d["blocks"]) == {"0", "1"}
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["l2"] > 0


def _imports(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
        elif isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
    return mods


def test_merge_never_imports_analysis():
    """Issue 10.3: analysis builds on merge, never the other way round (also inside functions)."""
    root = Path(vlmerge_core.__file__).parent
    for path in sorted((root / "merge").rglob("*.py")):
        bad = [m for m in _imports(path) if m.startswith("vlmerge_core.analysis")]
        assert not bad, f"{path.relative_to(root)} imports {bad}"
    for path in sorted((root / "model").rglob("experts.py")):
        assert not [m for m in _imports(path) if m.startswith("vlmerge_core.")]  # a leaf: pure Python
