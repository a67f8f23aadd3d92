"""One MS checkpoint end to end, the stage of ``notebooks/03_merge.ipynb``: its inputs (a demo pair
when none is given; Gram matrices when a method needs them), every merge of ``params.merge``, and the
expert distances around its seed, in one metrics file.

The study's notebooks (05-07) run the same steps over the whole grid
(:mod:`vlmerge_core.study.execute`); this one is the tool for a single checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vlmerge_core.analysis.stage import expert_distances
from vlmerge_core.config import Params, stage_params
from vlmerge_core.io import write_json
from vlmerge_core.merge.methods import METHODS
from vlmerge_core.merge.stage import make_demo_checkpoints, write_grams, write_merges
from vlmerge_core.paths import resolve
from vlmerge_core.tasks.registry import gram_inputs

__all__ = ["distance_table", "merges_table", "run_merge_tool_stage"]

DISTANCE_KEYS = ("k", "central", "experts", "total", "blocks")


def _inputs(
    params: Params,
    out: Path,
    ms_ckpt: str,
    central_ckpt: str,
    gram_path: str,
    methods,
    world_dir: str,
    nopad: bool,
) -> tuple[str, str, str]:
    """(MS, central, Gram) paths: a demo pair when ``ms_ckpt`` is empty; Grams collected (from
    ``merge.gram_source``) when missing and a method of ``methods`` (default ``merge.methods``) needs them."""
    if not ms_ckpt:
        demo = make_demo_checkpoints(out / "demo")
        ms_ckpt, central_ckpt, gram_path = str(demo["ms"]), str(demo["central"]), str(demo["grams"])
    if not gram_path and any(METHODS[m].needs_grams for m in methods or params.merge.methods):
        gram_path = write_grams(params, ms_ckpt=ms_ckpt, out=str(out / "grams.safetensors"), world_dir=world_dir,
                                exclude_padding=nopad, **gram_inputs(params, world_dir))["out"]  # fmt: skip
    return ms_ckpt, central_ckpt, gram_path


def run_merge_tool_stage(
    params_file: str = "",
    *,
    profile: str = "smoke",
    ms_ckpt: str = "",
    central_ckpt: str = "",
    gram_path: str = "",
    world_dir: str = "",
    exclude_padding: bool = False,
    methods: str | list[str] = "",
    only_used_experts: bool | None = None,
    out_dir: str = "scratch/nb03",
    metrics_out: str = "",
) -> dict:
    """Entry point (notebook 03): merge one MS checkpoint by every method of ``params.merge`` (or
    ``methods``) and measure its experts' distances around ``central_ckpt``.

    Args:
        params_file: params file (relative to the repo root); empty = ``profile``. The parameters used:
            ``merge``, ``finetune.tasks``, ``data`` for the Grams.
        profile: params preset used when ``params_file`` is empty.
        ms_ckpt: the MS checkpoint; empty = a pico demo pair and its Grams under ``out_dir/demo``.
        central_ckpt: the seed (MA) checkpoint, origin of the modality vectors.
        gram_path: RegMean's Gram matrices; empty = collected on the micro-world when needed.
        world_dir: micro-world folder for the Grams; empty = ``data.root``.
        exclude_padding: Grams over real tokens only (ours); default every token (official).
        methods: method names (a list or comma-separated); empty = ``merge.methods``.
        only_used_experts: None = ``merge.only_used_experts``.
        out_dir: merged checkpoints and their index ``merges.json``.
        metrics_out: the merge records and distances; empty = ``<out_dir>/merge_metrics.json``.

    Returns:
        ``{"merges": [records], "distance": {...}, "ms_ckpt", "central_ckpt"}`` plus ``"rows"`` (the
        tidy distance rows, not written).
    """
    params = stage_params(params_file, profile)
    out = resolve(out_dir)
    names = [m.strip() for m in methods.split(",") if m.strip()] if isinstance(methods, str) else methods
    ms_ckpt, central_ckpt, gram_path = _inputs(
        params, out, ms_ckpt, central_ckpt, gram_path, names, world_dir, exclude_padding
    )
    merged = write_merges(
        params, ms_ckpt=ms_ckpt, central_ckpt=central_ckpt, gram_path=gram_path, out_dir=out_dir,
        methods=names or None, only_used_experts=only_used_experts,
    )  # fmt: skip
    dist = expert_distances(params, ms_ckpt=ms_ckpt, central_ckpt=central_ckpt)
    metrics = {
        "merges": merged["merges"],
        "distance": {k: dist[k] for k in DISTANCE_KEYS},
        "ms_ckpt": dist["ms_ckpt"],
        "central_ckpt": dist["central_ckpt"],
    }
    write_json(resolve(metrics_out) if metrics_out else out / "merge_metrics.json", metrics)
    return {**metrics, "rows": dist["rows"]}


def merges_table(result: dict) -> pd.DataFrame:
    """One row per merged checkpoint (method, knob, task group, path, seconds)."""
    return pd.DataFrame(result["merges"]).drop(columns=["params"])


def distance_table(result: dict) -> pd.DataFrame:
    """The distances of the experts: one row per scope (total, blocks), one column per metric."""
    return pd.DataFrame(result["rows"]).pivot(index="scope", columns="metric", values="value")
