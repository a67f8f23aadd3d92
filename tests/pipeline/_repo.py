"""A throwaway copy of this repository with a profile's params, for the `dvc repro` pipeline tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(cmd: list[str], cwd: Path, timeout: int = 900) -> str:
    """Run ``cmd`` in ``cwd``; fail with its output's tail unless it exits 0."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def copy_repo(repo: Path, profile: str) -> Path:
    """Git's files of this checkout (committed and untracked, not ignored) in ``repo``, with
    ``vlmerge params --profile <profile> -o params.yaml``, committed in a new git repository."""
    if shutil.which("dvc") is None:
        raise AssertionError("dvc is not installed (it is a dependency in pyproject.toml)")
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for rel in [*files, ".dvc/config", ".dvcignore"]:
        src = ROOT / rel
        if src.is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / rel)
    run([sys.executable, "-m", "vlmerge_core.cli", "params", "--profile", profile, "-o", "params.yaml"], repo)
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", profile], repo)
    return repo
