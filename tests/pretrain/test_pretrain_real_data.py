"""Pre-training on real-format data: the official arrow files through the DataLoader (issue: paper scale).

The rehearsal profile's seed run reads the fixtures' arrow files (``vlmerge_core.data.fixtures``)
or their released COCO/VG/CC/SBU folders: its metrics name the format and the world size, a resumed
run repeats the uninterrupted one, two gloo processes train on the batches of one (the interleaved
all-gather), and what the arrow data cannot feed (MIM, text-only MLM) is refused by name.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlmerge_core.config import ParamsError, params_from_dict, profile_params
from vlmerge_core.data.fixtures import write_fixtures
from vlmerge_core.data.real_source import RealSource, open_source
from vlmerge_core.io import load_safetensors, read_json
from vlmerge_core.pretrain import run_pretrain
from vlmerge_core.pretrain.stream import LoaderStream

WORKER = Path(__file__).with_name("_real_worker.py")


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fixtures")
    write_fixtures(root, 0, profile_params("rehearsal").model)
    return root


@pytest.fixture
def params(fixtures):
    p = profile_params("rehearsal")
    tok = str(fixtures / "tokenizer")
    data = dataclasses.replace(p.data, pretrain_path=str(fixtures / "arrows"), tokenizer=tok)
    ft = dataclasses.replace(p.finetune, real_paths={**p.finetune.real_paths, "tokenizer": tok})
    return dataclasses.replace(p, data=data, finetune=ft)


def test_seed_run_on_arrow_files_records_its_data(tmp_path, params):
    source = open_source(params.data)
    assert isinstance(source, RealSource) and source.data_format == "arrow"
    cfg = dataclasses.replace(params.seed_pretrain, steps=3)
    m = run_pretrain(cfg, params.model, source, tmp_path / "run", stage="seed", device="cpu")
    assert m["data_format"] == "arrow" and m["world_size"] == 1
    assert all(torch.isfinite(torch.tensor(v)) for v in m["loss_end"].values())
    assert m["retrieval"]["n_images"] == 2  # the Karpathy val split of the fixtures' arrow files
    assert read_json(tmp_path / "run" / "metrics.json")["data_format"] == "arrow"


def test_seed_run_on_released_folders(tmp_path, params, fixtures):
    data = dataclasses.replace(
        params.data, pretrain_format="released", pretrain_path=str(fixtures / "released")
    )
    cfg = dataclasses.replace(params.seed_pretrain, steps=2)
    m = run_pretrain(cfg, params.model, open_source(data), tmp_path / "run", stage="seed", device="cpu")
    assert m["data_format"] == "released" and m["retrieval"]["n_images"] == 2  # coco/'s Karpathy val
    assert all(torch.isfinite(torch.tensor(v)) for v in m["loss_end"].values())


def test_resumed_run_repeats_the_uninterrupted_one(tmp_path, params):
    cfg = dataclasses.replace(params.seed_pretrain, steps=4, ckpt_every=2, augment="official")
    whole = run_pretrain(
        cfg, params.model, open_source(params.data), tmp_path / "a", stage="seed", device="cpu"
    )
    run_pretrain(
        cfg, params.model, open_source(params.data), tmp_path / "b", stage="seed", device="cpu", stop_at=2
    )
    resumed = run_pretrain(
        cfg, params.model, open_source(params.data), tmp_path / "b", stage="seed", device="cpu"
    )
    assert resumed["resumed_from_step"] == 2
    assert resumed["loss_curve"] == whole["loss_curve"]  # batches 2 and 3: the same pairs, augmentations


def test_stream_positions_cover_each_epoch_once(params):
    source = open_source(params.data)
    pairs = source.pairs(params.model.max_text_len, params.model.image_size)
    cfg = dataclasses.replace(params.seed_pretrain, batch_size=4, grad_accum=1)
    stream = LoaderStream(pairs, cfg, rank=0, world_size=1)
    seen = torch.cat([stream.local_batch(p)["index"] for p in range(stream.per_epoch)])
    assert len(seen) == 4 * stream.per_epoch
    jumped = LoaderStream(pairs, cfg, rank=0, world_size=1).local_batch(stream.per_epoch - 1)["index"]
    assert torch.equal(jumped, seen[-4:])  # a resume inside an epoch starts at its batch


def test_losses_the_arrow_files_cannot_feed_are_refused(tmp_path, params):
    cfg = dataclasses.replace(params.seed_pretrain, steps=1, losses={"mlm": 1.0, "text_mlm": 1.0})
    with pytest.raises(ValueError, match="text_mlm"):
        run_pretrain(cfg, params.model, open_source(params.data), tmp_path / "x", stage="seed", device="cpu")


def test_real_data_needs_its_path_and_one_tokenizer():
    with pytest.raises(ParamsError, match="data.pretrain_path"):
        params_from_dict({"data": {"pretrain_format": "arrow", "tokenizer": "t"}}, "p.yaml")
    with pytest.raises(ParamsError, match="data.tokenizer"):
        params_from_dict({"data": {"pretrain_format": "arrow", "pretrain_path": "a"}}, "p.yaml")
    with pytest.raises(ParamsError, match="one tokenizer"):
        params_from_dict(
            {"data": {"tokenizer": "a"}, "finetune": {"real_paths": {"tokenizer": "b"}}}, "p.yaml"
        )


@pytest.mark.slow
def test_two_processes_train_on_the_batches_of_one(tmp_path, fixtures):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLMERGE_NO_TQDM": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # fmt: skip
    ddp = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541"]
    for cmd in (ddp, []):
        out = tmp_path / ("ddp" if cmd else "one")
        done = subprocess.run([*(cmd or [sys.executable]), str(WORKER), str(fixtures), str(out)],
                              env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    a, _ = load_safetensors(tmp_path / "one" / "last.safetensors")
    b, _ = load_safetensors(tmp_path / "ddp" / "last.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0, msg=k)
    m = read_json(tmp_path / "ddp" / "metrics.json")
    assert m["world_size"] == 2 and m["data_format"] == "arrow"
