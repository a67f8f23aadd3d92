"""``benchmarks/gpu_check.py --tiny --device cpu``: the GPU check's path (BEiT init, arrow pre-training,
merge, COCO at twice the pre-training resolution, all under torchrun) stays runnable without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_tiny_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "benchmarks/gpu_check.py", "--tiny", "--device", "cpu", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = json.loads((tmp_path / "gpu_check.json").read_text())
    assert log["init"]["data_format"] == "timm_beit" and log["init"]["tensors_loaded"] > 0
    assert log["seed"]["data_format"] == log["ms"]["data_format"] == "arrow"
    assert log["coco"]["data_format"] == "coco_karpathy" and log["coco"]["image_size"] == 64
