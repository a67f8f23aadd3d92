"""The published numbers: only what PAPER.md gives, each with its source; everything else "not found"."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmerge_core.report.load import StudyError
from vlmerge_core.report.published import SOURCES, headline_gains, load_published, read_published

PUBLISHED = Path(__file__).resolve().parents[2] / "paper" / "published"


def test_headline_gains_from_the_abstract():
    pub = load_published(PUBLISHED)
    assert headline_gains(pub) == {"vqa": 3.0, "coco": 7.0, "nlvr2": 25.0, "flickr": 14.0, "ade20k": 3.0}
    gains = pub[pub["quantity"] == "gain_over_naive"]
    assert set(gains.loc[gains["status"] == "found", "source"]) == {"abstract"}
    assert set(gains.loc[gains["status"] == "found", "unit"]) == {"points or % (not found)"}


def test_every_cell_found_with_source_or_empty():
    pub = load_published(PUBLISHED)
    found = pub[pub["status"] == "found"]
    assert set(found["source"]) <= set(SOURCES) and found["value"].notna().all()
    missing = pub[pub["status"] == "not found"]
    assert missing["value"].isna().all() and len(missing) > 40


def test_bad_published_files(tmp_path):
    header = "claim,experiment,task,metric,quantity,model,value,unit,source,status,note\n"
    (tmp_path / "a.csv").write_text(header + "C1,E5,vqa,,gain_over_naive,,4,,abstract,guessed,\n")
    with pytest.raises(StudyError, match="status 'guessed'"):
        read_published(tmp_path / "a.csv")
    (tmp_path / "a.csv").write_text(header + "C1,E5,vqa,,gain_over_naive,,4,,,not found,\n")
    with pytest.raises(StudyError, match="must have an empty value"):
        read_published(tmp_path / "a.csv")
    (tmp_path / "a.csv").write_text(header + "C1,E5,vqa,,gain_over_naive,,4,,a blog,found,\n")
    with pytest.raises(StudyError, match="source 'a blog'"):
        read_published(tmp_path / "a.csv")
    (tmp_path / "a.csv").write_text("claim,value\n")
    with pytest.raises(StudyError, match="missing column"):
        read_published(tmp_path / "a.csv")
    with pytest.raises(StudyError, match="no published-numbers CSV"):
        load_published(tmp_path / "none")
