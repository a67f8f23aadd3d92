"""study.launcher = torchrun: the units of a call one torchrun job, rank 0's results back; in-process unchanged."""

import math

import pytest

from vlmerge_core.config import ParamsError, StudyConfig, profile_params
from vlmerge_core.study.launch import LaunchError, torchrun_command, world_probe
from vlmerge_core.study.workers import run_units


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMERGE_ROOT", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return tmp_path


def test_units_run_under_torchrun_on_two_processes(root):
    study = StudyConfig(launcher="torchrun", nproc_per_node=2)
    out = run_units(world_probe, [{"id": "a"}, {"id": "b"}], workers=2, launch=study)
    assert [r["unit"]["id"] for r in out] == ["a", "b"]  # in order, the unit round-trips
    assert all(r["world_size"] == 2 and r["rank_sum"] == 3.0 for r in out)  # 1 + 2, all-reduced
    assert not list((root / "runs" / "launch").iterdir())  # unit and result files removed


def test_inprocess_is_the_default_and_runs_here(root):
    assert StudyConfig().launcher == "inprocess"
    assert run_units(world_probe, ["x"], workers=1, launch=StudyConfig()) == [
        {"world_size": 1, "rank_sum": 1.0, "unit": "x"}
    ]


def test_a_failing_unit_names_itself(root):
    with pytest.raises(LaunchError, match="unit 1 of math:sqrt failed under torchrun"):
        run_units(math.sqrt, [4.0, "not a number"], workers=1, launch=StudyConfig(launcher="torchrun"))


def test_torchrun_command_single_and_multi_node(root, monkeypatch):
    one = torchrun_command(StudyConfig(launcher="torchrun", nproc_per_node=8), "m:f", root / "u", root / "r")
    assert one[one.index("--nproc_per_node") + 1] == "8" and "--standalone" in one
    monkeypatch.setenv("VLMERGE_NODE_RANK", "1")
    multi = torchrun_command(
        StudyConfig(launcher="torchrun", nproc_per_node=8, nnodes=6, rdzv_endpoint="h:29400"),
        "m:f",
        root,
        root,
    )
    assert multi[multi.index("--nnodes") + 1] == "6" and multi[multi.index("--node_rank") + 1] == "1"
    assert multi[multi.index("--rdzv_endpoint") + 1] == "h:29400" and "--standalone" not in multi
    with pytest.raises(ParamsError, match="study.rdzv_endpoint"):
        torchrun_command(StudyConfig(launcher="torchrun", nnodes=2), "m:f", root, root)


def test_paper_profile_launches_with_torchrun():
    study = profile_params("paper").study
    assert study.launcher == "torchrun" and study.nproc_per_node == 8
    assert profile_params("micro").study.launcher == "inprocess"
