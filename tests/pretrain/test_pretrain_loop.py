"""Pre-training loop: stages, exact resume, NaN guard, DDP equivalence, retrieval metric."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlmerge_core.io import load_safetensors, read_json
from vlmerge_core.model import MS_VARIANTS, MultiwayTransformer, load_model, save_model
from vlmerge_core.pretrain import NonFiniteLossError, objectives, retrieval_recalls, run_pretrain

os.environ.setdefault("VLMERGE_NO_TQDM", "1")


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory, smoke_params, smoke_world):
    out = tmp_path_factory.mktemp("init")
    run_pretrain(smoke_params.init_pretrain, smoke_params.model, smoke_world, out, stage="init")
    return out / "last.safetensors"


def _seed_cfg(smoke_params, **kw):
    return dataclasses.replace(smoke_params.seed_pretrain, **kw)


def test_stages_write_checkpoints_and_metrics(tmp_path, smoke_params, smoke_world, init_ckpt):
    cfg = _seed_cfg(smoke_params, steps=4, save_steps=[2, 4])
    m = run_pretrain(cfg, smoke_params.model, smoke_world, tmp_path / "seed", init=init_ckpt, stage="seed")
    for f in (
        "ckpt_step2.safetensors",
        "ckpt_step4.safetensors",
        "last.safetensors",
        "metrics.json",
        "run_info.json",
    ):
        assert (tmp_path / "seed" / f).exists(), f
    assert set(m["loss_curve"]) == {"step", "mlm", "itc", "itc_vl", "itm"}
    assert read_json(tmp_path / "seed" / "metrics.json")["retrieval"]["n_images"] == len(
        smoke_world.images("val")
    )
    ms_cfg = dataclasses.replace(smoke_params.model, ms_components=MS_VARIANTS["ffn"])
    m = run_pretrain(
        smoke_params.ms_pretrain,
        ms_cfg,
        smoke_world,
        tmp_path / "ms",
        init=tmp_path / "seed" / "ckpt_step2.safetensors",
        stage="ms",
    )
    ms = load_model(tmp_path / "ms" / "last.safetensors")
    assert ms.kind == "ms" and m["kind"] == "ms"
    assert ms.tokenizer_info == smoke_world.tokenizer_identity  # recorded for the check at fine-tuning


def test_stage_errors(tmp_path, smoke_params, smoke_world, init_ckpt):
    ms_cfg = dataclasses.replace(smoke_params.model, ms_components=MS_VARIANTS["all"])
    with pytest.raises(ValueError, match="MA model"):
        run_pretrain(smoke_params.seed_pretrain, ms_cfg, smoke_world, tmp_path / "a", stage="seed")
    with pytest.raises(ValueError, match="init="):
        run_pretrain(smoke_params.ms_pretrain, ms_cfg, smoke_world, tmp_path / "b", stage="ms")
    save_model(tmp_path / "ms.safetensors", MultiwayTransformer(ms_cfg))
    with pytest.raises(ValueError, match="MA checkpoint"):
        run_pretrain(
            smoke_params.ms_pretrain,
            ms_cfg,
            smoke_world,
            tmp_path / "c",
            stage="ms",
            init=tmp_path / "ms.safetensors",
        )


def test_resume_is_exact(tmp_path, smoke_params, smoke_world, init_ckpt):
    cfg = _seed_cfg(smoke_params, steps=4, ckpt_every=2, grad_accum=2, save_steps=[])
    run_pretrain(cfg, smoke_params.model, smoke_world, tmp_path / "straight", init=init_ckpt)
    part = run_pretrain(cfg, smoke_params.model, smoke_world, tmp_path / "killed", init=init_ckpt, stop_at=2)
    assert part["stopped_at"] == 2 and not (tmp_path / "killed" / "last.safetensors").exists()
    m = run_pretrain(cfg, smoke_params.model, smoke_world, tmp_path / "killed", init=init_ckpt)
    assert m["resumed_from_step"] == 2
    a, _ = load_safetensors(tmp_path / "straight" / "last.safetensors")
    b, _ = load_safetensors(tmp_path / "killed" / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ref = read_json(tmp_path / "straight" / "metrics.json")["loss_curve"]
    assert read_json(tmp_path / "killed" / "metrics.json")["loss_curve"] == ref


def test_nan_guard_keeps_last_good_checkpoint(tmp_path, smoke_params, smoke_world, init_ckpt, monkeypatch):
    calls = {"n": 0}
    real = objectives.compute_losses

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # the first micro-batch of step 2
            out["itc"] = out["itc"] * float("inf")
        return out

    monkeypatch.setattr(objectives, "compute_losses", poisoned)
    cfg = _seed_cfg(smoke_params, steps=4, ckpt_every=2, save_steps=[])
    with pytest.raises(NonFiniteLossError, match=r"step 2: loss component 'itc'"):
        run_pretrain(cfg, smoke_params.model, smoke_world, tmp_path / "run", init=init_ckpt)
    _, meta = load_safetensors(tmp_path / "run" / "train_state.safetensors")
    assert meta["step"] == "2"
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_init_from_timm_checkpoint(tmp_path, smoke_params, smoke_world):
    import timm

    vit = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=16,
        depth=2,
        num_heads=2,
        num_classes=0,
    )
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    cfg = dataclasses.replace(smoke_params.init_pretrain, beit_checkpoint=str(tmp_path / "vit.pth"))
    m = run_pretrain(cfg, smoke_params.model, smoke_world, tmp_path / "init", stage="init")
    model = load_model(tmp_path / "init" / "last.safetensors")
    assert m["tensors_loaded"] > 20
    assert torch.equal(model.blocks[1].mlp.fc1.weight, vit.blocks[1].mlp.fc1.weight)


def test_retrieval_recalls():
    text_image = torch.tensor([0, 0, 1, 1, 2, 2])
    perfect = torch.full((3, 6), -1.0)
    perfect[text_image, torch.arange(6)] = 1.0
    r = retrieval_recalls(perfect, text_image, ks=(1,))
    assert r["ir_r1"] == 100.0 and r["tr_r1"] == 100.0
    const = retrieval_recalls(torch.zeros(3, 6), text_image, ks=(1,))
    # ties broken by index, as the official compute_irtr_recall (topk): image 0 / text 0 rank first
    assert abs(const["ir_r1"] - 100 / 3) < 1e-6 and abs(const["tr_r1"] - 100 / 3) < 1e-6
    assert abs(const["chance_ir_r1"] - 100 / 3) < 1e-6 and abs(const["chance_tr_r1"] - 100 / 3) < 1e-4


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path, smoke_params, smoke_world, init_ckpt):
    worker = Path(__file__).with_name("_ddp_worker.py")
    root = str(smoke_world.root)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "VLMERGE_NO_TQDM": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        str(worker),
        root,
        str(tmp_path / "ddp"),
        str(init_ckpt),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    single = subprocess.run(
        [sys.executable, str(worker), root, str(tmp_path / "one"), str(init_ckpt)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    a, _ = load_safetensors(tmp_path / "one" / "last.safetensors")
    b, _ = load_safetensors(tmp_path / "ddp" / "last.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0, msg=k)
    assert read_json(tmp_path / "ddp" / "metrics.json")["world_size"] == 2


_KILLED_RUN = """
import dataclasses, os, signal, sys
import torch
from vlmerge_core.config import profile_params
from vlmerge_core.data import load_world
from vlmerge_core.pretrain import loop

