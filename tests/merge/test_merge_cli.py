"""End-to-end smoke of `vlmerge merge`, `vlmerge distance` and `vlmerge convert` on pico checkpoints."""

from __future__ import annotations

import dataclasses
import json

import torch

from vlmerge_core.cli import main
from vlmerge_core.io import read_json


def _pico(tmp_path):
    from vlmerge_core.config import profile_params
    from vlmerge_core.model import MultiwayTransformer, init_ms_from_ma, save_model

    torch.manual_seed(0)
    cfg = profile_params("smoke").model
    ma = MultiwayTransformer(cfg)
    ms = MultiwayTransformer(dataclasses.replace(cfg, ms_components=["attn", "mlp", "norm1", "norm2"]))
    init_ms_from_ma(ms, ma.state_dict())
    with torch.no_grad():
        for n, p in ms.named_parameters():
            if ".v." in n or ".l." in n or ".vl." in n:
                p.add_(0.01 * torch.randn_like(p))
    save_model(tmp_path / "ma.safetensors", ma)
    save_model(tmp_path / "ms.safetensors", ms)
    return ms


def test_cli_merge_distance(tmp_path, capsys):
    from vlmerge_core.model import load_model

    _pico(tmp_path)
    ms, c = str(tmp_path / "ms.safetensors"), str(tmp_path / "ma.safetensors")
    assert (
        main(
            [
                "merge",
                ms,
                "--method",
                "dare",
                "--central",
                c,
                "--drop-rate",
                "0.3",
                "--seed",
                "1",
                "--lambda",
                "0.5",
                "--task",
                "coco",
                "-o",
                str(tmp_path / "m.safetensors"),
            ]
        )
        == 0
    )
    assert load_model(tmp_path / "m.safetensors").kind == "ma"
    assert (
        main(
            [
                "merge",
                ms,
                "--method",
                "interpolation",
                "--density",
                "0.5",
                "-o",
                str(tmp_path / "x.safetensors"),
            ]
        )
        == 2
    )
    assert "does not take ['density']" in capsys.readouterr().err
    assert main(["merge", ms, "--method", "arithmetic", "-o", str(tmp_path / "y.safetensors")]) == 2
    assert "needs the central" in capsys.readouterr().err
    assert main(["distance", ms, "--central", c, "--k", "0.2", "-o", str(tmp_path / "d.json")]) == 0
    d = read_json(tmp_path / "d.json")
    assert d["k"] == 0.2 and 0 <= d["total"]["tssd"] <= 1 and set(d["blocks"]) == {"0", "1"}
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["l2"] > 0


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
