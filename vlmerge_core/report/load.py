"""Read and validate the study metrics (``metrics/study/*.csv`` and ``design.json``) into typed frames.

A missing file is not an error: that part of the study was "not run", and every artefact and verdict
built on it says so (without ``design.json`` the roles of the runs are unknown, so every claim is
"not run"). A file that exists but breaks the contract (a missing column, a value of the wrong type,
an unknown kind, split or experiment id, a duplicated row) raises :class:`StudyError` naming the file,
the column and the row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vlmerge_core.report.design import Design, read_design
from vlmerge_core.report.schema import (
    DESIGN_FILE,
    EXPERIMENTS,
    FILES,
    KEYS,
    KINDS,
    PRETRAIN_KINDS,
    SPLITS,
    StudyError,
)

log = logging.getLogger(__name__)

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}
__all__ = ["Study", "StudyError", "empty_results", "load_study", "read_study_file", "rows_of", "typed_frame"]


@dataclass
class Study:
    """The collected metrics of one study; a ``None`` frame means its file is missing ("not run").

    Attributes:
        results: one row per (model, task, metric, fine-tuning seed).
        chance: chance level of each task's main metric.
        distances: weight distances of each MS model's experts.
        pretrain: zero-shot retrieval and final losses of each pre-trained model.
        design: the roles of the runs (``design.json``).
        source: the folder the files were read from.
        missing: names of the files that were not found.
    """

    results: pd.DataFrame | None = None
    chance: pd.DataFrame | None = None
    distances: pd.DataFrame | None = None
    pretrain: pd.DataFrame | None = None
    design: Design | None = None
    source: str = ""
    missing: list[str] = field(default_factory=list)

    def has(self, name: str) -> bool:
        """Whether the file ``name`` (``results``, ``chance``, ..., ``design``) was found and has rows."""
        frame = getattr(self, name)
        if name == "design":
            return frame is not None
        return frame is not None and len(frame) > 0

    def experiment(self, exp: str) -> pd.DataFrame:
        """The result rows that feed experiment ``exp`` (``E0`` ... ``E6``); empty if none."""
        if not self.has("results"):
            return empty_results()
        return rows_of(self.results, exp)


def rows_of(results: pd.DataFrame, exp: str) -> pd.DataFrame:
    """The rows of ``results`` whose ``experiments`` list holds ``exp``."""
    if exp not in EXPERIMENTS:
        raise StudyError(f"experiment id {exp!r} is not one of {list(EXPERIMENTS)}")
    mask = results["experiments"].map(lambda s: exp in str(s).split(";"))
    return results[mask.astype(bool)].reset_index(drop=True)


def empty_results() -> pd.DataFrame:
    """A results frame with the contract's columns and no rows."""
    return _typed(pd.DataFrame({c: pd.Series(dtype=str) for c in FILES["results"]}), "results", "<empty>")


def _convert(col: pd.Series, kind: str, name: str, src: str) -> pd.Series:
    raw = col.fillna("").astype(str).str.strip()

    def bad(mask: pd.Series, what: str) -> None:
        if mask.any():
            i = int(np.flatnonzero(mask.to_numpy())[0])
            raise StudyError(f"{src}: column {name!r}, data row {i + 1}: {raw.iloc[i]!r} is not {what}")

    if kind == "str":
        return raw
    if kind == "bool":
        low = raw.str.lower()
        bad(~low.isin(_TRUE | _FALSE), "a boolean (true/false)")
        return low.isin(_TRUE)
    num = pd.to_numeric(raw.where(~raw.str.lower().isin({"", "nan", "na", "none"}), None), errors="coerce")
    bad(num.isna() & ~raw.str.lower().isin({"", "nan", "na", "none"}), "a number")
    if kind == "float":
        return num.astype(float)
    bad(num.notna() & (num != num.round()), "an integer")
    if kind == "int":
        bad(num.isna(), "an integer (empty is not allowed)")
        return num.astype("int64")
    return num.astype("Int64")


def _typed(frame: pd.DataFrame, name: str, src: str) -> pd.DataFrame:
    spec = FILES[name]
    missing = [c for c in spec if c not in frame.columns]
    if missing:
        raise StudyError(f"{src}: missing column(s) {missing}; {name}.csv needs {list(spec)}")
    out = pd.DataFrame({c: _convert(frame[c], kind, c, src) for c, kind in spec.items()})
    extra = [c for c in frame.columns if c not in spec]
    if extra:
        log.info("%s: ignoring extra column(s) %s", src, extra)
    return out


def _check(frame: pd.DataFrame, name: str, src: str) -> None:
    if name in ("results", "pretrain"):
        allowed = KINDS if name == "results" else PRETRAIN_KINDS
        unknown = sorted(set(frame["kind"]) - set(allowed))
        if unknown:
            raise StudyError(f"{src}: column 'kind' has unknown value(s) {unknown}; allowed {list(allowed)}")
    if name == "results":
        bad = sorted(set(frame["split"]) - set(SPLITS))
        if bad:
            raise StudyError(f"{src}: column 'split' has unknown value(s) {bad}; allowed {list(SPLITS)}")
        ids = {e for s in frame["experiments"] for e in s.split(";") if e}
        unknown = sorted(ids - set(EXPERIMENTS))
        if unknown:
            raise StudyError(f"{src}: column 'experiments' has unknown id(s) {unknown}")
    dup = frame.duplicated(list(KEYS[name]), keep=False)
    if dup.any():
        row = frame[dup].iloc[0]
        key = {k: row[k] for k in KEYS[name]}
        raise StudyError(f"{src}: duplicated row for {key} (the key is {list(KEYS[name])})")


def typed_frame(frame: pd.DataFrame, name: str, src: str = "<frame>") -> pd.DataFrame:
    """Convert and validate a frame of one study file's columns (as read from CSV, or made by hand)."""
    if name not in FILES:
        raise StudyError(f"unknown study file {name!r}; expected one of {list(FILES)}")
    raw = frame.astype(object).where(frame.notna(), "").astype(str)
    out = _typed(raw, name, src)
    _check(out, name, src)
    return out


def read_study_file(path: str | Path, name: str) -> pd.DataFrame:
    """Read one study CSV (``name`` in ``results``, ``chance``, ``distances``, ``pretrain``), validated."""
    if name not in FILES:
        raise StudyError(f"unknown study file {name!r}; expected one of {list(FILES)}")
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise StudyError(f"{path}: empty file (not even a header row)") from None
    frame = _typed(raw, name, str(path))
    _check(frame, name, str(path))
    return frame


def load_study(metrics_dir: str | Path) -> Study:
    """Load ``results.csv``, ``chance.csv``, ``distances.csv``, ``pretrain.csv`` and ``design.json``
    from ``metrics_dir``.

    Missing files (or a missing folder) leave their field ``None`` and are listed in ``missing``.
    """
    folder = Path(metrics_dir)
    study = Study(source=str(folder))
    for name in FILES:
        path = folder / f"{name}.csv"
        if path.exists():
            setattr(study, name, read_study_file(path, name))
        else:
            study.missing.append(f"{name}.csv")
            log.warning("%s: not found, the experiments that need it are 'not run'", path)
    path = folder / DESIGN_FILE
    if path.exists():
        study.design = read_design(path)
    else:
        study.missing.append(DESIGN_FILE)
        log.warning("%s: not found, the roles of the runs are unknown: every claim is 'not run'", path)
    return study
