"""Collect the study's metrics files into the tidy CSV tables the report reads (``metrics/study/``).

Inputs (written by the DVC stages): ``metrics/finetune/*.json`` (one file per fine-tuning stage: a list
of ``{"model": {...}, "records": [...]}`` jobs), ``metrics/distance/*.json``, ``metrics/pretrain/*.json``
and ``metrics/data/stats.json``. Outputs: ``results.csv``, ``chance.csv``, ``distances.csv``,
``pretrain.csv`` with the columns of :data:`COLUMNS` (the contract with :mod:`vlmerge_core.report`).
Rows are sorted, floats rounded, so the same metrics give the same bytes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from vlmerge_core.io import atomic_path, read_json

log = logging.getLogger(__name__)

COLUMNS = {
    "results": [
        "model_id",
        "kind",
        "seed_steps",
        "variant",
        "method",
        "knob",
        "knob_value",
        "option",
        "task",
        "metric",
        "is_main",
        "ft_seed",
        "value",
        "ci_low",
        "ci_high",
        "experiments",
    ],
    "chance": ["task", "metric", "value"],
    "distances": ["model_id", "seed_steps", "variant", "metric", "scope", "value"],
    "pretrain": ["model_id", "kind", "seed_steps", "variant", "steps", "metric", "value"],
}
MAIN_METRIC = {
    "vqa": "vqa_score",
    "coco": "r_mean",
    "flickr": "r_mean",
    "nlvr2": "accuracy",
    "imagenet": "top1",
    "ade20k": "miou",
    "text": "accuracy",
}
DIGITS = 6


class CollectError(ValueError):
    """A metrics file the collection reads is missing a field; the message names file and field."""


def _num(x: Any) -> float:
    """A metric value (already in points) as a float; a missing one (``None``) is NaN."""
    return math.nan if x is None else float(x)


def finetune_rows(doc: dict[str, Any], src: str) -> list[dict[str, Any]]:
    """Rows of ``results.csv`` from one fine-tuning job ``{"model": info, "records": [...]}``."""
    info = doc.get("model") or {}
    for key in ("model_id", "kind"):
        if key not in info:
            raise CollectError(f"{src}: model.{key} missing")
    exps = ";".join(info.get("experiments", []))
    base = {
        "model_id": info["model_id"],
        "kind": info["kind"],
        "seed_steps": info.get("seed_steps"),
        "variant": info.get("variant", ""),
        "method": info.get("method", ""),
        "knob": info.get("knob", ""),
        "knob_value": info.get("knob_value"),
        "option": info.get("option", ""),
        "experiments": exps,
    }
    rows = []
    for rec in doc.get("records", []):
        try:
            task, seed, metrics = rec["task"], rec["ft_seed"], rec["metrics"]
        except KeyError as exc:
            raise CollectError(f"{src}: a record of {info['model_id']} has no {exc}") from None
        main = rec.get("main_metric") or MAIN_METRIC.get(task, "")
        ci = rec.get("ci") or {}
        for name, value in metrics.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            lo, hi = (ci.get(name) or (None, None))[:2]
            rows.append(
                {
                    **base,
                    "task": task,
                    "metric": name,
                    "is_main": name == main,
                    "ft_seed": seed,
                    "value": _num(value),
                    "ci_low": _num(lo),
                    "ci_high": _num(hi),
                }
            )
        if rec.get("val_last_gain") is not None:
            rows.append(
                {
                    **base,
                    "task": task,
                    "metric": "val_last_gain",
                    "is_main": False,
                    "ft_seed": seed,
                    "value": _num(rec["val_last_gain"]),
                    "ci_low": math.nan,
                    "ci_high": math.nan,
                }
            )
    return rows


def chance_rows(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Chance level of each task's main metric (points) from ``metrics/data/stats.json``."""
    c = stats["chance"]
    r = c["retrieval_random"]
    r_mean = 100 * sum(r[k][d] for k in ("r1", "r5", "r10") for d in ("i2t", "t2i")) / 6
    return [
        {"task": "vqa", "metric": "vqa_score", "value": 100 * c["vqa_majority_acc"]},
        {"task": "coco", "metric": "r_mean", "value": r_mean},
        {"task": "flickr", "metric": "r_mean", "value": r_mean},
        {"task": "nlvr2", "metric": "accuracy", "value": 100 * c["nlvr2_majority_acc"]},
        {"task": "imagenet", "metric": "top1", "value": 100 * c["imagenet_majority_acc"]},
        {"task": "ade20k", "metric": "miou", "value": 100 * c["ade20k_majority"]["miou"]},
        {"task": "text", "metric": "accuracy", "value": 100 * c["text_majority_acc"]},
    ]


def distance_rows(doc: dict[str, Any], src: str) -> list[dict[str, Any]]:
    """Rows of ``distances.csv`` from one distance file ``{"model": info, "total": {...}, "blocks": ...}``."""
    info = doc.get("model") or {}
    if "model_id" not in info:
        raise CollectError(f"{src}: model.model_id missing")
    base = {
        "model_id": info["model_id"],
        "seed_steps": info.get("seed_steps"),
        "variant": info.get("variant", ""),
    }
    rows = [
        {**base, "metric": k, "scope": "total", "value": float(v)}
        for k, v in (doc.get("total") or {}).items()
        if isinstance(v, (int, float))
    ]
    for block, values in sorted((doc.get("blocks") or {}).items(), key=lambda kv: int(kv[0])):
        rows += [
            {**base, "metric": k, "scope": f"block{block}", "value": float(v)}
            for k, v in values.items()
            if isinstance(v, (int, float))
        ]
    return rows


