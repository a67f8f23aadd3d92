"""The registry is the one description of a method: the CLI, the grid and unify read it (issue 10.1)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor

from vlmerge_core.config import MergeConfig, ParamsError, params_from_dict
from vlmerge_core.merge.grid import (
    MergeJob,
    check_inputs,
    check_knobs,
    knob_value,
    merge_jobs,
    method_grid,
    run_name,
)
from vlmerge_core.merge.methods import METHODS, Knob, MergeError, merge_method
from vlmerge_core.model.experts import TASKS
from vlmerge_core.study import plan


def test_declarations_match_the_functions_and_the_params():
    fields = set(MergeConfig.__dataclass_fields__)
    for m in METHODS.values():
        sig = inspect.signature(m.fn).parameters
        assert "name" in sig and m.reference
        assert sum(k.sweep for k in m.knobs) <= 1
        for k in m.knobs:
            if k.name in sig:
                assert sig[k.name].default == k.default, (m.name, k.name)
            assert k.params_key.startswith("merge.")
            assert k.sweep is False or k.attr in fields, (m.name, k.params_key)  # swept lists exist
            k.check(k.default, m.name)  # the default is in range


def test_grid_and_run_names_come_from_the_registry():
    cfg = MergeConfig(methods=list(METHODS), ratios=[0.25, 0.75], lambdas=[0.5], ties_densities=[0.2])
    grid = method_grid(cfg)
    assert [run_name(m, p) for m, p in grid] == [
        "interpolation_ratio0.25",
        "interpolation_ratio0.75",
        "arithmetic_lam0.5",
        "arithmetic_formula_lam0.5",
        "regmean_alpha1",
        "ties_density0.2",
        "dare_drop_rate0.5",
    ]
    assert dict(grid)["ties"] == {"density": 0.2, "lam": 1.0, "trim": "vector"}
    assert dict(grid)["dare"] == {"drop_rate": 0.5, "lam": 0.5, "rng_seed": 0}
    with pytest.raises(ParamsError, match="merge.methods: unknown method 'nope'"):
        method_grid(cfg, ["nope"])
    bad = SimpleNamespace(ratios=[1.5])
    with pytest.raises(ParamsError, match=r"merge.ratios: ratio must be in \[0, 1\], got 1.5"):
        knob_value(bad, METHODS["interpolation"].sweep_knob)
    with pytest.raises(ParamsError, match="merge.ratios: missing"):
        knob_value(SimpleNamespace(), METHODS["interpolation"].sweep_knob)


def test_task_dependent_merges_are_one_job_per_task_group():
    grid = method_grid(MergeConfig(methods=["interpolation", "regmean"], ratios=[0.5]))
    jobs = merge_jobs(grid)
    assert [(j.method, j.group) for j in jobs] == [
        ("interpolation", "all"),
        ("regmean", "vqa"),
        ("regmean", "retrieval"),
        ("regmean", "other"),
    ]
    assert jobs[0].stem == "interpolation_ratio0.5" and jobs[1].stem == "regmean_alpha1__vqa"
    assert jobs[0].tasks == TASKS and jobs[2].tasks == ("coco", "flickr") and jobs[2].task == "coco"
    used = merge_jobs(grid, only_used_experts=True, tasks=("vqa", "coco", "text"))
    assert [(j.method, j.group, j.tasks) for j in used] == [
        ("interpolation", "fusion", ("vqa",)),
        ("interpolation", "retrieval", ("coco",)),
        ("interpolation", "other", ("text",)),
        ("regmean", "vqa", ("vqa",)),
        ("regmean", "retrieval", ("coco",)),
        ("regmean", "other", ("text",)),
    ]


def test_a_knob_is_declared_once_its_range_in_the_registry():
    """A MergeConfig field that a knob names holds its value only; the range is the knob's."""
    fields = MergeConfig.__dataclass_fields__
    for m in METHODS.values():
        for k in m.knobs:
            meta = fields[k.attr].metadata
            assert all(meta.get(x) is None for x in ("lo", "hi", "choices")), (m.name, k.attr)
    check_knobs(MergeConfig())  # the defaults are in range


@pytest.mark.parametrize(
    "merge, message",
    [
        ({"ratios": [0.5, 1.5]}, r"merge.ratios: ratio must be in \[0, 1\], got 1.5"),
        ({"ties_trim": "row"}, r"merge.ties_trim: trim must be one of \['vector', 'tensor'\]"),
        ({"rng_seed": -1}, "merge.rng_seed: rng_seed must be in"),
        ({"ties_lambda": -0.5}, "merge.ties_lambda: lam must be in"),
    ],
)
def test_knob_values_are_checked_by_their_declaration(merge, message):
    params = params_from_dict({"profile": "smoke", "merge": merge})  # the loader takes the value
    with pytest.raises(ParamsError, match=message):
        check_knobs(params.merge)
    with pytest.raises(ParamsError, match=message):
        plan.check(params)  # what every study stage runs on its parsed params


