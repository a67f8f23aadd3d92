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


def test_ms_models_and_roles(micro):
    models = plan.ms_models(micro)
    assert micro.study.recipe in models and micro.study.naive in models
    assert models[micro.study.naive].seed_steps == 0
    assert models[micro.study.naive].init_ckpt() == plan.init_ckpt()  # no seed: the init itself
    recipe = models[micro.study.recipe]
    assert recipe.central_ckpt() == plan.seed_ckpt(recipe.seed_steps)
    assert plan.ma_baseline_steps(micro) == micro.ms_pretrain.steps  # the paper's MA "from scratch": K_VL


def test_bad_grid_entries_are_refused(micro):
    d = to_dict(micro)
    bad = copy.deepcopy(d)
    bad["study"]["ms_models"]["all_s7"] = {"variant": "all", "seed_steps": 7}
    with pytest.raises(ParamsError, match=r"study\.ms_models\.all_s7\.seed_steps"):
        params_from_dict(bad)
    bad = copy.deepcopy(d)
    bad["study"]["recipe"] = "nope"
    with pytest.raises(ParamsError, match=r"study\.recipe"):
        params_from_dict(bad)
    bad = copy.deepcopy(d)
    bad["study"]["ms_models"]["x"] = {"variant": "wide", "seed_steps": 0}
    with pytest.raises(ParamsError, match="variant"):
        plan.ms_models(params_from_dict(bad))


def test_merge_jobs_recipe_sweeps_every_method_and_option(micro):
    jobs = plan.merge_jobs(micro, micro.study.recipe)
    methods = {j.method for j in jobs if not j.option}
    assert methods == set(micro.merge.methods)
    assert {j.option for j in jobs} == {"", *micro.study.options}
    e2 = [j for j in jobs if "E2" in j.experiments]
    assert len(e2) >= len(micro.merge.methods)
    other = next(k for k in plan.ms_models(micro) if k not in (micro.study.recipe, micro.study.naive))
    assert {j.method for j in plan.merge_jobs(micro, other)} == set(micro.study.e1_methods)


def test_claim_rows_get_every_ft_seed(micro):
    seeds = tuple(micro.study.ft_seeds)
    for key in (micro.study.recipe, micro.study.naive):
        jobs = plan.evaluate_jobs(micro, key)
        # the recipe's unmerged row carries E3's drop; the naive model's unmerged row no claim
        ms_seeds = seeds if key == micro.study.recipe else seeds[:1]
        assert jobs[0].kind == "ms" and jobs[0].ft_seeds == ms_seeds and "E5" in jobs[0].experiments
        e1 = [j for j in jobs if "E1" in j.experiments and j.kind == "merged"]
        assert e1 and all(j.ft_seeds == seeds and set(j.tasks) == set(micro.finetune.tasks) for j in e1)
    testbed = plan.testbed_jobs(micro)
    kinds = [j.kind for j in testbed]
    assert kinds[:3] == ["untrained", "random", "init"] and kinds[-1] == "ma_baseline"
    assert all(j.ft_seeds == seeds for j in testbed[1:]) and len(seeds) >= 3
    ids = [j.model_id for j in testbed]
    assert (
        f"seed{min(micro.seed_pretrain.save_steps)}" in ids
        and f"seed{max(micro.seed_pretrain.save_steps)}" in ids
    )


def test_finetune_rows_follow_the_contract():
    doc = {
        "model": {
            "model_id": "merged_x",
            "kind": "merged",
            "seed_steps": 3,
            "variant": "all",
            "method": "ties",
            "knob": "density",
            "knob_value": 0.5,
            "option": "",
            "experiments": ["E2"],
        },
        "records": [
            {
                "task": "vqa",
                "ft_seed": 1,
                "main_metric": "vqa_score",
                "val_last_gain": 0.4,
                "metrics": {"vqa_score": 40.0, "note": "x"},
                "ci": {"vqa_score": [38.0, 42.0]},
            }
        ],
    }
    rows = finetune_rows(doc, "f.json")
    assert [r["metric"] for r in rows] == ["vqa_score", "val_last_gain"]
    assert rows[0]["is_main"] and rows[0]["ci_low"] == 38.0 and rows[0]["experiments"] == "E2"
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
    nb["cells"][1]["source"] = "model_id = 'other'\n"  # a code change does count
    (tmp_path / "edited.ipynb").write_text(json.dumps(nb))
    assert clean_notebook(tmp_path / "edited.ipynb", tmp_path / "c.ipynb").read_bytes() != a
    (tmp_path / "broken.ipynb").write_text("{not json")
    with pytest.raises(NotebookError, match="broken.ipynb"):
        clean_notebook(tmp_path / "broken.ipynb", tmp_path / "d.ipynb")


def test_checkpoints_for_picks_the_option_and_the_task_group():
    """The study's lookup is the merge stage's (record_for_task), over the records of one option."""
    from vlmerge_core.merge.methods.registry import MergeError
    from vlmerge_core.study.stage import checkpoints_for

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


def test_one_seed_rows_run_the_single_seed_tasks(micro):
    import dataclasses

    study = dataclasses.replace(micro.study, single_seed_tasks=["coco", "imagenet"])
    p = dataclasses.replace(micro, study=study)
    for key in plan.ms_models(p):
        for job in plan.evaluate_jobs(p, key):
            if len(job.ft_seeds) == 1:
                assert set(job.tasks) <= {"coco", "imagenet"}, job.model_id
            else:  # claim rows keep every task
                assert job.tasks == tuple(p.finetune.tasks), job.model_id
    # the testbed (E0) is untouched: every task
    assert all(j.tasks == tuple(p.finetune.tasks) for j in plan.testbed_jobs(p))
    bad = dataclasses.replace(micro, study=dataclasses.replace(micro.study, single_seed_tasks=["glue"]))
    with pytest.raises(ParamsError, match="single_seed_tasks"):
        plan.evaluate_jobs(bad, micro.study.recipe)


def test_units_are_submitted_costliest_first_and_returned_in_plan_order(micro):
    from vlmerge_core.study.stage import _unit_cost, lpt_order

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
