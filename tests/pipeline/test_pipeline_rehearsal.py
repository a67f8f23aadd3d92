"""The rehearsal of the paper path: `vlmerge params --profile rehearsal -o params.yaml && dvc repro`.

In a throwaway copy of the repository (as a fresh clone), the whole DVC graph runs on CPU reading only
the real-format fixtures that its data stage writes: the BEiT file for the init, the official arrow
files for pre-training (a DataLoader per rank), every task's real format, COCO retrieval for the Gram
matrices; pre-training and fine-tuning under torchrun on 2 gloo processes. Every pre-training and
fine-tuning metrics file records ``world_size: 2`` and the ``data_format`` it read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _repo import copy_repo, run

pytestmark = [pytest.mark.slow, pytest.mark.pipeline]

TASK_FORMATS = {"vqa": "vqav2_json", "coco": "coco_karpathy", "flickr": "flickr30k_karpathy",
                "nlvr2": "nlvr2_jsonl", "imagenet": "imagenet_folders", "ade20k": "ade20k_folders",
                "text": "glue_tsv"}  # fmt: skip


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_rehearsal_runs_the_paper_path_on_the_fixtures(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("rehearsal"), "rehearsal")
    out = run(["dvc", "repro"], repo, timeout=1200)
    assert "Running stage 'paper'" in out
    assert (repo / "data/rehearsal/arrows/vg.arrow").is_file()  # the data stage wrote the fixtures
    init = _json(repo / "metrics/pretrain/init.json")
    assert init["world_size"] == 2 and init["data_format"] == "timm_beit" and init["tensors_loaded"] > 0
    pretrain = sorted((repo / "metrics/pretrain").glob("m[as]/*.json"))
    assert pretrain, "no pre-training metrics"
    for path in pretrain:
        m = _json(path)
        assert (m["world_size"], m["data_format"]) == (2, "arrow"), path.name
    records = [
        r for f in ("testbed", "evaluate") for doc in _json(repo / f"metrics/finetune/{f}.json")
        for r in doc["records"]
    ]  # fmt: skip
    assert {r["task"] for r in records} == set(TASK_FORMATS)
    for r in records:
        assert r["world_size"] == 2 and r["data_format"] == TASK_FORMATS[r["task"]], (
            r["task"],
            r["checkpoint"],
        )
    # the official VQA protocol: one test-dev answer file per fine-tuned VQA model and seed
    vqa = {(r["checkpoint"], r["ft_seed"]) for r in records if r["task"] == "vqa"}
    assert len(list((repo / "runs/vqa_test_dev").glob("vqa_test-dev2015_*.json"))) == len(vqa)
    assert (repo / "paper/REPORT.md").is_file()
