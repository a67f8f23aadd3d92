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
