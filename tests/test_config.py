"""The strict params loader: unknown keys, wrong types and bad values are refused by name."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from vlmerge_core.config import (
    PROFILES,
    Params,
    ParamsError,
    load_params,
    params_from_dict,
    profile_params,
    section_from_dict,
    to_dict,
)


def _write(tmp_path, data):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_profile_resolves():
    for name in PROFILES:
        params = profile_params(name)
        assert isinstance(params, Params)
        assert params.profile == name


def test_repo_params_yaml_loads():
    params = load_params()
    assert params.profile in PROFILES


def test_unknown_key_names_key_and_file(tmp_path):
    path = _write(tmp_path, {"model": {"widht": 32}})
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert "model.widht" in str(err.value) and str(path) in str(err.value)


def test_unknown_section(tmp_path):
    with pytest.raises(ParamsError, match="modle"):
        load_params(_write(tmp_path, {"modle": {}}))


@pytest.mark.parametrize(
    "data, key",
    [
        ({"model": {"width": "wide"}}, "model.width"),
        ({"model": {"rel_pos_bias": "true"}}, "model.rel_pos_bias"),
        ({"seed_pretrain": {"lr": "1e-3"}}, "seed_pretrain.lr"),
        ({"merge": {"ratios": 0.5}}, "merge.ratios"),
        ({"seed_pretrain": {"save_steps": [1, "x"]}}, "seed_pretrain.save_steps[1]"),
        ({"model": {"depth": True}}, "model.depth"),
    ],
)
def test_wrong_type_names_key(tmp_path, data, key):
    with pytest.raises(ParamsError) as err:
        load_params(_write(tmp_path, data))
    assert key in str(err.value)


@pytest.mark.parametrize(
    "data, key",
    [
        ({"merge": {"gram_batches": 0}}, "merge.gram_batches"),  # knob ranges: test_merge_registry
        ({"model": {"width": 0}}, "model.width"),
        ({"seed_pretrain": {"schedule": "exp"}}, "seed_pretrain.schedule"),
        ({"profile": "huge"}, "profile"),
        ({"model": {"width": 30, "heads": 4}}, "model.width"),
        ({"model": {"ms_components": ["ffn"]}}, "model.ms_components"),
    ],
)
def test_bad_value_names_key(tmp_path, data, key):
    with pytest.raises(ParamsError) as err:
        load_params(_write(tmp_path, data))
    assert key in str(err.value)


def test_missing_and_corrupt_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_overlay_order_profile_then_file(tmp_path):
    params = params_from_dict({"profile": "smoke", "model": {"depth": 3}})
    smoke = profile_params("smoke")
    assert params.model.depth == 3
    assert params.model.width == smoke.model.width  # from the smoke preset
    assert params.data == smoke.data


def test_ints_widen_to_float_and_roundtrip(tmp_path):
    params = params_from_dict({"seed_pretrain": {"lr": 1}})
    assert params.seed_pretrain.lr == 1.0 and isinstance(params.seed_pretrain.lr, float)
    again = params_from_dict(to_dict(params))
    assert again == params


def test_section_from_dict():
    from vlmerge_core.config import MergeConfig

    cfg = section_from_dict(MergeConfig, {"ratios": [0.25]}, prefix="merge")
    assert cfg.ratios == [0.25] and dataclasses.is_dataclass(cfg)
    with pytest.raises(ParamsError, match="merge.bogus"):
        section_from_dict(MergeConfig, {"bogus": 1}, prefix="merge")


@pytest.mark.parametrize(
    "data, words",
    [
        ({"model": {"image_size": 64}}, ["model.image_size", "data.image_size"]),
        ({"data": {"max_text_len": 40}}, ["data.max_text_len", "model.max_text_len"]),
        ({"model": {"mim_vocab": 32}}, ["data.mim_codebook_size", "model.mim_vocab"]),
        ({"study": {"recipe_seed": 260}}, ["study.recipe_seed", "260", "study.seed_lengths"]),
        ({"study": {"pt_seeds": [0, 0]}}, ["study.pt_seeds"]),
        ({"study": {"sweep_tasks": ["gqa"]}}, ["study.sweep_tasks", "gqa"]),
    ],
)
def test_cross_section_checks(tmp_path, data, words):
    path = _write(tmp_path, data)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(path) in str(err.value) and all(w in str(err.value) for w in words)


def test_relative_params_path_resolves_from_repo_root(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "p.yaml").write_text(yaml.safe_dump({"profile": "smoke"}))
    monkeypatch.setenv("VLMERGE_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path / "cfg")  # a relative path is never read from the current directory
    assert load_params("cfg/p.yaml").profile == "smoke"


def test_paper_profile_names_every_task_recipe_and_resolution():
    """``overrides`` replaces the default dict as a whole, so the paper profile gives every task its
    recipe in full (none falls back to the generic one); resolutions as the official named configs."""
    from vlmerge_core.tasks.engine import task_config
    from vlmerge_core.tasks.registry import PAPER_RECIPES

    p = profile_params("paper")
    over = p.finetune.overrides
    assert set(over) == set(p.finetune.tasks) and over == PAPER_RECIPES
    for task in p.finetune.tasks:
        assert {"lr", "batch_size", "epochs", "head_lr_mult", "warmup_frac"} <= set(over[task]), task
    sizes = {t: task_config(p.finetune, t).image_size for t in p.finetune.tasks}
    assert sizes == {
        "vqa": 480,
        "coco": 384,
        "flickr": 384,
        "nlvr2": 384,
        "imagenet": 224,
        "ade20k": 224,
        "text": 0,
    }
    assert task_config(p.finetune, "imagenet").weight_decay == 0.05  # not the generic 0.01


def test_paper_profile_pretraining_details():
    """The MA baseline (K_VL steps, its own schedule) warms up as the official ma_200k_vlpt (step200k:
    2500 steps); the ITC gradient scale is the official one."""
    import dataclasses

    from vlmerge_core.pretrain.optim import warmup_steps

    p = profile_params("paper")
    baseline = dataclasses.replace(p.seed_pretrain, steps=p.ms_pretrain.steps)
    assert p.ms_pretrain.steps == 200000 and warmup_steps(baseline) == 2500
    assert warmup_steps(dataclasses.replace(p.seed_pretrain, steps=100000)) == 1250  # step100k
    assert p.seed_pretrain.itc_grad == p.ms_pretrain.itc_grad == "official"


def test_new_fields_default_to_no_change():
    p = profile_params("micro")
    assert p.finetune.image_size == 0 and p.seed_pretrain.itc_grad == "exact"
    with pytest.raises(ParamsError, match="itc_grad"):
        params_from_dict({"seed_pretrain": {"itc_grad": "half"}})
