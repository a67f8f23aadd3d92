"""Atomic writes, deterministic JSON, safetensors errors and run provenance (``vlmerge_core.io``)."""

from __future__ import annotations

import json

import pytest
import torch

from vlmerge_core import io


def test_atomic_write_interrupted_keeps_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    io.write_json(target, {"a": 1})
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with io.atomic_write(target) as fh:
            fh.write('{"a": 2, "half')
            raise RuntimeError("killed mid-way")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left behind


def test_atomic_write_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "a" / "b" / "x.txt"
    with io.atomic_write(target) as fh:
        fh.write("one")
    with io.atomic_write(target) as fh:
        fh.write("two")
    assert target.read_text() == "two"


def test_atomic_path_interrupted(tmp_path):
    target = tmp_path / "ckpt.safetensors"
    io.save_safetensors(target, {"w": torch.ones(2)})
    before = target.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert target.read_bytes() == before


def test_json_deterministic_sorted_rounded():
    text = io.dumps_json({"b": 1.0 / 3.0, "a": [float("nan"), 2], "c": {"z": 1, "y": torch.tensor(0.5)}})
    assert text == io.dumps_json({"c": {"y": 0.5, "z": 1}, "a": [float("nan"), 2], "b": 1.0 / 3.0})
    data = json.loads(text)
    assert list(data) == ["a", "b", "c"] and data["b"] == 0.333333 and data["a"][0] is None


def test_read_json_errors_name_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        io.read_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ValueError, match="bad.json"):
        io.read_json(bad)


def test_safetensors_roundtrip_and_corrupt(tmp_path):
    path = tmp_path / "m.safetensors"
    io.save_safetensors(path, {"x": torch.arange(4.0)}, {"model_config": {"width": 4}, "kind": "ma"})
    tensors, meta = io.load_safetensors(path)
    assert torch.equal(tensors["x"], torch.arange(4.0))
    assert json.loads(meta["model_config"]) == {"width": 4} and meta["kind"] == "ma"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="m.safetensors"):
        io.load_safetensors(path)
    with pytest.raises(FileNotFoundError, match="nothere"):
        io.load_safetensors(tmp_path / "nothere.safetensors")


def test_run_info(tmp_path):
    from vlmerge_core.config import profile_params

    path = io.write_run_info(tmp_path / "run_info.json", profile_params("smoke").model, stage="test")
    info = io.read_json(path)
    assert info["config"]["width"] == 16 and info["stage"] == "test"
    assert {"git_sha", "versions", "written_at"} <= set(info) and "torch" in info["versions"]


_SAVE_IN_A_NEW_PROCESS = """
import sys, torch
from vlmerge_core.io import save_safetensors
g = torch.Generator().manual_seed(0)
names = ["w.weight", "a.bias", "norm", "idx", "half", "empty"]
made = {"w.weight": torch.randn(4, 3, generator=g), "a.bias": torch.randn(3, generator=g),
        "norm": torch.tensor(1.5), "idx": torch.arange(6), "half": torch.randn(5, generator=g).bfloat16(),
        "empty": torch.zeros(0, 2)}
order = names if sys.argv[2] == "fwd" else names[::-1]
meta = {k: str(i) for i, k in enumerate("abcdefghij")}
meta = dict(meta.items() if sys.argv[2] == "fwd" else reversed(meta.items()))
save_safetensors(sys.argv[1], {k: made[k] for k in order}, meta)
"""


def test_safetensors_bytes_are_deterministic_and_readable(tmp_path):
    """Two saves of the same tensors, in other processes and insertion orders, are the same bytes."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    paths = [tmp_path / "fwd.safetensors", tmp_path / "rev.safetensors"]
    for p in paths:
        subprocess.run([sys.executable, "-c", _SAVE_IN_A_NEW_PROCESS, str(p), p.stem], check=True)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    got = load_file(str(paths[0]))  # the reference reader
    assert got["half"].dtype == torch.bfloat16 and got["empty"].shape == (0, 2) and got["norm"].item() == 1.5
    tensors, meta = io.load_safetensors(paths[0])
    assert meta["c"] == "2" and torch.equal(tensors["idx"], torch.arange(6))
    header_len = int.from_bytes(paths[0].read_bytes()[:8], "little")
    assert (8 + header_len) % 8 == 0
    header = json.loads(paths[0].read_bytes()[8 : 8 + header_len])
    starts = {k: v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}
    assert all(starts[k] % torch.empty(0, dtype=got[k].dtype).element_size() == 0 for k in starts)


def test_safetensors_refuses_an_unstorable_dtype(tmp_path):
    with pytest.raises(ValueError, match="complex"):
        io.save_safetensors(tmp_path / "c.safetensors", {"z": torch.zeros(2, dtype=torch.complex64)})
    assert not (tmp_path / "c.safetensors").exists()
