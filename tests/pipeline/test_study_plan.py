"""The study's grid (vlmerge_core.study.plan), its collection of metrics and the clean notebook copies."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from vlmerge_core.config import ParamsError, load_params, params_from_dict, to_dict
from vlmerge_core.study import plan
from vlmerge_core.study.collect import CollectError, finetune_rows
from vlmerge_core.study.notebooks import NotebookError, clean_notebook

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def micro():
    return load_params(profile="micro")


def test_runs_and_roles(micro):
    """Every length is its own MA run per RNG seed; one MA run serves as seed, MA baseline (K_VL) and
    compute-matched MA (K_seed + K_VL) when the lengths coincide; MS runs start from their own seed."""
    d = plan.design(micro)
    assert d.ma_baseline_steps == micro.ms_pretrain.steps and d.ma_matched_steps == d.recipe_seed + d.k_vl
    ma = plan.ma_runs(micro)
    lengths = {*d.seed_lengths, d.ma_baseline_steps, d.ma_matched_steps}
    assert set(ma) == {f"ma{k}_r{r}" for k in lengths for r in d.pt_seeds}
    ms = plan.ms_runs(micro)
    for r in d.pt_seeds:
        naive, recipe = ms[f"all_s0_r{r}"], ms[f"all_s{d.recipe_seed}_r{r}"]
        assert naive.init_ckpt() == plan.init_ckpt() and naive.seed() is None  # no seed: the init itself
        assert recipe.central_ckpt() == plan.MARun(d.recipe_seed, r).ckpt() and recipe.ms_seed == r
    assert plan.recipe_ids(micro) == [f"all_s{d.recipe_seed}_r{r}" for r in d.pt_seeds]
    grid = [m for m in ms.values() if m.role == "grid"]
    assert len(grid) + len(d.pt_seeds) >= 10  # C3's E4 grid at the recipe's seed length
    assert all(m.seed_steps == d.recipe_seed and m.pt_seed == d.pt_seeds[0] for m in grid)


def test_bad_grid_entries_are_refused(micro):
    d = to_dict(micro)
    bad = copy.deepcopy(d)
    bad["study"]["grid"]["x"] = {"variant": "wide"}
    with pytest.raises(ParamsError, match=r"study\.grid\.x\.variant"):
        plan.check(params_from_dict(bad))
    bad = copy.deepcopy(d)
    bad["study"]["grid"]["x"] = {"seed_steps": 7}
    with pytest.raises(ParamsError, match=r"study\.grid\.x.*seed_steps"):
        plan.check(params_from_dict(bad))
    bad = copy.deepcopy(d)
    bad["study"]["recipe_methods"] = ["interpolation", "magic"]
    with pytest.raises(ParamsError, match="magic"):
        plan.check(params_from_dict(bad))


def test_study_merges_by_role(micro):
    st = micro.study
    r0, r1 = plan.recipe_ids(micro)[:2]
    jobs = plan.study_merges(micro, r0)
    assert {j.method for j in jobs if not j.option} == set(micro.merge.methods)  # E2 sweep
    assert {j.option for j in jobs} == {"", *st.options}  # E6
    every = {j.method for j in jobs if j.tasks == tuple(micro.finetune.tasks)}
    assert every == set(st.recipe_methods)  # C5's methods on every task
    other = {(j.method, j.tasks) for j in plan.study_merges(micro, r1)}
    assert other == {(m, tuple(micro.finetune.tasks)) for m in st.recipe_methods}
    e1 = plan.study_merges(micro, f"all_s{st.seed_lengths[-1]}_r0")
    assert [j.method for j in e1] == list(st.e1_methods) and all("E4" in j.experiments for j in e1)
    variant = plan.study_merges(micro, next(k for k, v in st.grid.items() if v.get("variant") == "attn"))
    sweep = tuple(t for t in micro.finetune.tasks if t in st.sweep_tasks)
    assert {(j.method, j.tasks) for j in variant if j.method != st.e1_methods[0]} == {
        (m, sweep) for m in st.recipe_methods if m != st.e1_methods[0]
    }


def test_every_pretrained_unit_is_fine_tuned_once(micro):
    """Replicates replace fine-tuning seeds: every pre-trained model gets study.ft_seed only; random init
    and init (no pre-training replicates) get study.e0_ft_seeds."""
    st, d = micro.study, plan.design(micro)
    testbed = plan.testbed_jobs(micro)
    assert [j.kind for j in testbed[:3]] == ["untrained", "random", "init"]
    assert all(j.ft_seeds == tuple(st.e0_ft_seeds) for j in testbed[1:3])
    ma = [j for j in testbed if j.kind == "ma"]
    assert {j.model_id for j in ma} == {
        f"ma{k}_r{r}" for k in (d.recipe_seed, d.ma_baseline_steps, d.ma_matched_steps) for r in d.pt_seeds
    }
    jobs = plan.evaluate_jobs(micro)
    assert all(j.ft_seeds == (st.ft_seed,) for j in ma + jobs)
    ms = {j.model_id for j in jobs if j.kind == "ms"}
    assert {f"ms_{i}" for i in plan.recipe_ids(micro) + plan.naive_ids(micro)} <= ms
    merged = {j.model_id for j in jobs if j.kind == "merged"}
    assert len(merged) == len(set(merged))


def test_finetune_rows_follow_the_contract():
    doc = {
        "model": {
            "model_id": "merged_x",
            "kind": "merged",
            "seed_steps": 3,
            "variant": "all",
            "pt_seed": 2,
            "pt_steps": 200,
            "ms_seed": 2,
            "lr_mult": 1.0,
            "method": "ties",
            "knob": "density",
            "knob_value": 0.5,
            "option": "",
            "experiments": ["E2"],
        },
        "records": [
            {
                "task": "vqa",
                "ft_seed": 0,
                "main_metric": "vqa_score",
                "val_last_gain": 0.4,
                "metrics": {"vqa_score": 40.0, "note": "x"},
                "val": {"vqa_score": 41.0},
                "ci": {"vqa_score": [38.0, 42.0]},
            }
        ],
    }
    rows = finetune_rows(doc, "f.json")
    assert [(r["metric"], r["split"]) for r in rows] == [
        ("vqa_score", "test"),
        ("vqa_score", "val"),
        ("val_last_gain", "val"),
    ]
    assert rows[0]["is_main"] and rows[0]["ci_low"] == 38.0 and rows[0]["experiments"] == "E2"
    assert rows[1]["value"] == 41.0 and rows[0]["pt_seed"] == 2 and rows[0]["pt_steps"] == 200
    with pytest.raises(CollectError, match="f.json"):
        finetune_rows({"model": {"kind": "ms"}, "records": []}, "f.json")


def test_clean_copy_ignores_outputs_and_run_metadata(tmp_path):
    src = ROOT / "notebooks" / "07_evaluate.ipynb"
    a = clean_notebook(src, tmp_path / "a.ipynb").read_bytes()
    nb = json.loads(src.read_text())
    for cell in nb["cells"]:  # what JupyterLab adds when a notebook is run and saved
        cell.setdefault("metadata", {})["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00"}
        if cell["cell_type"] == "code":
            cell["execution_count"] = 7
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "hello\n"}]
    nb["metadata"]["language_info"] = {"name": "python", "version": "3.11.7"}
    (tmp_path / "saved.ipynb").write_text(json.dumps(nb))
    assert clean_notebook(tmp_path / "saved.ipynb", tmp_path / "b.ipynb").read_bytes() == a
    nb["cells"][1]["source"] = "which = 'other'\n"  # a code change does count
    (tmp_path / "edited.ipynb").write_text(json.dumps(nb))
    assert clean_notebook(tmp_path / "edited.ipynb", tmp_path / "c.ipynb").read_bytes() != a
    (tmp_path / "broken.ipynb").write_text("{not json")
    with pytest.raises(NotebookError, match="broken.ipynb"):
        clean_notebook(tmp_path / "broken.ipynb", tmp_path / "d.ipynb")


def test_checkpoints_for_picks_the_option_and_the_task_group():
    """The study's lookup is the merge stage's (record_for_task), over the records of one option."""
    from vlmerge_core.merge.methods.registry import MergeError
    from vlmerge_core.study.execute import checkpoints_for

    recs = [
        {"run": "regmean_alpha1", "option": "", "group": "vqa", "tasks": ["vqa"], "path": "m/rv.st"},
        {"run": "regmean_alpha1", "option": "", "group": "retrieval", "tasks": ["coco"], "path": "m/rr.st"},
        {
            "run": "regmean_alpha1",
            "option": "gram_nopad",
            "group": "vqa",
            "tasks": ["vqa"],
            "path": "m/nv.st",
        },
    ]
    assert checkpoints_for(recs, "regmean_alpha1", "", ["vqa", "coco"]) == {
        "vqa": "m/rv.st",
        "coco": "m/rr.st",
    }
    assert checkpoints_for(recs, "regmean_alpha1", "gram_nopad", ["vqa"]) == {"vqa": "m/nv.st"}
    with pytest.raises(MergeError, match="coco"):
        checkpoints_for(recs, "regmean_alpha1", "gram_nopad", ["coco"])


def test_units_are_submitted_costliest_first_and_returned_in_plan_order(micro):
    from vlmerge_core.study.execute import _unit_cost
    from vlmerge_core.study.workers import lpt_order

    assert lpt_order([1.0, 5.0, 2.0, 5.0]) == [1, 3, 2, 0]  # ties keep their order
    import dataclasses

    over = {
        "text": {"epochs": 16},
        "vqa": {"epochs": 12},
        "nlvr2": {"epochs": 3},
        "ade20k": {"train_subsample": 0},
    }
    ft = dataclasses.replace(micro.finetune, epochs=8, train_subsample=1000, overrides=over)
    p = dataclasses.replace(micro, finetune=ft)
    # the whole training set (0) > text (16 epochs) > VQA (12) > COCO (8) > NLVR2 (3) > untrained (0 epochs)
    tasks = ("ade20k", "text", "vqa", "coco", "nlvr2")
    costs = [_unit_cost(p, t, None) for t in tasks] + [_unit_cost(p, "vqa", 0)]
    assert lpt_order(costs[::-1]) == [5, 4, 3, 2, 1, 0]


def test_timing_rows_and_budget_table(tmp_path):
    """collect keeps every unit's seconds; the paper stage sums them per stage (generated/budget.md)."""
    from vlmerge_core.io import write_json
    from vlmerge_core.report.generated import budget_markdown
    from vlmerge_core.study.collect import _frame, timing_rows

    write_json(tmp_path / "pretrain" / "init.json", {"stage": "init", "wall_time_s": 30.0})
    write_json(
        tmp_path / "pretrain" / "ma" / "ma100_r0.json",
        {"wall_time_s": 50.0, "study": {"model_id": "ma100_r0"}},
    )
    write_json(
        tmp_path / "pretrain" / "ms" / "ms_a.json", {"wall_time_s": 70.0, "study": {"model_id": "ms_a"}}
    )
    write_json(tmp_path / "merge" / "a.json", {"records": [{"seconds": 1.5}, {"seconds": 2.5}]})
    job = {
        "model": {"model_id": "random"},
        "records": [{"task": "vqa", "seconds": 10.0}, {"task": "coco", "seconds": 4.0}],
    }
    write_json(tmp_path / "finetune" / "testbed.json", [job])
    df = _frame(timing_rows(tmp_path), "timing")
    assert sorted(df["stage"]) == ["init", "merge", "pretrain_ma", "pretrain_ms", "testbed", "testbed"]
    assert df.loc[df["stage"] == "merge", "seconds"].item() == 4.0
    flat = budget_markdown(df, workers=2).replace(" ", "")
    assert "|pretrain_ma|1|50|25|" in flat and "|total|6|168|99|" in flat  # init runs alone
    assert budget_markdown(None, 2).startswith("Budget: not measured")
