"""`dvc repro` of the whole study on the smoke profile, in a temporary copy of the repository.

Checks that every stage runs from a clean clone and writes the study's metrics and the paper, that
re-running is a no-op, that a notebook saved with outputs retrains nothing, that changing a merge
parameter invalidates only the stages downstream of merging, and that the data stage is deterministic
(forced re-run gives byte-identical dataset files).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from _repo import copy_repo, run

pytestmark = [pytest.mark.slow, pytest.mark.pipeline]


def _run(cmd: list[str], cwd: Path) -> str:
    return run(cmd, cwd)


def _digest(folder: Path) -> dict[str, str]:
    """sha256 of every file (provenance lives beside the folder, in <folder>.run_info.json)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("repo"), "smoke")


def _stale(repo: Path) -> set[str]:
    return set(json.loads(_run(["dvc", "status", "--json"], repo).strip().splitlines()[-1] or "{}"))


def test_dvc_repro_smoke_whole_study(smoke_repo):
    _run(["dvc", "repro"], smoke_repo)
    from vlmerge_core.config import load_params

    params = load_params(smoke_repo / "params.yaml")
    data_root = smoke_repo / params.data.root
    first = _digest(data_root)
    assert first, "the data stage wrote nothing"
    for rel in (
        "metrics/data/stats.json",
        "metrics/finetune/testbed.json",
        "metrics/finetune/evaluate.json",
        "metrics/study/results.csv",
        "metrics/study/design.json",
        "metrics/study/distances.csv",
        "paper/REPORT.md",
        "paper/tables/e0_validity.md",
    ):
        assert (smoke_repo / rel).exists(), f"{rel} was not written"
    from vlmerge_core.study import plan

    for key in plan.ms_runs(params):
        assert (smoke_repo / f"metrics/merge/{key}.json").exists()
        assert (smoke_repo / f"metrics/distance/{key}.json").exists()
    results = (smoke_repo / "metrics/study/results.csv").read_text()
    assert "merged_" in results and f"ma{params.ms_pretrain.steps}_r0" in results
    import pandas as pd

    rows = pd.read_csv(smoke_repo / "metrics/study/results.csv")
    merged = rows[rows["model_id"].str.startswith("merged_")]
    assert len(merged) and set(merged["kind"]) == {"merged"}, set(merged["kind"])  # not their MS run's kind
    verdicts = json.loads((smoke_repo / "metrics/paper/summary.json").read_text())["verdicts"]
    assert verdicts["C1"]["verdict"] != "not run", verdicts["C1"]  # the merges reach the report

    again = _run(["dvc", "repro"], smoke_repo)
    assert "Running stage" not in again, again[-2000:]

    # a notebook run and saved with outputs (as JupyterLab does) retrains nothing
    nb_path = smoke_repo / "notebooks" / "07_evaluate.ipynb"
    nb = json.loads(nb_path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["execution_count"] = 3
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "saved with outputs\n"}]
    nb_path.write_text(json.dumps(nb, indent=1))
    saved = _run(["dvc", "repro"], smoke_repo)
    ran = [line for line in saved.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'notebooks':"], ran

    # one merge parameter: only the stages downstream of merging are stale (collect: the recipe's knob)
    text = (smoke_repo / "params.yaml").read_text().replace("ratios:\n  - 0.5", "ratios:\n  - 0.4", 1)
    if text == (smoke_repo / "params.yaml").read_text():
        text = (smoke_repo / "params.yaml").read_text().replace("ratios: [0.5]", "ratios: [0.4]", 1)
    (smoke_repo / "params.yaml").write_text(text)
    stale = _stale(smoke_repo)
    assert stale and all(s.split("@")[0] in ("merge", "evaluate", "collect") for s in stale), stale
    _run(["git", "checkout", "params.yaml"], smoke_repo)

    lock = (smoke_repo / "dvc.lock").read_text()
    _run(["dvc", "repro", "--force", "data"], smoke_repo)
    assert _digest(data_root) == first
    rel = data_root.relative_to(smoke_repo).as_posix()
    out_hash = lambda text: text.split(f"path: {rel}\n", 1)[1].split("\n", 2)[1]  # noqa: E731
    assert out_hash((smoke_repo / "dvc.lock").read_text()) == out_hash(lock)  # downstream stages stay valid


def test_fresh_clone_rebuilds_the_paper_from_committed_metrics(smoke_repo, tmp_path):
    """A fresh clone has the metrics and paper/ in git but no runs/ and no DVC cache: `dvc repro -s
    paper` rebuilds paper/ byte-identically without training (and without the `notebooks` stage)."""
    _run(["dvc", "repro"], smoke_repo)  # no-op when the whole-study test ran first
    _run(["git", "add", "-A"], smoke_repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "study"], smoke_repo)
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(smoke_repo), str(clone)], tmp_path)
    assert not (clone / "runs").exists()
    before = _digest(clone / "paper")
    out = _run(["dvc", "repro", "-s", "paper"], clone)
    ran = [line for line in out.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'paper':"], ran
    assert _digest(clone / "paper") == before
    assert not _run(["git", "status", "--porcelain", "paper", "metrics"], clone).strip()
