"""End-to-end smoke of `vlmerge merge`, `vlmerge gram` and `vlmerge convert` on pico checkpoints."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from vlmerge_core.cli import main
from vlmerge_core.io import read_safetensors_metadata
from vlmerge_core.model.experts import COMPONENTS, EXPERTS, merge_groups


def _pico(tmp_path):
    from vlmerge_core.config import profile_params
    from vlmerge_core.model import MultiwayTransformer, init_ms_from_ma, save_model

    torch.manual_seed(0)
    cfg = profile_params("smoke").model
    ma = MultiwayTransformer(cfg)
    ms = MultiwayTransformer(dataclasses.replace(cfg, ms_components=list(COMPONENTS)))
    init_ms_from_ma(ms, ma.state_dict())
    with torch.no_grad():
        for n, p in ms.named_parameters():
            if any(f".{e}." in n for e in EXPERTS):
                p.add_(0.01 * torch.randn_like(p))
    save_model(tmp_path / "ma.safetensors", ma)
    save_model(tmp_path / "ms.safetensors", ms)
    return ms


def test_cli_merge(tmp_path, capsys):
    from vlmerge_core.model import load_model

    _pico(tmp_path)
    ms, c = str(tmp_path / "ms.safetensors"), str(tmp_path / "ma.safetensors")
    out = str(tmp_path / "m.safetensors")
    args = ["merge", ms, "--method", "dare", "--central", c, "--drop-rate", "0.3", "--rng-seed", "1"]
    assert main([*args, "--lambda", "0.5", "--task", "coco", "-o", out]) == 0
    assert load_model(tmp_path / "m.safetensors").kind == "ma"
    merge = json.loads(read_safetensors_metadata(out)["merge"])
    assert (
        merge["params"] == {"drop_rate": 0.3, "rng_seed": 1, "lam": 0.5}
        and merge["only_used_experts"] is False
    )
    bad = [
        "merge",
        ms,
        "--method",
        "interpolation",
        "--density",
        "0.5",
        "-o",
        str(tmp_path / "x.safetensors"),
    ]
    assert main(bad) == 2
    assert "does not take ['density']" in capsys.readouterr().err
    assert main(["merge", ms, "--method", "arithmetic", "-o", str(tmp_path / "y.safetensors")]) == 2
    assert "needs the central" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse refuses a value outside the knob's choices
        main(["merge", ms, "--method", "ties", "--central", c, "--ties-trim", "bad", "-o", out])


def test_cli_task_dependent_merge_writes_one_file_per_group(tmp_path, capsys):
    from vlmerge_core.merge.gram import collect_grams, save_grams
    from vlmerge_core.merge.stage import random_batches

    model = _pico(tmp_path)
    save_grams(tmp_path / "g.safetensors", collect_grams(model, random_batches(model.cfg, 1), 1))
    ms = str(tmp_path / "ms.safetensors")
    args = ["merge", ms, "--method", "regmean", "--gram", str(tmp_path / "g.safetensors")]
    capsys.readouterr()
    assert main([*args, "-o", str(tmp_path / "rm.safetensors")]) == 0
    written = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(written) == set(merge_groups(task_dependent=True))
    for group, rec in written.items():
        assert rec["path"].endswith(f"rm__{group}.safetensors")
        meta = json.loads(read_safetensors_metadata(rec["path"])["merge"])
        assert meta["group"] == group and meta["tasks"] == rec["tasks"]
    assert main([*args, "--task", "vqa", "-o", str(tmp_path / "vqa.safetensors")]) == 0
    assert (tmp_path / "vqa.safetensors").exists()


def test_cli_gram_exclude_padding(tmp_path, smoke_world):
    _pico(tmp_path)
    ms = str(tmp_path / "ms.safetensors")
    base = ["gram", ms, "--world", str(smoke_world.root), "--batches", "1", "--batch-size", "4"]
    assert main([*base, "-o", str(tmp_path / "all.safetensors")]) == 0
    assert main([*base, "--exclude-padding", "-o", str(tmp_path / "nopad.safetensors")]) == 0
    assert read_safetensors_metadata(tmp_path / "nopad.safetensors")["exclude_padding"] == "true"


def test_cli_convert(tmp_path, capsys):
    from test_convert_official import official_sd

    torch.save({"state_dict": official_sd("ffn_moe")}, tmp_path / "o.ckpt")
    assert main(["convert", str(tmp_path / "o.ckpt"), "-o", str(tmp_path / "o.safetensors")]) == 2
    assert "--allow-lossy" in capsys.readouterr().err
    assert (
        main(["convert", str(tmp_path / "o.ckpt"), "--allow-lossy", "-o", str(tmp_path / "o.safetensors")])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["kind"] == "ms"
