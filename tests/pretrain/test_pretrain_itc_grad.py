"""The ITC gradient scale: exact (ours) or the official 1/world-size (``compute_ifm``'s plain all_gather)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlmerge_core.pretrain.objectives import Shard, contrastive_loss

sys.path.insert(0, str(Path(__file__).parent))
from _itc_worker import itc_gradients  # noqa: E402


def test_one_process_official_equals_exact():
    exact, official = itc_gradients("exact", 0, 1), itc_gradients("official", 0, 1)
    for k in exact:
        torch.testing.assert_close(official[k], exact[k], rtol=1e-12, atol=1e-12)


def test_unknown_mode_is_named():
    x = torch.nn.functional.normalize(torch.randn(2, 3), dim=-1)
    with pytest.raises(ValueError, match="itc_grad must be one of"):
        contrastive_loss(x, x, torch.tensor(1.0), Shard(0, 2, 2), "half")


@pytest.mark.slow
def test_two_processes_official_scales_feature_gradients(tmp_path):
    """On 2 gloo ranks: exact = the one-process gradients; official = feature gradients / 2, the
    temperature's gradient and the loss unchanged."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    worker, out = Path(__file__).with_name("_itc_worker.py"), tmp_path / "grads.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541"]
    done = subprocess.run([*cmd, str(worker), str(out)], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    two, one = torch.load(out), itc_gradients("exact", 0, 1)
    for k in one:
        torch.testing.assert_close(two["exact"][k], one[k], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(two["official"]["w"], one["w"] / 2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(two["official"]["scale"], one["scale"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(two["official"]["loss"], one["loss"], rtol=1e-10, atol=1e-12)
