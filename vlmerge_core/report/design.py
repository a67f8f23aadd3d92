"""The roles of the study's runs, read from ``design.json`` (written by the collect stage beside the CSVs,
:class:`vlmerge_core.study.plan.Design`), and the rows that play each role.

The report never hard-codes a step count or a merge: the recipe's seed length, K_VL, the MA controls'
steps and the recipe's merge all come from here. Roles (PAPER.md §8, DESIGN.md §11):

* **E1 MS runs**: variant ``all``, pre-trained for K_VL steps at the base learning rate with the MS RNG
  seed equal to the replicate's (``ms_seed == pt_seed``), from the seed of each length (0 = naive);
* **recipe** / **naive**: the recipe merge (``recipe_method`` at ``recipe_knob``, no option) of the E1
  MS runs with ``K_seed = recipe_seed`` / ``K_seed = 0``, one row group per replicate;
* **ms_recipe** / **ms_naive**: those MS runs unmerged;
* **ma_baseline**: the paper's MA baseline (pre-trained from the init for ``ma_baseline_steps`` = K_VL;
  the abstract's "pre-trained from scratch", README run ``ma_200k_vlpt``); **ma_matched**: the
  compute-matched MA (``ma_matched_steps`` = K_seed + K_VL).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vlmerge_core.report.schema import StudyError

ROLES = ("recipe", "naive", "ms_recipe", "ms_naive", "ma_baseline", "ma_matched")
ROLE_NAMES = {
    "recipe": "recipe merge",
    "naive": "naive merge",
    "ms_recipe": "MS (unmerged, recipe seed)",
    "ms_naive": "MS (unmerged, no seed)",
    "ma_baseline": "MA baseline (paper's)",
    "ma_matched": "compute-matched MA",
}


@dataclass(frozen=True)
class Design:
    """What ``design.json`` says (one field a key)."""

    recipe_seed: int  # K_seed of the recipe
    k_vl: int  # K_VL: steps of the MS pre-training
    seed_lengths: tuple[int, ...]  # K_seed of E1 (0, the naive case, comes on top)
    pt_seeds: tuple[int, ...]  # RNG seeds of the pre-training replicates
    ma_baseline_steps: int  # the paper's MA baseline: K_VL from the init
    ma_matched_steps: int  # the compute-matched MA: K_seed + K_VL
    recipe_method: str  # the recipe's merge method
    recipe_knob: dict[str, float] = field(default_factory=dict)  # its knob(s), e.g. {"ratio": 0.5}
    recipe_methods: tuple[str, ...] = ()  # C5's methods, merged on every recipe replicate

    @property
    def pretrain_steps(self) -> dict[str, int]:
        """Pre-training steps behind each claim row: the recipe and MS K_seed + K_VL, naive K_VL."""
        return {"recipe": self.recipe_seed + self.k_vl, "naive": self.k_vl, "ms_recipe": self.recipe_seed + self.k_vl,
                "ms_naive": self.k_vl, "ma_baseline": self.ma_baseline_steps, "ma_matched": self.ma_matched_steps}  # fmt: skip


_INT = ("recipe_seed", "k_vl", "ma_baseline_steps", "ma_matched_steps")
_INTS = ("seed_lengths", "pt_seeds")


def design_from_dict(doc: dict[str, Any], src: str = "<design>") -> Design:
    """A :class:`Design` from the parsed ``design.json``; a missing or mistyped key raises
    :class:`StudyError` naming it (extra keys are ignored)."""
    if not isinstance(doc, dict):
        raise StudyError(f"{src}: expected a JSON object, got {type(doc).__name__}")
    missing = [k for k in (*_INT, *_INTS, "recipe_method") if k not in doc]
    if missing:
        raise StudyError(f"{src}: missing key(s) {missing}")

    def ints(key: str) -> tuple[int, ...]:
        v = doc[key]
        if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise StudyError(f"{src}: {key}: expected a list of integers, got {v!r}")
        return tuple(v)

    for k in _INT:
        if not isinstance(doc[k], int) or isinstance(doc[k], bool):
            raise StudyError(f"{src}: {k}: expected an integer, got {doc[k]!r}")
    knob = doc.get("recipe_knob") or {}
    if not isinstance(knob, dict) or not all(isinstance(v, (int, float)) for v in knob.values()):
        raise StudyError(f"{src}: recipe_knob: expected an object of numbers, got {knob!r}")
    methods = doc.get("recipe_methods") or [doc["recipe_method"]]
    if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
        raise StudyError(f"{src}: recipe_methods: expected a list of method names, got {methods!r}")
    return Design(**{k: int(doc[k]) for k in _INT}, seed_lengths=ints("seed_lengths"), pt_seeds=ints("pt_seeds"),
                  recipe_method=str(doc["recipe_method"]), recipe_knob={k: float(v) for k, v in knob.items()},
                  recipe_methods=tuple(methods))  # fmt: skip


def read_design(path: str | Path) -> Design:
    """Read and check ``design.json``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StudyError(f"{path}: not valid JSON ({exc})") from None
    return design_from_dict(doc, str(path))


