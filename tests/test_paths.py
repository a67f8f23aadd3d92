"""Repo-root resolution (``vlmerge_core.paths``): from the shell, papermill and nbmake alike."""

from __future__ import annotations

import os

from vlmerge_core import paths


def test_repo_root_from_subfolders(tmp_path, monkeypatch):
    monkeypatch.delenv("VLMERGE_ROOT", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    nb = tmp_path / "notebooks"
    nb.mkdir()
    monkeypatch.chdir(nb)  # papermill --cwd notebooks / nbmake
    assert paths.repo_root() == tmp_path.resolve()
    assert paths.resolve("data/micro") == tmp_path.resolve() / "data" / "micro"
    assert paths.resolve("/abs/x") == paths.Path("/abs/x")
    monkeypatch.setenv("VLMERGE_ROOT", str(nb))
    assert paths.repo_root() == nb.resolve()


def test_repo_root_of_this_checkout():
    root = paths.repo_root(os.path.dirname(__file__))
    assert (root / "pyproject.toml").exists()
