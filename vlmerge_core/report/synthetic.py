"""A small synthetic study that honours the metrics contract, for notebook smoke runs and tests.

It has the shape of the real study (:mod:`vlmerge_core.study.plan`): MA runs ``ma{K}_r{r}`` (seed
lengths, the MA baseline and the compute-matched MA, every replicate), E1 MS runs ``all_s{K}_r{r}``
(every seed length and 0, every replicate), an E4 grid at the recipe's seed length, the E2 knob sweep
and the E6 options on the sweep tasks, val and test rows of every fine-tune, and ``design.json``.
The numbers are made up by a simple model (a pre-trained model's offset shared by its fine-tunes, the
drop from merging proportional to the experts' distance, which shrinks with the seed length,
Gaussian fine-tuning noise); they demonstrate the report, nothing else, and are never written under
``metrics/``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from vlmerge_core.io import atomic_write
from vlmerge_core.report.schema import DESIGN_FILE, FILES

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
METHOD_DROP = {"interpolation": 1.0, "arithmetic": 1.5, "arithmetic_formula": 1.6, "regmean": 0.6, "ties": 1.1,
               "dare": 1.3}  # fmt: skip
VARIANT_DIST = {"all": 1.0, "attn": 0.8, "ffn": 0.6, "ln": 0.2}
VARIANT_PARAMS = {"all": 199680, "attn": 66560, "ffn": 132096, "ln": 1024}  # parameters the distance compares
SMOKE_TASKS = ("vqa", "coco", "nlvr2")  # a few tasks of each kind: fusion, retrieval, pairs
# method -> (knob, values of the E2 sweep; the first is the default)
KNOBS = {"interpolation": ("ratio", (0.5, 0.25, 0.75)), "arithmetic": ("lam", (0.75, 0.5)),
         "arithmetic_formula": ("lam", (0.75, 0.5)), "regmean": ("alpha", (1.0,)), "ties": ("density", (0.5,)),
         "dare": ("drop_rate", (0.5,))}  # fmt: skip
GRID = {"attn_s100_r0": {"variant": "attn"}, "ffn_s100_r0": {"variant": "ffn"}, "ln_s100_r0": {"variant": "ln"},
        "all_s100_r0_m10": {"ms_seed": 10}, "all_s100_r0_m11": {"ms_seed": 11},
        "all_s100_r0_k100": {"ms_steps": 100}, "all_s100_r0_lr0.5": {"lr_mult": 0.5},
        "all_s100_r0_lr2": {"lr_mult": 2.0}}  # fmt: skip
OPTIONS = {"used_experts": "interpolation", "gram_nopad": "regmean"}


def make_design(seed_lengths=(100, 200, 300), recipe_seed=100, k_vl=200, pt_seeds=(0, 1, 2)) -> dict:
    """``design.json`` of the synthetic study (the recipe: interpolation 0.5)."""
    return {"recipe_seed": recipe_seed, "k_vl": k_vl, "seed_lengths": list(seed_lengths), "pt_seeds": list(pt_seeds),
            "ma_baseline_steps": k_vl, "ma_matched_steps": recipe_seed + k_vl, "recipe_method": "interpolation",
            "recipe_knob": {"ratio": 0.5}, "recipe_methods": ["interpolation", "arithmetic", "regmean"]}  # fmt: skip


def _ms_runs(design: dict) -> dict[str, dict]:
    """Every MS run: E1 (every K incl. 0, every replicate) and the grid (from the recipe seed of r0)."""
    runs = {}
    for k in (0, *design["seed_lengths"]):
        for r in design["pt_seeds"]:
            runs[f"all_s{k}_r{r}"] = dict(variant="all", seed_steps=k, pt_seed=r, ms_seed=r, pt_steps=design["k_vl"],
                                          lr_mult=1.0, role="e1")  # fmt: skip
    r0 = design["pt_seeds"][0]
    for gid, spec in GRID.items():
        runs[gid] = dict(variant=spec.get("variant", "all"), seed_steps=design["recipe_seed"], pt_seed=r0,
                         ms_seed=spec.get("ms_seed", r0), pt_steps=spec.get("ms_steps", design["k_vl"]),
                         lr_mult=spec.get("lr_mult", 1.0), role="grid")  # fmt: skip
    return runs


def _merges(design: dict, tasks: tuple[str, ...], sweep: tuple[str, ...]) -> dict[tuple, dict]:
    """``{(ms_id, method, knob value, option): {"exps", "tasks"}}``, as the study plan assigns them."""
    out: dict[tuple, dict] = {}
    recipe = {f"all_s{design['recipe_seed']}_r{r}" for r in design["pt_seeds"]}
    naive = {f"all_s0_r{r}" for r in design["pt_seeds"]}
    first = f"all_s{design['recipe_seed']}_r{design['pt_seeds'][0]}"

    def add(ms_id, method, kv, exps, ts, option=""):
        job = out.setdefault((ms_id, method, kv, option), {"exps": set(), "tasks": set()})
        job["exps"] |= set(exps)
        job["tasks"] |= set(ts)

    for ms_id, run in _ms_runs(design).items():
        if run["role"] == "e1":
            add(
                ms_id,
                "interpolation",
                0.5,
                ("E1", "E4") + (("E5",) if ms_id in recipe | naive else ()),
                tasks,
            )
        else:
            add(ms_id, "interpolation", 0.5, ("E4",) + (("E3",) if run["variant"] != "all" else ()), tasks)
            if run["variant"] != "all":
                for m in design["recipe_methods"]:
                    add(ms_id, m, KNOBS[m][1][0], ("E3",), sweep)
        if ms_id in recipe:
            for m in design["recipe_methods"]:
                add(ms_id, m, KNOBS[m][1][0], ("E2", "E5"), tasks)
        if ms_id == first:
            for m, (_, vals) in KNOBS.items():
                for kv in vals:
                    add(ms_id, m, kv, ("E2",), sweep)
            for option, m in OPTIONS.items():
                add(ms_id, m, KNOBS[m][1][0], ("E6",), sweep, option)
            for m in design["recipe_methods"]:
                add(ms_id, m, KNOBS[m][1][0], ("E3",), sweep)
    return out


def _distance(run: dict, rng: np.random.Generator) -> float:
    """The experts' distance (per parameter) of an MS run: smaller with a longer seed, per variant."""
    d = VARIANT_DIST[run["variant"]] / (1 + run["seed_steps"] / 100)
    d *= math.sqrt(run["pt_steps"] / 200) * math.sqrt(run["lr_mult"])
    return d * (1 + rng.normal(0, 0.08))


