"""The data stage driver (notebook 01 / ``vlmerge data``) and the notebook's figure functions."""

from __future__ import annotations

import pytest
from matplotlib.figure import Figure

from vlmerge_core.cli import main
from vlmerge_core.data import plots
from vlmerge_core.data.stage import run_data_stage, world_summary
from vlmerge_core.io import read_json


def test_stage_reuses_same_params_and_writes_metrics(tmp_path, monkeypatch, smoke_world):
    monkeypatch.setenv("VLMERGE_ROOT", str(tmp_path))
    w = run_data_stage(profile="smoke", out_dir="w", metrics_out="metrics/data/stats.json")
    assert w.root == tmp_path / "w"
    assert read_json(tmp_path / "metrics/data/stats.json") == smoke_world.stats
    stamp = (tmp_path / "w/images_train.npy").stat().st_mtime_ns
    run_data_stage(profile="smoke", out_dir="w")  # same parameters: reused, not rewritten
    assert (tmp_path / "w/images_train.npy").stat().st_mtime_ns == stamp
    assert world_summary(w)["train_images"] == 64
    (tmp_path / "params.yaml").write_text(
        "profile: smoke\ndata: {root: other, n_train: 8, n_val: 4, n_test: 4,"
        " n_image_only: 16, n_corpus: 16}\n"
    )
    assert main(["data", "--file", "params.yaml", "--reuse"]) == 0  # world goes to data.root of the file
    assert len(read_json(tmp_path / "other/meta.json")["config"]) > 5
    assert main(["data", "--file", "missing.yaml"]) == 2


@pytest.mark.parametrize("fn", ["fig_gallery", "fig_nlvr2", "fig_text_lengths"])
def test_world_figures(smoke_world, fn):
    import matplotlib.pyplot as plt

    fig = getattr(plots, fn)(smoke_world)
    assert isinstance(fig, Figure)
    plt.close(fig)


def test_stats_figures_and_tables(smoke_world):
    import matplotlib.pyplot as plt

    fig = plots.fig_distributions(smoke_world.stats)
    assert isinstance(fig, Figure)
    plt.close(fig)
    assert plots.counts_table(smoke_world.stats).loc["images", "train"] == 64
    assert "VQA accuracy (majority answer)" in plots.chance_table(smoke_world.stats).index
    assert set(plots.examples_table(smoke_world)["task"]) >= {"vqa", "nlvr2", "corpus"}


def test_fixtures_source_writes_the_real_formats_and_their_chance(tmp_path, monkeypatch):
    """data.source: fixtures (the rehearsal): the files of every real format, their counts and the
    chance level of each task's main metric, computed with the readers the tasks use."""
    monkeypatch.setenv("VLMERGE_ROOT", str(tmp_path))
    fx = run_data_stage(profile="rehearsal", out_dir="fx", metrics_out="metrics/data/stats.json")
    assert (tmp_path / "fx/arrows/coco_caption_karpathy_train.arrow").is_file()
    assert (tmp_path / "fx/beit.safetensors").is_file() and (tmp_path / "fx/tokenizer/vocab.txt").is_file()
    stats = read_json(tmp_path / "metrics/data/stats.json")
    chance = stats["chance"]
    assert 0 < chance["nlvr2_majority_acc"] <= 1 and chance["imagenet_uniform_acc"] == 0.5  # 2 classes
    assert chance["retrieval_random"]["r10"]["t2i"] == 1.0  # 2 test images: any 10 hold the right one
    assert stats["counts"]["vqa"]["test"] > 0
    stamp = (tmp_path / "fx/beit.safetensors").stat().st_mtime_ns
    run_data_stage(profile="rehearsal", out_dir="fx")  # same seed and model: reused
    assert (tmp_path / "fx/beit.safetensors").stat().st_mtime_ns == stamp
    assert world_summary(fx)["datasets"][0] == "ade20k"
    views = plots.data_views(fx)
    assert len(views) == 2  # counts and chance: the fixtures have no scenes to draw


def test_real_source_reads_the_datasets_for_their_statistics(tmp_path, monkeypatch):
    """data.source: real (the paper profile): the stage reads finetune.real_paths, writes only their
    statistics, and a params file without a dataset root for a task is refused by name."""
    import yaml

    from vlmerge_core.config import ParamsError, params_from_dict
    from vlmerge_core.data.fixtures import fixture_paths, write_fixtures

    monkeypatch.setenv("VLMERGE_ROOT", str(tmp_path))
    write_fixtures(tmp_path / "fx", 0)
    fx = fixture_paths(tmp_path / "fx")
    real = {
        k: f"fx/{k}" for k in ("vqa", "coco", "flickr", "nlvr2", "imagenet", "ade20k", "text", "tokenizer")
    }
    doc = {
        "profile": "rehearsal",
        "data": {"source": "real", "root": "paper_data", "tokenizer": "fx/tokenizer"},
        "finetune": {"real_paths": real},
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    out = run_data_stage(params_file="p.yaml", metrics_out="m/stats.json")
    assert sorted(p.name for p in (tmp_path / "paper_data").iterdir()) == ["stats.json"]
    assert (
        read_json(tmp_path / "m/stats.json")["chance"]["nlvr2_majority_acc"]
        == out.stats["chance"]["nlvr2_majority_acc"]
    )
    assert out.paths["vqa"] == fx["vqa"]
    with pytest.raises(ParamsError, match=r"needs a dataset root for \['ade20k'\]"):
        params_from_dict(
            {**doc, "finetune": {"real_paths": {k: v for k, v in real.items() if k != "ade20k"}}}
        )
