"""Hand-made study frames for the report tests (the new contract: replicates = pre-training runs).

Two tasks (VQA, NLVR2), three replicates, a recipe seed of 100, K_VL 200: the recipe and naive merges,
both MS models, the MA baseline (200 steps) and the compute-matched MA (300 steps), an E1 seed length
of 200, the recipe methods on every replicate, a knob sweep, and an E4 grid of seven more MS models at
the recipe's seed length (10 in all). Scores are chosen by hand.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from vlmerge_core.report.design import Design
from vlmerge_core.report.load import typed_frame

MAIN = {"vqa": "vqa_score", "nlvr2": "accuracy"}
DESIGN = Design(recipe_seed=100, k_vl=200, seed_lengths=(100, 200), pt_seeds=(0, 1, 2), ma_baseline_steps=200,
                ma_matched_steps=300, recipe_method="interpolation", recipe_knob={"ratio": 0.5},
                recipe_methods=("interpolation", "arithmetic", "regmean"))  # fmt: skip
# E4 grid runs beside the recipe replicates: (id, variant, ms_seed, pt_steps, lr_mult)
GRID = (("attn_s100_r0", "attn", 0, 200, 1.0), ("ffn_s100_r0", "ffn", 0, 200, 1.0), ("ln_s100_r0", "ln", 0, 200, 1.0),
        ("all_s100_r0_m10", "all", 10, 200, 1.0), ("all_s100_r0_m11", "all", 11, 200, 1.0),
        ("all_s100_r0_k100", "all", 0, 100, 1.0), ("all_s100_r0_lr2", "all", 0, 200, 2.0))  # fmt: skip


def row(model_id, kind, task, value, *, k=None, variant="", pt_seed=None, pt_steps=None, ms_seed=None,
        lr_mult=math.nan, method="", knob="", kv=math.nan, option="", exps="E1", metric=None, split="test",
        ft_seed=0, ci=(math.nan, math.nan)) -> dict:  # fmt: skip
    """One result row."""
    metric = metric or MAIN[task]
    return dict(model_id=model_id, kind=kind, seed_steps=k, variant=variant, pt_seed=pt_seed, pt_steps=pt_steps,
                ms_seed=ms_seed, lr_mult=lr_mult, method=method, knob=knob, knob_value=kv, option=option, task=task,
                metric=metric, is_main=metric == MAIN[task], split=split, ft_seed=ft_seed, value=value,
                ci_low=ci[0], ci_high=ci[1], experiments=exps)  # fmt: skip


def seeds(model_id, kind, task, values, **kw) -> list[dict]:
    """Rows of a model without replicates, one per fine-tuning seed value."""
    return [row(model_id, kind, task, v, ft_seed=s, **kw) for s, v in enumerate(values)]


def ma(k, task, values, exps="E0", gain=0.2) -> list[dict]:
    """``ma{k}_r{r}`` for each replicate value, with a val row and its last val gain."""
    out = []
    for r, v in enumerate(values):
        kw = dict(k=k, pt_seed=r, pt_steps=k, exps=exps)
        out += [row(f"ma{k}_r{r}", "ma", task, v, **kw), row(f"ma{k}_r{r}", "ma", task, v, split="val", **kw),
                row(f"ma{k}_r{r}", "ma", task, gain, metric="val_last_gain", split="val", **kw)]  # fmt: skip
    return out


def ms_unit(ms_id: str) -> dict:
    """The descriptors of an MS run from its id (E1 ``all_s{K}_r{r}`` or a grid id)."""
    for gid, variant, ms_seed, steps, lr in GRID:
        if ms_id == gid:
            return dict(k=100, variant=variant, pt_seed=0, pt_steps=steps, ms_seed=ms_seed, lr_mult=lr)
    k, r = ms_id.split("_")[1][1:], ms_id.split("_")[2][1:]
    return dict(k=int(k), variant="all", pt_seed=int(r), pt_steps=200, ms_seed=int(r), lr_mult=1.0)


def ms(ms_id, task, value, exps="E1;E5", gain=None) -> list[dict]:
    out = [row(f"ms_{ms_id}", "ms", task, value, exps=exps, **ms_unit(ms_id))]
    if gain is not None:
        out.append(row(f"ms_{ms_id}", "ms", task, gain, metric="val_last_gain", split="val", exps=exps,
                       **ms_unit(ms_id)))  # fmt: skip
    return out


def merged(
    ms_id, task, value, method="interpolation", kv=0.5, exps="E1;E4", option="", val=None
) -> list[dict]:
    """A merge of MS run ``ms_id`` (test row, and a val row when ``val`` is given)."""
    knob = {"interpolation": "ratio", "arithmetic": "lam", "regmean": "alpha", "ties": "density"}[method]
    mid = f"merged_{ms_id}_{method}_{knob}{kv:g}" + (f"_{option}" if option else "")
    kw = dict(method=method, knob=knob, kv=kv, option=option, exps=exps, **ms_unit(ms_id))
    out = [row(mid, "merged", task, value, **kw)]
    if val is not None:
        out.append(row(mid, "merged", task, val, split="val", **kw))
    return out


def frame(rows: list[dict]) -> pd.DataFrame:
    """A typed, validated results frame from row dicts (as ``load_study`` would return it)."""
    return typed_frame(pd.DataFrame(rows), "results", "<test>")


def study_rows(recipe=(60.0, 61.5, 62.0), naive=(50.0, 52.0, 51.0), baseline=(61.0, 62.0, 62.5),
               matched=(63.0, 64.5, 64.0), tasks=("vqa", "nlvr2"), grid=True) -> list[dict]:  # fmt: skip
    """The hand-made study on ``tasks``; the claim rows' replicate values are set by the arguments."""
    rows = []
    for t in tasks:
        rows += [row("untrained", "untrained", t, 25.0 if t == "vqa" else 50.0, exps="E0", ci=(23.0, 27.0))]
        rows += seeds("random", "random", t, [40, 41, 42], exps="E0")
        rows += seeds("init", "init", t, [45, 46, 47], exps="E0")
        rows += ma(100, t, [55, 56, 57]) + ma(200, t, baseline, "E0;E5") + ma(300, t, matched, "E0;E5")
        for r in range(3):
            rows += ms(f"all_s0_r{r}", t, 64.0 + r, gain=0.3)
            rows += ms(f"all_s100_r{r}", t, 66.0 + r / 2, "E1;E2;E3;E5", gain=0.3)
            rows += merged(f"all_s0_r{r}", t, naive[r], exps="E1;E4;E5")
            rows += merged(f"all_s100_r{r}", t, recipe[r], exps="E1;E2;E4;E5")
            rows += merged(f"all_s200_r{r}", t, recipe[r] + 2 + r / 3)
            rows += merged(f"all_s100_r{r}", t, 55.0 + r * 0.7, "arithmetic", 0.75, "E2;E5")
            rows += merged(f"all_s100_r{r}", t, 62.0 + r * 0.4, "regmean", 1.0, "E2;E5")
        if grid:
            for i, (gid, variant, *_) in enumerate(GRID):
                rows += merged(gid, t, 58.0 - 0.5 * i, exps="E3;E4" if variant != "all" else "E4")
    return rows


