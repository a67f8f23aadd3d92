"""The study loader: typed frames, "not run" for missing files, errors that name the file and column."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import study_rows

from vlmerge_core.report.load import StudyError, load_study, read_study_file
from vlmerge_core.report.schema import FILES
from vlmerge_core.report.synthetic import write_csv


def _write(tmp_path, name="results", rows=None, drop=(), **changes):
    df = pd.DataFrame(rows or study_rows())[list(FILES["results"])] if name == "results" else rows
    df = df.drop(columns=list(drop))
    for col, (i, val) in changes.items():
        df[col] = df[col].astype(object)
        df.loc[i, col] = val
    return write_csv(df, tmp_path / f"{name}.csv")


def test_loads_typed_frames(tmp_path):
    _write(tmp_path)
    study = load_study(tmp_path)
    res = study.results
    assert str(res["seed_steps"].dtype) == "Int64" and res["is_main"].dtype == bool
    assert res["ft_seed"].dtype == "int64" and res["value"].dtype == float
    assert res["seed_steps"].isna().sum() > 0 and (res["variant"] == "").sum() > 0
    assert study.missing == ["chance.csv", "distances.csv", "pretrain.csv"]
    assert study.has("results") and not study.has("distances")
    assert set(study.experiment("E3")["model_id"]) >= {"ms_ln_s300", "m_ln_s300"}


def test_missing_folder_is_not_run(tmp_path):
    study = load_study(tmp_path / "nowhere")
    assert study.results is None and len(study.missing) == 4
    assert len(study.experiment("E1")) == 0


def test_missing_column_names_file_and_column(tmp_path):
    path = _write(tmp_path, drop=["ft_seed"])
    with pytest.raises(StudyError, match=r"results\.csv: missing column\(s\) \['ft_seed'\]"):
        read_study_file(path, "results")


def test_bad_value_names_column_and_row(tmp_path):
    _write(tmp_path, value=(3, "high"))
    with pytest.raises(StudyError, match=r"column 'value', data row 4: 'high' is not a number"):
        load_study(tmp_path)


def test_non_integer_seed_steps(tmp_path):
    _write(tmp_path, seed_steps=(5, "1.5"))
    with pytest.raises(StudyError, match="'seed_steps'.*not an integer"):
        load_study(tmp_path)


def test_unknown_kind_and_experiment(tmp_path):
    _write(tmp_path, kind=(0, "teacher"))
    with pytest.raises(StudyError, match="unknown value.*teacher"):
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
