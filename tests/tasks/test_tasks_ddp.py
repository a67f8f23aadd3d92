"""The device-aware task engine: 1 vs 2 gloo processes, gradient accumulation, resume, bad input.

Tolerances: two processes compute the same global batch in two shares whose gradients DDP sums in
another order (and whose text padding is trimmed per share), so parameters and losses differ from one
process by float32 rounding (~1e-7 relative per step; a few steps stay far below 1e-4 relative).
Metrics are counts of arg-max / top-K hits, equal unless a tie sits within that noise: they are
compared to 1e-6 (the difference would be a whole example). Dropout and drop-path are off there:
each rank draws its own masks for its share (as any DDP job), which one process cannot reproduce.
Resume is exact (bitwise), dropout on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlmerge_core.config import FinetuneConfig, ParamsError, section_from_dict
from vlmerge_core.tasks import TASKS, run_task
from vlmerge_core.tasks import engine as engine_mod
from vlmerge_core.tasks.parallel import Runtime, micro_rows, resolve_device
from vlmerge_core.tasks.trainstate import load_state, recipe, save_state

WORKER = Path(__file__).with_name("ddp_worker.py")
LOSS_RTOL = 1e-4  # relative: float32 rounding of a differently ordered gradient sum, a few steps
METRIC_ATOL = 1e-6  # percent: metrics move by whole examples, never by rounding


@pytest.fixture
def model_cfg(smoke_params, smoke_world):
    return dataclasses.replace(smoke_params.model, vocab_size=len(smoke_world.tokenizer()))


@pytest.fixture
def tiny(smoke_params) -> FinetuneConfig:
    """1 epoch, 19 training examples (steps of 8, 8, 3: uneven shares), 12 val/test, eval batch 5."""
    return dataclasses.replace(
        smoke_params.finetune, epochs=1, batch_size=8, train_subsample=19, eval_subsample=12,
        val_subsample=12, eval_batch_size=5, drop_path=0.0, text_dropout=0.0,
    )  # fmt: skip


def _metrics(task, cfg, world, model_cfg) -> dict:
    m = run_task(task, "random:0", cfg, world, model_cfg=model_cfg).metrics
    return {k: v for k, v in m.items() if k != "seconds"}


def _assert_close(got: dict, want: dict, where: str) -> None:
    assert got["curve"]["step"] == want["curve"]["step"], where
    assert got["curve"]["loss"] == pytest.approx(want["curve"]["loss"], rel=LOSS_RTOL), where
    assert got["curve"]["val_select"] == pytest.approx(want["curve"]["val_select"], abs=METRIC_ATOL), where
    for k, v in want.items():
        if isinstance(v, float):
            assert got[k] == pytest.approx(v, abs=METRIC_ATOL, nan_ok=True), f"{where}: {k}"


def _torchrun(world_root: Path, out: Path, cfg: FinetuneConfig, model_cfg, tasks) -> dict:
    spec = {"finetune": dataclasses.asdict(cfg), "model": dataclasses.asdict(model_cfg), "tasks": list(tasks)}
    root = str(Path(__file__).resolve().parents[2])  # this checkout's package, installed or not
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH", "")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(WORKER), str(world_root), str(out), json.dumps(spec)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


def test_two_gloo_processes_match_one(tiny, smoke_world, model_cfg, tmp_path):
    """Every task, 1 process vs 2 gloo processes under torchrun: the same losses and metrics."""
    two = _torchrun(smoke_world.root, tmp_path / "ddp.json", tiny, model_cfg, TASKS)
    assert two["world_size"] == 2
    for task in TASKS:
        _assert_close(
            two["metrics"][task], _metrics(task, tiny, smoke_world, model_cfg), f"{task} 1 vs 2 ranks"
        )


@pytest.mark.parametrize("task", ["vqa", "ade20k", "text"])
def test_grad_accum_matches_one_step(task, tiny, smoke_world, model_cfg):
    """Two micro-batches of the same global batch give the step of one batch (mean losses weighted,
    ADE20k by its labelled pixels)."""
    one = _metrics(task, tiny, smoke_world, model_cfg)
    two = _metrics(task, dataclasses.replace(tiny, grad_accum=2), smoke_world, model_cfg)
    _assert_close(two, one, f"{task} grad_accum 2 vs 1")


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_is_exact(smoke_params, smoke_world, model_cfg, tmp_path, monkeypatch):
    """A run stopped after epoch 1 and started again gives the uninterrupted run's result bitwise
    (dropout, drop-path and augmentation on: every RNG is in the train state)."""
    cfg = dataclasses.replace(
        smoke_params.finetune, epochs=2, val_every=1, train_subsample=24, eval_subsample=12, val_subsample=12
    )
    want = _metrics("vqa", cfg, smoke_world, model_cfg)
    cfg = dataclasses.replace(cfg, run_dir=str(tmp_path / "run"))
    real_save = engine_mod._save

    def save_then_stop(loop):
        real_save(loop)
        if loop.epoch == 1:
            raise _Interrupt

    monkeypatch.setattr(engine_mod, "_save", save_then_stop)
    with pytest.raises(_Interrupt):
        run_task("vqa", "random:0", cfg, smoke_world, model_cfg=model_cfg)
    monkeypatch.setattr(engine_mod, "_save", real_save)
    assert (tmp_path / "run" / "vqa_train_state.pt").is_file()
    assert _metrics("vqa", cfg, smoke_world, model_cfg) == want


def test_train_state_of_another_recipe_is_refused(tmp_path):
    path = tmp_path / "text_train_state.pt"
    save_state(path, {"recipe": recipe(FinetuneConfig(lr=1e-3), "text")})
    assert load_state(path, recipe(FinetuneConfig(lr=1e-3, device="auto"), "text")) is not None
    with pytest.raises(ValueError, match=r"differs in lr"):
        load_state(path, recipe(FinetuneConfig(lr=2e-3), "text"))
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a train-state file"):
        load_state(tmp_path / "other.pt", {})


def test_bad_device_and_accumulation_are_named(tiny, smoke_world, model_cfg):
    with pytest.raises(ParamsError, match="finetune.device"):
        section_from_dict(FinetuneConfig, {"device": "gpu"}, src="test", prefix="finetune")
    with pytest.raises(ValueError, match="finetune.device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="coco: finetune.grad_accum 2"):
        run_task(
            "coco", "random:0", dataclasses.replace(tiny, grad_accum=2), smoke_world, model_cfg=model_cfg
        )


def test_micro_rows_cover_the_batch_once():
    rt = Runtime(rank=0, world_size=2)
    pieces = micro_rows(7, rt, 2)  # [k][r]
    rows = torch.cat([pieces[k][r] for r in range(2) for k in range(2)])
    assert rows.tolist() == list(range(7))
    assert [len(p) for ranks in pieces for p in ranks] == [2, 2, 2, 1]


def test_bf16_autocast_runs_the_tasks(tiny, smoke_world, model_cfg, monkeypatch):
    """The amp path (bf16 autocast, fp32 losses and metrics) on every task; CPU autocast stands in for
    cuda here (``task_runtime`` turns amp off on cpu, so the runtime is forced)."""
    monkeypatch.setattr(engine_mod, "task_runtime", lambda device, amp: Runtime(amp=True))
    cfg = dataclasses.replace(tiny, train_subsample=8, eval_subsample=6, val_subsample=6)
    for task in ("vqa", "coco", "ade20k", "text"):  # fused, dual-encoder, patch-token and text paths
        m = _metrics(task, cfg, smoke_world, model_cfg)
        assert all(math.isfinite(v) for v in m["curve"]["loss"]), task
        assert 0.0 <= m["main"] <= 100.0, task