torch.set_num_threads(1)
world_root, out, init = sys.argv[1:4]
p = profile_params("smoke")
cfg = dataclasses.replace(p.seed_pretrain, steps=4, ckpt_every=2, grad_accum=2, save_steps=[])
real_save = loop.save_train_state

def save_then_die(path, model, opt, step, *args, **kwargs):
    real_save(path, model, opt, step, *args, **kwargs)
    if step == 2:  # a hard kill right after the step-2 checkpoint: no cleanup, no exception handling
        os.kill(os.getpid(), signal.SIGKILL)

loop.save_train_state = save_then_die
loop.run_pretrain(cfg, p.model, load_world(world_root), out, init=init)
"""


def test_resume_after_sigkill_is_exact(tmp_path, smoke_params, smoke_world, init_ckpt):
    """N/2 steps, SIGKILL (a real, separate process), resume, N/2 more == N steps straight."""
    cfg = _seed_cfg(smoke_params, steps=4, ckpt_every=2, grad_accum=2, save_steps=[])
    run_pretrain(cfg, smoke_params.model, smoke_world, tmp_path / "straight", init=init_ckpt)
    killed = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, str(smoke_world.root), str(killed), str(init_ckpt)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (killed / "train_state.safetensors").exists() and not (killed / "last.safetensors").exists()
    m = run_pretrain(cfg, smoke_params.model, smoke_world, killed, init=init_ckpt)
    assert m["resumed_from_step"] == 2
    a, _ = load_safetensors(tmp_path / "straight" / "last.safetensors")
    b, _ = load_safetensors(killed / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_repeatable_on_cpu_switches_deterministic_kernels_for_threaded_cpu_runs_only():
    from vlmerge_core.pretrain.distributed import repeatable_on_cpu

    threads, before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        torch.set_num_threads(2)
        with repeatable_on_cpu("cpu"):
            assert torch.are_deterministic_algorithms_enabled()
        assert torch.are_deterministic_algorithms_enabled() == before  # restored
        with repeatable_on_cpu("cuda:0"):  # a GPU keeps its own setting
            assert torch.are_deterministic_algorithms_enabled() == before
        torch.set_num_threads(1)  # one thread is deterministic already: no change, no cost
        with repeatable_on_cpu("cpu"):
            assert torch.are_deterministic_algorithms_enabled() == before
    finally:
        torch.set_num_threads(threads)


def test_two_thread_runs_repeat_bitwise(tmp_path, smoke_params, smoke_world, init_ckpt):
    """Two runs of the same stage on 2 threads give the same weights, bit for bit (issue 11: the
    micro seed's rsum had moved from 292.5 to 291.6 between two runs of the same code)."""
    threads = torch.get_num_threads()
    cfg = _seed_cfg(smoke_params, steps=3, save_steps=[3], batch_size=128)  # big enough to go parallel
    try:
        torch.set_num_threads(2)
        for k in (0, 1):
            run_pretrain(
                cfg, smoke_params.model, smoke_world, tmp_path / f"r{k}", init=init_ckpt, stage="seed"
            )
    finally:
        torch.set_num_threads(threads)
    a, b = (load_safetensors(tmp_path / f"r{k}" / "last.safetensors")[0] for k in (0, 1))
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