def test_check_inputs_names_the_missing_input():
    check_inputs(["interpolation", "arithmetic", "regmean"], central=True, grams=True)
    check_inputs(["interpolation"], central=False, grams=False)
    with pytest.raises(ParamsError, match="central_ckpt: merge method 'ties' needs"):
        check_inputs(["interpolation", "ties"], central=False, grams=True)
    with pytest.raises(ParamsError, match="gram_path: merge method 'regmean' needs"):
        check_inputs(["regmean"], central=True, grams=False)
    with pytest.raises(MergeError, match="unknown merge method 'nope'"):
        check_inputs(["nope"], central=True, grams=True)


def test_one_merge_job_from_the_plan_to_the_checkpoint():
    """A study merge (group "all") and its split by task group are the same class; the split keeps the
    option and the experiments, and the swept knob comes from the registry."""
    job = MergeJob("regmean", {"alpha": 1.0}, "gram_nopad", ("E6",), ("vqa", "coco", "text"))
    assert (job.group, job.task, job.run_name, job.knob, job.knob_value) == (
        "all",
        None,
        "regmean_alpha1",
        "alpha",
        1.0,
    )
    split = merge_jobs(
        [(job.method, job.params)], tasks=job.tasks, option=job.option, experiments=job.experiments
    )
    assert [(j.stem, j.tasks, j.task) for j in split] == [
        ("regmean_alpha1__vqa", ("vqa",), "vqa"),
        ("regmean_alpha1__retrieval", ("coco",), "coco"),
        ("regmean_alpha1__other", ("text",), "text"),
    ]
    assert all(j.option == "gram_nopad" and j.experiments == ("E6",) for j in split)
    assert MergeJob("interpolation", {"ratio": 0.5}) == MergeJob("interpolation", {"ratio": 0.5})
    assert MergeJob("interpolation", {"ratio": 0.5}) != MergeJob("interpolation", {"ratio": 0.25})
    assert MergeJob("arithmetic_formula", {"lam": 0.5}).stem == "arithmetic_formula_lam0.5"


def test_registration_is_checked():
    with pytest.raises(ValueError, match="default 0.3 differs"):

        @merge_method("bad_default", "Nobody 2024", knobs=(Knob("gain", float, 0.3, "g"),))
        def _bad(experts: Sequence[Tensor], *, gain: float = 0.5, name: str = "t") -> Tensor:
            return experts[0]

    with pytest.raises(ValueError, match="registered twice"):
        merge_method("interpolation", "x")(lambda experts, name="t": experts[0])
    assert "bad_default" not in METHODS


@pytest.fixture
def scaled_mean():
    """A method registered by the test (and removed after it)."""

    @merge_method(
        "scaled_mean",
        "Test 2024, a registered method",
        knobs=(
            Knob("gain", float, 1.0, "scaled_mean: factor", lo=0.0, params_key="merge.ratios", sweep=True),
        ),
    )
    def scaled_mean_fn(experts: Sequence[Tensor], *, gain: float = 1.0, name: str = "t") -> Tensor:
        return (sum(e.double() for e in experts) / len(experts) * gain).to(experts[0].dtype)

    yield METHODS["scaled_mean"]
    del METHODS["scaled_mean"]


def test_a_registered_method_shows_up_in_the_cli_and_the_grid(scaled_mean, tmp_path, capsys):
    from test_merge_cli import _pico

    from vlmerge_core.cli import build_parser, main
    from vlmerge_core.io import load_safetensors

    grid = method_grid(MergeConfig(methods=["scaled_mean"], ratios=[0.5, 2.0]))
    assert [run_name(m, p) for m, p in grid] == ["scaled_mean_gain0.5", "scaled_mean_gain2"]
    merge = build_parser()._subparsers._group_actions[0].choices["merge"]
    assert "scaled_mean" in merge.format_help() and "--gain" in merge.format_help()
    ms = _pico(tmp_path)
    out = tmp_path / "s.safetensors"
    assert (
        main(
            [
                "merge",
                str(tmp_path / "ms.safetensors"),
                "--method",
                "scaled_mean",
                "--gain",
                "2",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    got, _ = load_safetensors(out)
    sd = ms.state_dict()
    expect = (sd["blocks.0.mlp.v.fc1.weight"].double() + sd["blocks.0.mlp.l.fc1.weight"].double()).float()
    torch.testing.assert_close(got["blocks.0.mlp.fc1.weight"], expect)
    assert (
        main(
            [
                "merge",
                str(tmp_path / "ms.safetensors"),
                "--method",
                "scaled_mean",
                "--gain",
                "-1",
                "-o",
                str(out),
            ]
        )
        == 2
    )
    assert "scaled_mean: gain must be in [0, inf]" in capsys.readouterr().err
    with pytest.raises(MergeError, match="does not take"):
        METHODS["scaled_mean"].check_params({"ratio": 0.5})