# ---------------------------------------------------------------------------------------- row masks
def _eq(col: pd.Series, value: float) -> pd.Series:
    return col.astype("Float64").fillna(math.nan).astype(float).sub(value).abs().lt(1e-9)


def knob_matches(knob: pd.Series, value: pd.Series, spec: dict[str, float]) -> pd.Series:
    """Rows whose swept knob is set as in ``spec`` (a merge without a swept knob matches any spec)."""
    # built as floats: Series.map keeps a string dtype on pandas' pyarrow-backed strings
    want = pd.Series([spec.get(k, math.nan) if k else math.nan for k in knob], index=knob.index, dtype=float)
    return (knob == "") | (value.astype(float).sub(want).abs() < 1e-9)


def e1_run_mask(rows: pd.DataFrame, d: Design) -> pd.Series:
    """Rows of the E1 MS runs (and their merges): variant ``all``, K_VL steps, base LR, MS RNG seed =
    the replicate's."""
    return (
        (rows["variant"] == "all")
        & _eq(rows["pt_steps"], d.k_vl)
        & _eq(rows["lr_mult"], 1.0)
        & rows["pt_seed"].notna()
        & (rows["ms_seed"].astype("Float64") == rows["pt_seed"].astype("Float64")).fillna(False).astype(bool)
    )


def recipe_merge_mask(rows: pd.DataFrame, d: Design) -> pd.Series:
    """Merged rows of the recipe's merge: ``recipe_method`` at ``recipe_knob``, no option."""
    return (
        (rows["kind"] == "merged")
        & (rows["method"] == d.recipe_method)
        & (rows["option"] == "")
        & knob_matches(rows["knob"], rows["knob_value"], d.recipe_knob)
    )


def role_mask(rows: pd.DataFrame, d: Design, role: str) -> pd.Series:
    """Rows that play ``role`` (one of :data:`ROLES`), every replicate."""
    if role in ("recipe", "naive", "ms_recipe", "ms_naive"):
        k = d.recipe_seed if role in ("recipe", "ms_recipe") else 0
        base = e1_run_mask(rows, d) & _eq(rows["seed_steps"], k)
        return base & (recipe_merge_mask(rows, d) if role in ("recipe", "naive") else rows["kind"] == "ms")
    if role in ("ma_baseline", "ma_matched"):
        steps = d.ma_baseline_steps if role == "ma_baseline" else d.ma_matched_steps
        return (rows["kind"] == "ma") & _eq(rows["pt_steps"], steps)
    raise ValueError(f"role must be one of {ROLES}, got {role!r}")


def role_rows(rows: pd.DataFrame, d: Design, role: str) -> pd.DataFrame:
    """The rows of ``rows`` that play ``role``."""
    if len(rows) == 0:
        return rows
    return rows[role_mask(rows, d, role)]
