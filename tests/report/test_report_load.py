"""The study loader: typed frames, design.json, "not run" for missing files, errors that name the file
and column."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import DESIGN, study_rows

from vlmerge_core.report.design import design_from_dict
from vlmerge_core.report.load import StudyError, load_study, read_study_file
from vlmerge_core.report.schema import FILES
from vlmerge_core.report.synthetic import make_design, write_csv


def _write(tmp_path, name="results", rows=None, drop=(), **changes):
    df = pd.DataFrame(rows or study_rows())[list(FILES["results"])] if name == "results" else rows
    df = df.drop(columns=list(drop))
    for col, (i, val) in changes.items():
        df[col] = df[col].astype(object)
        df.loc[i, col] = val
    return write_csv(df, tmp_path / f"{name}.csv")


def test_loads_typed_frames_and_design(tmp_path):
    _write(tmp_path)
    (tmp_path / "design.json").write_text(json.dumps(make_design((100, 200))))
    study = load_study(tmp_path)
    res = study.results
    assert str(res["seed_steps"].dtype) == "Int64" and res["is_main"].dtype == bool
    assert str(res["pt_seed"].dtype) == "Int64" and res["lr_mult"].dtype == float
    assert res["ft_seed"].dtype == "int64" and set(res["split"]) == {"test", "val"}
    assert res["pt_seed"].isna().sum() > 0 and (res["variant"] == "").sum() > 0
    assert study.missing == ["chance.csv", "distances.csv", "pretrain.csv"]
    assert study.has("results") and study.has("design") and not study.has("distances")
    assert study.design == DESIGN
    assert set(study.experiment("E3")["model_id"]) >= {"merged_ln_s100_r0_interpolation_ratio0.5"}


def test_missing_folder_and_design_are_not_run(tmp_path):
    study = load_study(tmp_path / "nowhere")
    assert study.results is None and study.design is None and len(study.missing) == 5
    assert "design.json" in study.missing and len(study.experiment("E1")) == 0


def test_bad_design(tmp_path):
    doc = make_design()
    with pytest.raises(StudyError, match=r"missing key\(s\) \['k_vl'\]"):
        design_from_dict({k: v for k, v in doc.items() if k != "k_vl"}, "design.json")
    with pytest.raises(StudyError, match="pt_seeds: expected a list of integers"):
        design_from_dict({**doc, "pt_seeds": "0,1"})
    (tmp_path / "design.json").write_text("{")
    with pytest.raises(StudyError, match="not valid JSON"):
        load_study(tmp_path)


def test_missing_column_names_file_and_column(tmp_path):
    path = _write(tmp_path, drop=["split"])
    with pytest.raises(StudyError, match=r"results\.csv: missing column\(s\) \['split'\]"):
        read_study_file(path, "results")


def test_bad_value_names_column_and_row(tmp_path):
    _write(tmp_path, value=(3, "high"))
    with pytest.raises(StudyError, match=r"column 'value', data row 4: 'high' is not a number"):
        load_study(tmp_path)


def test_non_integer_seed_steps(tmp_path):
    _write(tmp_path, pt_seed=(5, "1.5"))
    with pytest.raises(StudyError, match="'pt_seed'.*not an integer"):
        load_study(tmp_path)


def test_unknown_kind_split_and_experiment(tmp_path):
    _write(tmp_path, kind=(0, "seed"))
    with pytest.raises(StudyError, match="unknown value.*seed"):
        load_study(tmp_path)
    _write(tmp_path, split=(0, "train"))
    with pytest.raises(StudyError, match="'split' has unknown value.*train"):
        load_study(tmp_path)
    _write(tmp_path, experiments=(0, "E0;E9"))
    with pytest.raises(StudyError, match="unknown id.*E9"):
        load_study(tmp_path)


def test_duplicate_rows(tmp_path):
    rows = study_rows()
    _write(tmp_path, rows=rows + rows[:1])
    with pytest.raises(StudyError, match="duplicated row.*untrained"):
        load_study(tmp_path)


def test_bad_boolean_and_empty_file(tmp_path):
    _write(tmp_path, is_main=(0, "maybe"))
    with pytest.raises(StudyError, match="'is_main'.*boolean"):
        load_study(tmp_path)
    (tmp_path / "chance.csv").write_text("")
    with pytest.raises(StudyError, match="chance.csv: empty file"):
        read_study_file(tmp_path / "chance.csv", "chance")
