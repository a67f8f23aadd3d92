"""A small synthetic study that honours the metrics contract, for notebook smoke runs and tests.

The numbers are made up by a simple model (seed pre-training shrinks the drop from merging, distances
shrink with the seed length, every run adds Gaussian noise); they demonstrate the report, nothing
else, and are never written under ``metrics/``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from vlmerge_core.io import atomic_write
from vlmerge_core.report.schema import FILES

BASE = {
    "vqa": 45.0,
    "coco": 35.0,
    "flickr": 32.0,
    "nlvr2": 62.0,
    "imagenet": 48.0,
    "ade20k": 38.0,
    "text": 72.0,
}
CHANCE = {
    "vqa": 25.0,
    "coco": 5.3,
    "flickr": 5.3,
    "nlvr2": 50.0,
    "imagenet": 3.3,
    "ade20k": 12.5,
    "text": 50.0,
}
MAIN = {"vqa": "vqa_score", "coco": "r_mean", "flickr": "r_mean", "nlvr2": "accuracy", "imagenet": "top1",
        "ade20k": "miou", "text": "accuracy"}  # fmt: skip
RECALLS = ("ir_r1", "ir_r5", "ir_r10", "tr_r1", "tr_r5", "tr_r10")
METHOD_DROP = {"interpolation": 1.0, "arithmetic": 1.2, "arithmetic_formula": 1.3, "regmean": 0.7, "ties": 1.1,
               "dare": 1.25}  # fmt: skip
VARIANT_DROP = {"all": 1.0, "attn": 0.8, "ffn": 0.6, "ln": 0.2}
SMOKE_TASKS = ("vqa", "coco", "nlvr2")  # a few tasks of each kind: fusion, retrieval, pairs
KNOBS = {"interpolation": ("ratio", (0.0, 0.25, 0.5, 0.75, 1.0)), "arithmetic": ("lam", (0.25, 0.5, 0.75, 1.0)),
         "arithmetic_formula": ("lam", (0.25, 0.5)), "regmean": ("alpha", (0.5, 1.0)),
         "ties": ("density", (0.2, 0.5)), "dare": ("drop_rate", (0.1, 0.5))}  # fmt: skip


def _model(mid: str, kind: str, exps: str, k=None, variant="", method="", knob="", value=math.nan, option=""):
    return dict(model_id=mid, kind=kind, seed_steps=k, variant=variant, method=method, knob=knob,
                knob_value=value, option=option, experiments=exps)  # fmt: skip


def study_models(seed_steps: tuple[int, ...] = (0, 100, 300)) -> list[dict]:
    """The model grid of the synthetic study (descriptors and experiment tags, PAPER.md §7)."""
    kr = max(seed_steps)
    ms = [
        _model("untrained", "untrained", "E0"),
        _model("random", "random", "E0"),
        _model("init", "init", "E0"),
    ]
    ms += [
        _model(f"seed{k}", "seed", "E0", k) for k in seed_steps if k in (min(s for s in seed_steps if s), kr)
    ]
    ms.append(_model("ma_baseline", "ma_baseline", "E0;E1;E2;E3;E5"))
    for k in seed_steps:
        ms.append(_model(f"ms_all_s{k}", "ms", "E1;E2;E3;E5" if k == kr else "E1", k, "all"))
    for v in ("attn", "ffn", "ln"):
        ms.append(_model(f"ms_{v}_s{kr}", "ms", "E3", kr, v))
    for k in seed_steps:
        for meth, knob, val in (("interpolation", "ratio", 0.5), ("arithmetic", "lam", 0.5)):
            tags = ["E1", "E4"] + (["E5"] if meth == "interpolation" and k in (0, kr) else [])
            tags += (["E2", "E3"] if meth == "interpolation" else ["E2"]) if k == kr else []
            ms.append(
                _model(
                    f"merged_all_s{k}_{meth}_{knob}{val:g}",
                    "merged",
                    ";".join(tags),
                    k,
                    "all",
                    meth,
                    knob,
                    val,
                )
            )
    have = {m["model_id"] for m in ms}
    for meth, (knob, vals) in KNOBS.items():
        for val in vals:
            mid = f"merged_all_s{kr}_{meth}_{knob}{val:g}"
            tag = (
                "E2;E4;E6" if meth in ("arithmetic_formula", "ties", "dare") else "E2;E4"
            )  # as the study plan
            if mid not in have:
                ms.append(_model(mid, "merged", tag, kr, "all", meth, knob, val))
    for v in ("attn", "ffn", "ln"):
        ms.append(_model(f"merged_{v}_s{kr}_interpolation_ratio0.5", "merged", "E3;E4", kr, v, "interpolation",
                         "ratio", 0.5))  # fmt: skip
    ms.append(_model(f"merged_all_s{kr}_interpolation_ratio0.5_used", "merged", "E6", kr, "all", "interpolation",
                     "ratio", 0.5, "used_experts"))  # fmt: skip
    ms.append(_model(f"merged_all_s{kr}_regmean_alpha1_nopad", "merged", "E6", kr, "all", "regmean", "alpha",
                     1.0, "gram_nopad"))  # fmt: skip
    return ms


def _score(m: dict, task: str) -> float:
    b, k = BASE[task], (m["seed_steps"] or 0)
    kind = m["kind"]
    if kind == "untrained":
        return CHANCE[task]
    if kind in ("random", "init", "seed", "ma_baseline"):
        return b + {"random": -10.0, "init": -5.0, "seed": 2 * math.log1p(k / 100), "ma_baseline": 5.0}[kind]
    ms = b + 6.0 - 0.5 * (m["variant"] != "all")
    if kind == "ms":
        return ms
    drop = 12.0 / (1 + k / 100) * METHOD_DROP[m["method"]] * VARIANT_DROP[m["variant"]]
    drop += 8.0 * (m["knob_value"] - 0.5) ** 2 + (0.5 if m["option"] else 0.0)
    return ms - drop


def make_study(out_dir: str | Path, *, rng_seed: int = 0, n_ft_seeds: int = 3,
               seed_steps: tuple[int, ...] = (0, 100, 300), tasks: tuple[str, ...] = SMOKE_TASKS,
               noise: float = 0.5) -> Path:  # fmt: skip
    """Write ``results.csv``, ``chance.csv``, ``distances.csv`` and ``pretrain.csv`` under ``out_dir``.

    Args:
        out_dir: the folder to write (created).
        rng_seed: seed of the noise.
        n_ft_seeds: fine-tuning seeds per model (the untrained model has one, with a bootstrap interval).
        seed_steps: the K_seed grid (0 = naive); the longest is the recipe's.
        tasks: tasks to include (any of ``schema.TASKS``).
        noise: standard deviation of the run-to-run noise, in points.
    """
    rng = np.random.default_rng(rng_seed)
    out = Path(out_dir)
    rows = []
    for m in study_models(seed_steps):
        seeds = [0] if m["kind"] == "untrained" else list(range(n_ft_seeds))
        for task in tasks:
            metrics = [MAIN[task]] + (list(RECALLS) if MAIN[task] == "r_mean" else [])
            metrics += ["pixel_acc"] if task == "ade20k" else []
            for s in seeds:
                v = _score(m, task) + rng.normal(0, noise)
                for met in metrics:
                    val = (
                        v
                        if met == MAIN[task]
                        else min(99.0, v * (0.5 + RECALLS.index(met) % 3 * 0.6))
                        if met in RECALLS
                        else v + 30
                    )
                    lo, hi = (val - 2.0, val + 2.0) if m["kind"] == "untrained" else (math.nan, math.nan)
                    rows.append({**m, "task": task, "metric": met, "is_main": met == MAIN[task], "ft_seed": s,
                                 "value": val, "ci_low": lo, "ci_high": hi})  # fmt: skip
                if m["kind"] != "untrained":
                    rows.append({**m, "task": task, "metric": "val_last_gain", "is_main": False, "ft_seed": s,
                                 "value": abs(rng.normal(0.3, 0.2)), "ci_low": math.nan, "ci_high": math.nan})  # fmt: skip
    chance = [{"task": t, "metric": MAIN[t], "value": CHANCE[t]} for t in tasks]
    dists, pre = [], []
    for m in study_models(seed_steps):
        k = m["seed_steps"] or 0
        if m["kind"] == "ms":
            scale = VARIANT_DROP[m["variant"]] / (1 + k / 100)
            for met, base in (
                ("l2", 20.0),
                ("cosine", 0.8),
                ("ssd", 0.6),
                ("tssd", 0.7),
                ("sign_conflict", 0.4),
            ):
                for scope in ("total", "block0", "block1", "block2", "block3"):
                    f = 1.0 if scope == "total" else 0.2 + 0.1 * int(scope[-1])
                    val = base * scale * f * (1 + rng.normal(0, 0.05))
                    dists.append({"model_id": m["model_id"], "seed_steps": k, "variant": m["variant"], "metric": met,
                                  "scope": scope, "value": val})  # fmt: skip
        if m["kind"] in ("init", "seed", "ma_baseline", "ms"):
            steps = {"init": 200, "seed": k, "ma_baseline": 600, "ms": 300}[m["kind"]]
            r1 = {"init": 2.0, "seed": 10 + 10 * math.log1p(k / 100), "ma_baseline": 35.0, "ms": 33.0}[
                m["kind"]
            ]
            for met, val in (
                ("ir_r1", r1),
                ("tr_r1", r1 * 1.1),
                ("rsum", r1 * 9),
                ("loss_itc_end", 3 - r1 / 20),
            ):
                pre.append({"model_id": m["model_id"], "kind": m["kind"], "seed_steps": "" if m["kind"] in ("init", "ma_baseline") else k,
                            "variant": m["variant"], "steps": steps, "metric": met, "value": val})  # fmt: skip
    frames = {"results": pd.DataFrame(rows), "chance": pd.DataFrame(chance), "distances": pd.DataFrame(dists),
              "pretrain": pd.DataFrame(pre)}  # fmt: skip
    for name, df in frames.items():
        write_csv(df[list(FILES[name])], out / f"{name}.csv")
    return out


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as CSV atomically, floats with 6 decimals, ``\\n`` line ends."""
    with atomic_write(path) as fh:
        df.to_csv(fh, index=False, float_format="%.6f", lineterminator="\n")
    return Path(path)
