"""The `vlmerge` command: params validation and error reporting."""

from __future__ import annotations

import yaml

from vlmerge_core.cli import main
from vlmerge_core.config import load_params, profile_params


def test_params_roundtrip(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    assert main(["params", "--profile", "smoke", "-o", str(out)]) == 0
    assert load_params(out) == profile_params("smoke")


def test_params_bad_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump({"model": {"wdth": 1}}))
    assert main(["params", "--file", str(bad)]) == 2
    assert "model.wdth" in capsys.readouterr().err


def test_params_paper_prints_per_task_resolutions_and_recipes(capsys):
    assert main(["params", "--profile", "paper"]) == 0
    over = yaml.safe_load(capsys.readouterr().out)["finetune"]["overrides"]
    assert {t: r.get("image_size") for t, r in over.items()} == {
        "vqa": 480, "coco": 384, "flickr": 384, "nlvr2": 384, "imagenet": 224, "ade20k": 224, "text": None
    }  # fmt: skip
    assert over["coco"]["lr"] == 6.25e-6 and over["vqa"]["head_lr_mult"] == 10.0
