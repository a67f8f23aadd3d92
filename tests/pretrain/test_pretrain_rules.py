"""The loop's subtle rules, one test each: DDP gradient sync under accumulation, where the NaN and
gradient-norm guards stop a run, what a resume refuses, and what a fresh start or a finished run does."""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from vlmerge_core.io import load_safetensors, read_json, write_json
from vlmerge_core.pretrain import NonFiniteLossError, loop, run_pretrain
from vlmerge_core.pretrain.distributed import DistInfo

os.environ.setdefault("VLMERGE_NO_TQDM", "1")


class _FakeDDP(nn.Module):
    """Stands in for DDP: records, for each forward, whether it ran under ``no_sync``."""

    def __init__(self, loss_value: float = 1.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.loss_value, self.in_no_sync, self.forwards = loss_value, False, []

    @contextmanager
    def no_sync(self):
        self.in_no_sync = True
        try:
            yield
        finally:
            self.in_no_sync = False

    def forward(self, batch):
        self.forwards.append(self.in_no_sync)
        return {"itc": self.w * self.loss_value}


def _fake_run(smoke_params, tmp_path, grad_accum: int, world_size: int = 2) -> loop._Run:
    cfg = dataclasses.replace(smoke_params.seed_pretrain, grad_accum=grad_accum)
    info = DistInfo(world_size=world_size)  # no process group: the all-reduce is the identity
    return loop._Run(cfg, "seed", tmp_path, info, {"itc": 1.0}, None, None, None, {})


def _seed(smoke_params, **kw):
    return dataclasses.replace(smoke_params.seed_pretrain, **kw)


@pytest.mark.parametrize("world_size, expected", [(2, [True, True, False]), (1, [False, False, False])])
def test_ddp_syncs_gradients_on_the_last_micro_step_only(smoke_params, tmp_path, world_size, expected):
    run, module = _fake_run(smoke_params, tmp_path, 3, world_size), _FakeDDP()
    for k in range(3):
        loop._micro_step(run, module, {}, last=k == 2)
    assert module.forwards == expected  # forward too runs under no_sync (DDP prepares it there)
    # W / A per micro-step, A micro-steps: the gradient of the global mean once DDP divides by W
    assert module.w.grad.item() == pytest.approx(world_size)


def test_nan_guard_stops_before_backward(smoke_params, tmp_path):
    run, module = _fake_run(smoke_params, tmp_path, 1), _FakeDDP(loss_value=float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"step 0: loss component 'itc' is nan"):
        loop._micro_step(run, module, {}, last=True)
    assert module.w.grad is None  # the poisoned loss never reached the gradients


def test_gradient_norm_guard_keeps_the_last_train_state(smoke_params, smoke_world, tmp_path, monkeypatch):
    real, calls = torch.nn.utils.clip_grad_norm_, []

    def clip(params, max_norm):
        norm = real(params, max_norm)
        calls.append(norm)
        return norm * float("inf") if len(calls) == 3 else norm  # the norm of step 2

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    cfg = _seed(smoke_params, steps=4, ckpt_every=2, grad_clip=1.0)
    with pytest.raises(NonFiniteLossError, match=r"step 2: gradient norm is inf"):
        run_pretrain(cfg, smoke_params.model, smoke_world, tmp_path, stage="seed")
    _, meta = load_safetensors(tmp_path / "train_state.safetensors")
    assert meta["step"] == "2" and not (tmp_path / "last.safetensors").exists()


def test_resume_refuses_a_state_of_other_configs(smoke_params, smoke_world, tmp_path):
    cfg = _seed(smoke_params, steps=4, ckpt_every=2)
    run_pretrain(cfg, smoke_params.model, smoke_world, tmp_path, stage="seed", stop_at=2)
    other = dataclasses.replace(cfg, lr=cfg.lr / 2)
    with pytest.raises(
        ValueError, match=r"cannot resume, pretrain_config differs from this run \(\['lr'\]\)"
    ):
        run_pretrain(other, smoke_params.model, smoke_world, tmp_path, stage="seed")


def test_fresh_start_drops_old_checkpoint_metrics_and_a_finished_run_is_read_back(
    smoke_params, smoke_world, tmp_path
):
    write_json(tmp_path / "ckpt_step2.json", {"from": "an earlier run"})
    write_json(tmp_path / "ckpt_step9.json", {"from": "an earlier run"})
    cfg = _seed(smoke_params, steps=4, ckpt_every=2, save_steps=[2])
    m = run_pretrain(cfg, smoke_params.model, smoke_world, tmp_path, stage="seed")
    assert not (tmp_path / "ckpt_step9.json").exists()
    assert sorted(m["checkpoints"]) == ["2", "4"] and m["checkpoints"]["2"]["step"] == 2
    stamp = (tmp_path / "last.safetensors").stat().st_mtime_ns
    again = run_pretrain(cfg, smoke_params.model, smoke_world, tmp_path, stage="seed")
    assert again == read_json(tmp_path / "metrics.json")  # the metrics it wrote, no step trained
    assert (tmp_path / "last.safetensors").stat().st_mtime_ns == stamp


def test_batch_arithmetic_and_loss_weights_are_checked(smoke_params, smoke_world, tmp_path):
    with pytest.raises(ValueError, match=r"batch_size 8 must be divisible by grad_accum \(3\)"):
        run_pretrain(_seed(smoke_params, grad_accum=3), smoke_params.model, smoke_world, tmp_path)
    no_loss = _seed(smoke_params, losses={"itc": 0.0})
    with pytest.raises(ValueError, match=r"seed: no loss has a weight > 0"):
        run_pretrain(no_loss, smoke_params.model, smoke_world, tmp_path)
