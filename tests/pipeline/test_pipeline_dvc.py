"""`dvc repro` on the smoke profile, in a temporary copy of the repository.

Checks that every stage runs from a clean clone, that re-running is a no-op, and that the data
stage is deterministic (forced re-run gives byte-identical dataset files).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.pipeline]


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file (provenance lives beside the folder, in <folder>.run_info.json)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory) -> Path:
    if shutil.which("dvc") is None:
        pytest.fail("dvc is not installed (it is a dependency in pyproject.toml)")
    repo = tmp_path_factory.mktemp("repo")
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / rel)
    for rel in (".dvc/config", ".dvcignore"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, repo / rel)
    _run(
        [sys.executable, "-m", "vlmerge_core.cli", "params", "--profile", "smoke", "-o", "params.yaml"], repo
    )
    _run(["git", "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "smoke"], repo)
    return repo


def test_dvc_repro_smoke_then_noop_and_deterministic(smoke_repo):
    _run(["dvc", "repro"], smoke_repo)
    from vlmerge_core.config import load_params

    data_root = smoke_repo / load_params(smoke_repo / "params.yaml").data.root
    first = _digest(data_root)
    assert first, "the data stage wrote nothing"
    assert (smoke_repo / "metrics" / "data" / "stats.json").exists()
    again = _run(["dvc", "repro"], smoke_repo)
    assert "didn't change" in again or "up to date" in again.lower()
    assert "Running stage" not in again
    lock = (smoke_repo / "dvc.lock").read_text()
    _run(["dvc", "repro", "--force", "data"], smoke_repo)
    assert _digest(data_root) == first
    rel = data_root.relative_to(smoke_repo).as_posix()
    out_hash = lambda text: text.split(f"path: {rel}\n", 1)[1].split("\n", 2)[1]  # noqa: E731
    assert out_hash((smoke_repo / "dvc.lock").read_text()) == out_hash(lock)  # downstream stages stay valid
