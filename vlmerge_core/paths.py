"""Repository-root resolution and the standard folders.

The root is found the same way from the shell, from papermill (``--cwd notebooks``) and from nbmake
(which runs in the notebook's folder): ``$VLMERGE_ROOT`` or ``$DVC_ROOT`` if set, else the first
folder upwards from the current directory that holds ``dvc.yaml`` or ``params.yaml``, else the folder
above this package (an editable install).
"""

from __future__ import annotations

import os
from pathlib import Path

_MARKERS = ("dvc.yaml", "params.yaml")


def repo_root(start: str | Path | None = None) -> Path:
    """The project root folder (see the module docstring for the search order)."""
    for var in ("VLMERGE_ROOT", "DVC_ROOT"):
        if os.environ.get(var):
            return Path(os.environ[var]).resolve()
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if any((folder / m).exists() for m in _MARKERS):
            return folder
    pkg_parent = Path(__file__).resolve().parent.parent
    if any((pkg_parent / m).exists() for m in _MARKERS):
        return pkg_parent
    return here


def resolve(path: str | Path, root: Path | None = None) -> Path:
    """``path`` as is when absolute, else relative to the repo root (never to the cwd)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root or repo_root()) / p


def runs_dir(*parts: str) -> Path:
    """``<root>/runs/<parts>`` (executed notebooks, checkpoints: DVC-cached outputs)."""
    return repo_root().joinpath("runs", *parts)


def metrics_dir(*parts: str) -> Path:
    """``<root>/metrics/<parts>`` (small JSON metrics, tracked in git)."""
    return repo_root().joinpath("metrics", *parts)
