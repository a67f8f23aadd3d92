"""Hand-made study frames for the report tests: a few models on two tasks, numbers chosen by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from vlmerge_core.report.load import typed_frame

MAIN = {"vqa": "vqa_score", "nlvr2": "accuracy"}


def runs(model_id, kind, task, values, *, k=None, variant="", method="", knob="", knob_value=math.nan,
         option="", exps="E1", metric=None, ci=(math.nan, math.nan)):  # fmt: skip
    """Result rows of one model on one task, one per fine-tuning seed value in ``values``."""
    metric = metric or MAIN[task]
    return [
        dict(
            model_id=model_id,
            kind=kind,
            seed_steps=k,
            variant=variant,
            method=method,
            knob=knob,
            knob_value=knob_value,
            option=option,
            task=task,
            metric=metric,
            is_main=metric == MAIN[task],
            ft_seed=s,
            value=v,
            ci_low=ci[0],
            ci_high=ci[1],
            experiments=exps,
        )  # fmt: skip
        for s, v in enumerate(values)
    ]


def frame(rows: list[dict]) -> pd.DataFrame:
    """A typed, validated results frame from row dicts (as ``load_study`` would return it)."""
    return typed_frame(pd.DataFrame(rows), "results", "<test>")


def merged(
    mid, k, task, values, method="interpolation", knob="ratio", kv=0.5, variant="all", exps="E1;E4;E5", **kw
):
    return runs(mid, "merged", task, values, k=k, variant=variant, method=method, knob=knob, knob_value=kv,
                exps=exps, **kw)  # fmt: skip


def study_rows(
    recipe=(60, 61, 62), naive=(50, 51, 52), ma=(61, 62, 63), tasks=("vqa", "nlvr2")
) -> list[dict]:
    """The recipe comparison (E1/E5) plus E0, E2, E3 rows on ``tasks``; merged scores set by hand."""
    rows = []
    for t in tasks:
        rows += runs("untrained", "untrained", t, [25.0 if t == "vqa" else 50.0], exps="E0", ci=(23.0, 27.0))
        rows += runs("random", "random", t, [40, 41, 42], exps="E0")
        rows += runs("seed300", "seed", t, [55, 56, 57], k=300, exps="E0")
        rows += runs("seed300", "seed", t, [0.2, 0.3, 0.4], k=300, exps="E0", metric="val_last_gain")
        rows += runs("ma_baseline", "ma_baseline", t, list(ma), exps="E0;E1;E2;E3;E5")
        rows += runs("ma_baseline", "ma_baseline", t, [0.1, 0.2, 0.3], exps="E0", metric="val_last_gain")
        rows += runs("ms_all_s0", "ms", t, [64, 65, 66], k=0, variant="all", exps="E1")
        rows += runs("ms_all_s300", "ms", t, [64, 65, 66], k=300, variant="all", exps="E1;E2;E3;E5")
        rows += runs("ms_ln_s300", "ms", t, [64, 65, 66], k=300, variant="ln", exps="E3")
        rows += merged("m_s0", 0, t, naive)
        rows += merged("m_s100", 100, t, [(a + b) / 2 for a, b in zip(naive, recipe)])
        rows += merged("m_s300", 300, t, recipe, exps="E1;E2;E3;E4;E5")
        rows += merged("m_s300_r0", 300, t, [55, 56, 57], kv=0.0, exps="E2")
        rows += merged("m_s300_lam", 300, t, [45, 46, 47], method="arithmetic", knob="lam", exps="E2")
        rows += merged(
            "m_s300_ties", 300, t, [58, 59, 60], method="ties", knob="density", kv=0.2, exps="E2;E6"
        )
        rows += merged("m_ln_s300", 300, t, [63, 64, 65], variant="ln", exps="E3;E4")
    return rows


def distance_rows(l2=None) -> pd.DataFrame:
    """Distances of the MS models (bigger for shorter seeds), matched to merges by K_seed and variant."""
    l2 = l2 or {(0, "all"): 9.0, (100, "all"): 6.0, (300, "all"): 3.0, (300, "ln"): 1.0}
    recs = []
    for (k, v), d in l2.items():
        for metric, f in (("l2", 1.0), ("tssd", 0.1), ("cosine", 0.05)):
            for scope, g in (("total", 1.0), ("block0", 0.4), ("block1", 0.6)):
                recs.append(dict(model_id=f"ms_{v}_s{k}", seed_steps=k, variant=v, metric=metric, scope=scope,
                                 value=d * f * g))  # fmt: skip
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