def _ma_score(task: str, k: int) -> float:
    return BASE[task] + 1.0 + 1.5 * math.log1p(k / 100)


def _ms_score(task: str, run: dict) -> float:
    return BASE[task] + 4.0 + 1.5 * math.log1p(run["seed_steps"] / 100) - 0.5 * (run["variant"] != "all")


def _row(mid, kind, exps, *, k=None, variant="", pt_seed=None, pt_steps=None, ms_seed=None, lr_mult=math.nan,
         method="", knob="", kv=math.nan, option=""):  # fmt: skip
    return dict(model_id=mid, kind=kind, seed_steps=k, variant=variant, pt_seed=pt_seed, pt_steps=pt_steps,
                ms_seed=ms_seed, lr_mult=lr_mult, method=method, knob=knob, knob_value=kv, option=option,
                experiments=";".join(sorted(exps)))  # fmt: skip


def _finetunes(model: dict, score: dict[str, float], tasks, ft_seeds, rng, noise: float) -> list[dict]:
    """Test and val rows (every metric) and ``val_last_gain`` of one model on ``tasks``."""
    rows = []
    for task in tasks:
        metrics = [MAIN[task]] + (list(RECALLS) if MAIN[task] == "r_mean" else [])
        for s in ft_seeds:
            v = score[task] + rng.normal(0, noise)
            val = v + rng.normal(0, noise)
            for split, x in (("test", v), ("val", val)):
                for met in metrics:
                    y = x if met == MAIN[task] else min(99.0, x * (0.5 + RECALLS.index(met) % 3 * 0.6))
                    ci = (
                        (y - 2.0, y + 2.0)
                        if model["kind"] == "untrained" and split == "test"
                        else (math.nan,) * 2
                    )
                    rows.append({**model, "task": task, "metric": met, "is_main": met == MAIN[task], "split": split,
                                 "ft_seed": s, "value": y, "ci_low": ci[0], "ci_high": ci[1]})  # fmt: skip
            if model["kind"] != "untrained":
                rows.append({**model, "task": task, "metric": "val_last_gain", "is_main": False, "split": "val",
                             "ft_seed": s, "value": abs(rng.normal(0.3, 0.15)), "ci_low": math.nan, "ci_high": math.nan})  # fmt: skip
    return rows


