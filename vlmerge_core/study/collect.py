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

# identity of a pre-trained unit in every table: its replicate (pt_seed: the RNG seed of the seed run
# behind it), its steps (MA runs: K; MS runs: K_VL), the MS run's own RNG seed and LR multiplier
UNIT = ["pt_seed", "pt_steps", "ms_seed", "lr_mult"]
COLUMNS = {
    "results": [
        "model_id",
        "kind",
        "seed_steps",
        "variant",
        *UNIT,
        "method",
        "knob",
        "knob_value",
        "option",
        "task",
        "metric",
        "is_main",
        "split",
        "ft_seed",
        "value",
        "ci_low",
        "ci_high",
        "experiments",
    ],
    "chance": ["task", "metric", "value"],
    "distances": ["model_id", "seed_steps", "variant", *UNIT, "metric", "scope", "value"],
    "pretrain": ["model_id", "kind", "seed_steps", "variant", *UNIT, "steps", "metric", "value"],
    "timing": ["stage", "unit", "task", "seconds"],
}
INT_COLUMNS = ("seed_steps", "pt_seed", "pt_steps", "ms_seed")
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
        **_unit(info),
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
        for split, values in (("test", metrics), ("val", rec.get("val") or {})):
            for name, value in values.items():
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                lo, hi = (ci.get(name) or (None, None))[:2] if split == "test" else (None, None)
                rows.append(
                    {**base, "task": task, "metric": name, "is_main": name == main, "split": split,
                     "ft_seed": seed, "value": _num(value), "ci_low": _num(lo), "ci_high": _num(hi)}
                )  # fmt: skip
        if rec.get("val_last_gain") is not None:
            rows.append(
                {**base, "task": task, "metric": "val_last_gain", "is_main": False, "split": "val",
                 "ft_seed": seed, "value": _num(rec["val_last_gain"]), "ci_low": math.nan, "ci_high": math.nan}
            )  # fmt: skip
    return rows


def _unit(info: dict[str, Any]) -> dict[str, Any]:
    """The pre-trained unit's identity columns (:data:`UNIT`) of a metrics file's ``model`` block."""
    return {k: info.get(k) for k in UNIT}


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
        **_unit(info),
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
            **_unit(info),
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


def timing_rows(metrics_dir: Path) -> list[dict[str, Any]]:
    """Seconds of every unit of work the metrics record: each pre-training run (``wall_time_s``), each
    MS run's merges (the sum of its records), each fine-tune (``seconds``), by stage."""
    rows: list[dict[str, Any]] = []
    for stage, folder in (("init", metrics_dir / "pretrain"), ("pretrain_ma", metrics_dir / "pretrain" / "ma"),
                          ("pretrain_ms", metrics_dir / "pretrain" / "ms")):  # fmt: skip
        for src, doc in _read_all(folder):
            if isinstance(doc, dict) and doc.get("wall_time_s") is not None:
                if stage == "init" and doc.get("stage") != "init":
                    continue
                unit = (doc.get("study") or {}).get("model_id") or Path(src).stem
                rows.append({"stage": stage, "unit": unit, "task": "", "seconds": float(doc["wall_time_s"])})
    for src, doc in _read_all(metrics_dir / "merge"):
        recs = doc.get("records", []) if isinstance(doc, dict) else []
        rows.append({"stage": "merge", "unit": Path(src).stem, "task": "",
                     "seconds": float(sum(r.get("seconds", 0.0) for r in recs))})  # fmt: skip
    for src, doc in _read_all(metrics_dir / "finetune"):
        for job in doc if isinstance(doc, list) else [doc]:
            for rec in job.get("records", []):
                rows.append({"stage": Path(src).stem, "unit": job["model"]["model_id"], "task": rec["task"],
                             "seconds": float(rec.get("seconds", 0.0))})  # fmt: skip
    return rows


def _frame(rows: Iterable[dict[str, Any]], table: str) -> pd.DataFrame:
    cols = COLUMNS[table]
    df = pd.DataFrame(list(rows), columns=cols)
    for col in INT_COLUMNS:
        if col in df:
            df[col] = pd.array(pd.to_numeric(df[col]), dtype="Int64")
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
    for folder in (
        metrics_dir / "pretrain",
        metrics_dir / "pretrain" / "ma",
        metrics_dir / "pretrain" / "ms",
    ):
        for src, doc in _read_all(folder):
            pretrain += pretrain_rows(doc, src)
    stats = metrics_dir / "data" / "stats.json"
    if not stats.exists():
        raise CollectError(f"{stats}: the data stage's statistics are missing (run `dvc repro data`)")
    frames = {
        "results": _frame(results, "results"),
        "chance": _frame(chance_rows(read_json(stats)), "chance"),
        "distances": _frame(distances, "distances"),
        "pretrain": _frame(pretrain, "pretrain"),
        "timing": _frame(timing_rows(metrics_dir), "timing"),
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
        & (results["split"] == "test")
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


def merges_table(out: dict[str, dict]) -> pd.DataFrame:
    """One row per MS run of the merge stage: its merges and its total L2, L2 per parameter and TSSD."""
    rows = {}
    for ms_id, res in out.items():
        total = res["distance"].get("total") or {}
        rows[ms_id] = {"merges": len(res["merges"]["records"]),
                       **{k: total.get(k) for k in ("l2", "l2_rms", "cosine", "ssd", "tssd")}}  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("ms run").round(4)


def main_table(docs: list[dict]) -> pd.DataFrame:
    """The test main metric of every fine-tuned model (rows) and task (columns), mean over seeds."""
    rows = pd.DataFrame([r for d in docs for r in finetune_rows(d, "docs")])
    if rows.empty:
        return rows
    main = rows[rows["is_main"] & (rows["split"] == "test")]
    return main.pivot_table(index="model_id", columns="task", values="value", aggfunc="mean").round(1)