def distance_rows(scale=None, metrics=("l2", "l2_rms", "tssd", "cosine")) -> pd.DataFrame:
    """Distances of every MS run: the recipe replicates closest, each grid run further (so that the
    recipe-merge score falls with the distance), the naive and K=200 runs by K_seed."""
    scale = scale or {}
    ids = [f"all_s{k}_r{r}" for k in (0, 100, 200) for r in range(3)] + [g[0] for g in GRID]
    recs = []
    for i, ms_id in enumerate(ids):
        u = ms_unit(ms_id)
        base = {0: 9.0, 200: 1.0}.get(u["k"], 2.0 + 0.1 * i)
        for metric in metrics:
            f = scale.get(metric, 1.0)
            value = base if f > 0 else 20.0 - base
            for scope, g in (("total", 1.0), ("block0", 0.4), ("block1", 0.6)):
                recs.append(dict(model_id=f"ms_{ms_id}", seed_steps=u["k"], variant=u["variant"], pt_seed=u["pt_seed"],
                                 pt_steps=u["pt_steps"], ms_seed=u["ms_seed"], lr_mult=u["lr_mult"], metric=metric,
                                 scope=scope, value=value * g))  # fmt: skip
    return typed_frame(pd.DataFrame(recs), "distances", "<test>")


@pytest.fixture
def results() -> pd.DataFrame:
    return frame(study_rows())


@pytest.fixture
def chance() -> pd.DataFrame:
    df = pd.DataFrame({"task": ["vqa", "nlvr2"], "metric": ["vqa_score", "accuracy"], "value": [25.0, 50.0]})
    return typed_frame(df, "chance", "<test>")


@pytest.fixture
def distances() -> pd.DataFrame:
    return distance_rows()


@pytest.fixture
def design() -> Design:
    return DESIGN