def make_study(out_dir: str | Path, *, rng_seed: int = 0, n_ft_seeds: int = 3,
               seed_steps: tuple[int, ...] = (100, 200, 300), tasks: tuple[str, ...] = SMOKE_TASKS,
               sweep_tasks: tuple[str, ...] = ("coco",), noise: float = 0.3, pt_noise: float = 0.3) -> Path:  # fmt: skip
    """Write ``results.csv``, ``chance.csv``, ``distances.csv``, ``pretrain.csv`` and ``design.json``.

    Args:
        out_dir: the folder to write (created).
        rng_seed: seed of the noise.
        n_ft_seeds: fine-tuning seeds of the random init and the init (E0; the untrained model has one,
            with a bootstrap interval; pre-trained models have one per replicate).
        seed_steps: the E1 seed lengths (K_seed > 0; the first is the recipe's).
        tasks: tasks to include (any of ``schema.TASKS``).
        sweep_tasks: tasks of the E2 knob sweeps, E3 and E6 (those of ``tasks`` only).
        noise: sd of the fine-tuning noise, in points.
        pt_noise: sd of a pre-trained model's offset (shared by its fine-tunes), in points.
    """
    rng = np.random.default_rng(rng_seed)
    out = Path(out_dir)
    design = make_design(seed_steps, recipe_seed=seed_steps[0])
    sweep = tuple(t for t in tasks if t in sweep_tasks)
    e0 = list(range(n_ft_seeds))
    rows: list[dict] = []
    for mid, kind in (("untrained", "untrained"), ("random", "random"), ("init", "init")):
        off = {"untrained": None, "random": -10.0, "init": -5.0}[kind]
        score = {t: CHANCE[t] if off is None else BASE[t] + off for t in tasks}
        rows += _finetunes(
            _row(mid, kind, ("E0",)), score, tasks, e0[:1] if kind == "untrained" else e0, rng, noise
        )
    d = design
    ma_roles: dict[int, set[str]] = {}
    for k, exps in (
        (d["recipe_seed"], {"E0"}),
        (d["ma_baseline_steps"], {"E0", "E5"}),
        (d["ma_matched_steps"], {"E0", "E5"}),
    ):
        ma_roles.setdefault(k, set()).update(exps)
    for k in sorted(ma_roles):
        for r in d["pt_seeds"]:
            off = rng.normal(0, pt_noise)
            m = _row(f"ma{k}_r{r}", "ma", ma_roles[k], k=k, pt_seed=r, pt_steps=k)
            rows += _finetunes(m, {t: _ma_score(t, k) + off for t in tasks}, tasks, [0], rng, noise)
    runs = _ms_runs(d)
    dist = {ms_id: _distance(run, rng) for ms_id, run in runs.items()}
    offset = {ms_id: rng.normal(0, pt_noise) for ms_id in runs}
    recipe = {f"all_s{d['recipe_seed']}_r{r}" for r in d["pt_seeds"]}
    naive = {f"all_s0_r{r}" for r in d["pt_seeds"]}
    for ms_id, run in runs.items():
        desc = dict(k=run["seed_steps"], variant=run["variant"], pt_seed=run["pt_seed"], pt_steps=run["pt_steps"],
                    ms_seed=run["ms_seed"], lr_mult=run["lr_mult"])  # fmt: skip
        ms = {t: _ms_score(t, run) + offset[ms_id] for t in tasks}
        if ms_id in recipe | naive:
            exps = {"E1", "E5"} | ({"E2", "E3"} if ms_id in recipe else set())
            rows += _finetunes(_row(f"ms_{ms_id}", "ms", exps, **desc), ms, tasks, [0], rng, noise)
        elif run["variant"] != "all":
            rows += _finetunes(_row(f"ms_{ms_id}", "ms", {"E3"}, **desc), ms, sweep, [0], rng, noise)
    for (ms_id, method, kv, option), job in sorted(_merges(d, tasks, sweep).items(), key=str):
        knob, default = KNOBS[method][0], KNOBS[method][1][0]
        drop = 6.0 * dist[ms_id] * METHOD_DROP[method] + 8.0 * (kv - default) ** 2 + 0.5 * bool(option)
        run = runs[ms_id]
        score = {t: _ms_score(t, run) + offset[ms_id] - drop for t in tasks}
        mid = f"merged_{ms_id}_{method}_{knob}{kv:g}" + (f"_{option}" if option else "")
        m = _row(mid, "merged", job["exps"], k=run["seed_steps"], variant=run["variant"], pt_seed=run["pt_seed"],
                 pt_steps=run["pt_steps"], ms_seed=run["ms_seed"], lr_mult=run["lr_mult"], method=method, knob=knob,
                 kv=kv, option=option)  # fmt: skip
        rows += _finetunes(m, score, tuple(t for t in tasks if t in job["tasks"]), [0], rng, noise)
    dists, pre = _distances(runs, dist, rng), _pretrain(d, runs)
    chance = [{"task": t, "metric": MAIN[t], "value": CHANCE[t]} for t in tasks]
    frames = {"results": pd.DataFrame(rows), "chance": pd.DataFrame(chance), "distances": pd.DataFrame(dists),
              "pretrain": pd.DataFrame(pre)}  # fmt: skip
    for name, df in frames.items():
        write_csv(df[list(FILES[name])], out / f"{name}.csv")
    with atomic_write(out / DESIGN_FILE) as fh:
        fh.write(json.dumps(design, indent=1, sort_keys=True) + "\n")
    return out