def _retrieval_rows(base: dict[str, Any], retr: dict[str, Any], loss_end: dict[str, Any]) -> list[dict]:
    rows = [
        {**base, "metric": f"{d}_r{k}", "value": float(retr[f"{d}_r{k}"])}
        for d in ("ir", "tr")
        for k in (1, 5, 10)
        if f"{d}_r{k}" in retr
    ]
    if "rsum" in retr:
        rows.append({**base, "metric": "rsum", "value": float(retr["rsum"])})
    rows += [
        {**base, "metric": f"loss_{name}_end", "value": float(v)} for name, v in (loss_end or {}).items()
    ]
    return rows


def pretrain_rows(doc: Any, src: str) -> list[dict[str, Any]]:
    """Rows of ``pretrain.csv`` from one pre-training metrics file: the run's identity (``study`` block),
    or the init run, or one row group per kept checkpoint of the seed run (``seed<K>``).

    Loss-curve files (lists of plot records) and runs outside the study grid give no rows.
    """
    if not isinstance(doc, dict):
        return []
    info = doc.get("study") or {}
    if "model_id" in info:
        base = {
            "model_id": info["model_id"],
            "kind": info.get("kind", ""),
            "seed_steps": info.get("seed_steps"),
            "variant": info.get("variant", ""),
            "steps": doc.get("steps"),
        }
        return _retrieval_rows(base, doc.get("retrieval") or {}, doc.get("loss_end"))
    if doc.get("stage") == "init":
        base = {
            "model_id": "init",
            "kind": "init",
            "seed_steps": None,
            "variant": "",
            "steps": doc.get("steps"),
        }
        return _retrieval_rows(base, doc.get("retrieval") or {}, doc.get("loss_end"))
    if doc.get("stage") == "seed":
        rows = []
        for step, ck in sorted((doc.get("checkpoints") or {}).items(), key=lambda kv: int(kv[0])):
            base = {
                "model_id": f"seed{int(step)}",
                "kind": "seed",
                "seed_steps": int(step),
                "variant": "",
                "steps": int(step),
            }
            rows += _retrieval_rows(base, ck.get("retrieval") or {}, ck.get("loss_end"))
        return rows
    return []


def _frame(rows: Iterable[dict[str, Any]], table: str) -> pd.DataFrame:
    cols = COLUMNS[table]
    df = pd.DataFrame(list(rows), columns=cols)
    if "seed_steps" in df:
        df["seed_steps"] = pd.array(df["seed_steps"], dtype="Int64")
    keys = [
        c for c in cols if c not in ("value", "ci_low", "ci_high", "is_main", "knob_value", "experiments")
    ]
    df = df.sort_values(keys, kind="mergesort", na_position="first").reset_index(drop=True)
    return df.round(DIGITS)


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n", float_format=f"%.{DIGITS}g")
    return path


def _read_all(folder: Path) -> list[tuple[str, Any]]:
    return [(str(p), read_json(p)) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def collect(metrics_dir: str | Path, out_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Read every metrics file under ``metrics_dir`` and write the four CSV tables into ``out_dir``."""
    metrics_dir, out_dir = Path(metrics_dir), Path(out_dir)
    results: list[dict[str, Any]] = []
    for src, doc in _read_all(metrics_dir / "finetune"):
        for job in doc if isinstance(doc, list) else [doc]:
            results += finetune_rows(job, src)
    distances: list[dict[str, Any]] = []
    for src, doc in _read_all(metrics_dir / "distance"):
        distances += distance_rows(doc, src)
    pretrain: list[dict[str, Any]] = []
    for src, doc in _read_all(metrics_dir / "pretrain"):
        pretrain += pretrain_rows(doc, src)
    stats = metrics_dir / "data" / "stats.json"
    if not stats.exists():
        raise CollectError(f"{stats}: the data stage's statistics are missing (run `dvc repro data`)")
    frames = {
        "results": _frame(results, "results"),
        "chance": _frame(chance_rows(read_json(stats)), "chance"),
        "distances": _frame(distances, "distances"),
        "pretrain": _frame(pretrain, "pretrain"),
    }
    for name, df in frames.items():
        _write_csv(df, out_dir / f"{name}.csv")
        log.info("%s: %d rows", out_dir / f"{name}.csv", len(df))
    for method, df in sweeps(frames["results"]).items():
        _write_csv(df, out_dir / "sweeps" / f"{method}.csv")
    return frames


def sweeps(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """E2 sweep curves for ``dvc plots``: per method, the main metric averaged over seeds and the
    tasks of the sweep against the knob value (one CSV per method)."""
    e2 = results[
        (results["kind"] == "merged")
        & results["is_main"]
        & results["experiments"].fillna("").str.contains("E2")
        & (results["option"].fillna("") == "")
    ]
    out = {}
    for method, df in e2.groupby("method", sort=True):
        tasks = sorted(set.intersection(*(set(g["task"]) for _, g in df.groupby("knob_value"))))
        df = df[df["task"].isin(tasks)]
        curve = (
            df.groupby("knob_value", as_index=False)["value"].mean().rename(columns={"value": "mean_main"})
        )
        out[method] = curve.round(DIGITS)
    return out
