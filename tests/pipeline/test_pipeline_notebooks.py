"""The notebooks as DVC stages call them: parameters in, checkpoints and metrics files out.

Chains seed pre-training → MS pre-training → merging → fine-tuning of a merged model through
papermill on the smoke profile, with every path absolute or relative to the repo root.
"""

from __future__ import annotations

import json
from pathlib import Path

import papermill as pm
import pytest

from vlmerge_core.cli import main as vlmerge

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.pipeline, pytest.mark.notebooks]


def _run(name: str, out: Path, **parameters) -> None:
    pm.execute_notebook(
        ROOT / "notebooks" / name,
        out / name,
        parameters=parameters,
        kernel_name="python3",
        cwd=str(ROOT / "notebooks"),
        progress_bar=False,
    )


def test_seed_ms_merge_finetune_chain(tmp_path, smoke_world):
    params = tmp_path / "params.yaml"
    assert vlmerge(["params", "--profile", "smoke", "-o", str(params)]) == 0
    world, metrics = str(smoke_world.root), tmp_path / "metrics"
    common = {"params_file": str(params), "world_dir": world}
    _run(
        "02_pretrain.ipynb",
        tmp_path,
        stage="seed",
        out_dir=str(tmp_path / "seed"),
        metrics_out=str(metrics / "pretrain_seed.json"),
        **common,
    )
    seed = tmp_path / "seed" / "last.safetensors"
    assert seed.exists() and json.loads((metrics / "pretrain_seed.json").read_text())["kind"] == "ma"
    _run(
        "02_pretrain.ipynb",
        tmp_path,
        stage="ms",
        variant="all",
        init=str(seed),
        out_dir=str(tmp_path / "ms"),
        metrics_out=str(metrics / "pretrain_ms.json"),
        **common,
    )
    assert json.loads((metrics / "pretrain_ms.json").read_text())["kind"] == "ms"
    _run(
        "03_merge.ipynb",
        tmp_path,
        ms_ckpt=str(tmp_path / "ms" / "last.safetensors"),
        central_ckpt=str(seed),
        methods="interpolation,arithmetic,regmean",
        out_dir=str(tmp_path / "merged"),
        metrics_out=str(metrics / "merge.json"),
        **common,
    )
    merge = json.loads((metrics / "merge.json").read_text())
    assert {m["method"] for m in merge["merges"]} == {"interpolation", "arithmetic", "regmean"}
    assert merge["distance"]["total"]["l2"] > 0
    merged = sorted((tmp_path / "merged").glob("interpolation*.safetensors"))
    assert merged, "no merged checkpoint written"
    _run(
        "04_finetune_eval.ipynb",
        tmp_path,
        checkpoint=str(merged[0]),
        tasks="coco,text",
        model_info={"model_id": "merged", "kind": "merged"},
        metrics_out=str(metrics / "merged.json"),
        params_file=str(params),
        world_dir=world,
    )
    result = json.loads((metrics / "merged.json").read_text())
    assert result["model"]["model_id"] == "merged"
    assert [r["task"] for r in result["records"]] == ["coco", "text"]
    assert all(r["metrics"][r["main_metric"]] >= 0 for r in result["records"])