def _unit(run: dict) -> dict:
    return {k: run[k] for k in ("seed_steps", "variant", "pt_seed", "pt_steps", "ms_seed", "lr_mult")}


def _distances(runs: dict[str, dict], dist: dict[str, float], rng: np.random.Generator) -> list[dict]:
    recs = []
    for ms_id, run in runs.items():
        rms = 0.05 * dist[ms_id]
        total = {"l2_rms": rms, "l2": rms * math.sqrt(VARIANT_PARAMS[run["variant"]]), "cosine": 0.8 * dist[ms_id],
                 "ssd": 0.6 * dist[ms_id], "tssd": 0.7 * dist[ms_id], "sign_conflict": 0.4 * dist[ms_id]}  # fmt: skip
        for met, base in total.items():
            for scope in ("total", "block0", "block1", "block2", "block3"):
                f = 1.0 if scope == "total" else 0.2 + 0.1 * int(scope[-1])
                recs.append({"model_id": f"ms_{ms_id}", **_unit(run), "metric": met, "scope": scope,
                             "value": base * f * (1 + rng.normal(0, 0.05))})  # fmt: skip
    return recs


def _pretrain(d: dict, runs: dict[str, dict]) -> list[dict]:
    recs = []
    none = dict(seed_steps=None, variant="", pt_seed=None, pt_steps=None, ms_seed=None, lr_mult=math.nan)
    models = [("init", "init", none, 200, 2.0)]
    for k in sorted({*d["seed_lengths"], d["ma_baseline_steps"], d["ma_matched_steps"]}):
        for r in d["pt_seeds"]:
            unit = {**none, "seed_steps": k, "pt_seed": r, "pt_steps": k}
            models.append((f"ma{k}_r{r}", "ma", unit, k, 10 + 10 * math.log1p(k / 100) + r))
    for ms_id, run in runs.items():
        models.append((f"ms_{ms_id}", "ms", _unit(run), run["pt_steps"], 30.0 + run["pt_seed"]))
    for mid, kind, unit, steps, r1 in models:
        for met, val in (("ir_r1", r1), ("tr_r1", r1 * 1.1), ("rsum", r1 * 9), ("loss_itc_end", 3 - r1 / 20)):
            recs.append({"model_id": mid, "kind": kind, **unit, "steps": steps, "metric": met, "value": val})
    return recs


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as CSV atomically, floats with 6 decimals, ``\\n`` line ends."""
    with atomic_write(path) as fh:
        df.to_csv(fh, index=False, float_format="%.6f", lineterminator="\n")
    return Path(path)
