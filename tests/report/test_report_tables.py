"""Each table function on the hand-made frame: the rows, the spread of every number, the paper column,
and the LaTeX (booktabs) and Markdown writers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from conftest import frame, merged, study_rows

from vlmerge_core.report.published import load_published
from vlmerge_core.report.schema import METRIC_ORDER
from vlmerge_core.report.tableio import tex_escape, to_latex, to_markdown, write_table
from vlmerge_core.report.tables import (
    PAPER_ROW,
    table_e0,
    table_e0_scores,
    table_e0_zeroshot,
    table_e1,
    table_e2,
    table_orderings,
)
from vlmerge_core.report.tables_main import e4_points, table_e3, table_e4, table_e5, table_methods

ROOT = Path(__file__).resolve().parents[2]


def _numbers_have_spread(df: pd.DataFrame) -> None:
    for cell in df.to_numpy().ravel():
        text = str(cell)
        if text[:1].isdigit() or text[:1] in "+-":
            assert "±" in text or "[" in text, f"number without spread: {text!r}"


def test_e0_tables(results, chance):
    df = table_e0(results, chance)
    assert list(df.index) == ["VQA", "NLVR2"] and set(df["valid stand-in"]) == {"valid"}
    assert df.loc["VQA", "untrained"] == "25.0 [23.0, 27.0]" and df.loc["VQA", "gap"] == "+21.0 ± 1.4"
    scores = table_e0_scores(results)
    assert list(scores.index)[:2] == ["untrained (random init, no fine-tuning)", "random init"]
    _numbers_have_spread(scores)
    pre = pd.DataFrame({"model_id": ["init", "init", "seed300"], "kind": ["init", "init", "seed"],
                        "seed_steps": pd.array([None, None, 300], dtype="Int64"), "variant": ["", "", ""],
                        "steps": pd.array([100, 200, 300], dtype="Int64"), "metric": ["rsum"] * 3,
                        "value": [1.0, 2.0, 30.0]})  # fmt: skip
    zs = table_e0_zeroshot(pre)
    assert zs.loc["init", "rsum"] == "2.0" and zs.loc["seed300", "K_seed"] == "300"  # last step kept


def test_e1_table(results):
    df = table_e1(results)
    assert df.loc["interpolation ratio=0.5 · all · K=0 (naive)", "VQA (vqa_score)"] == "51.0 ± 1.0"
    assert "MA baseline" in df.index and set(df.loc[PAPER_ROW]) == {"not found"}
    _numbers_have_spread(df.drop(index=PAPER_ROW))


def test_e2_table_and_orderings(results):
    df = table_e2(results)
    assert df.loc["interpolation", "VQA (vqa_score)"] == "61.0 ± 1.0 (ratio=0.5)"  # the best knob
    assert "TIES (ours)" in df.index and df.loc["TIES (ours)", "NLVR2 (accuracy)"].startswith("59.0 ± 1.0")
    assert set(df.loc["paper: best alpha / lambda / alpha_R"]) == {"not found"}
    order = table_orderings(results)
    assert order.loc["VQA (vqa_score)", "methods, measured (best first)"] == (
        "interpolation > TIES (ours) > arithmetic (official in-place)"
    )
    assert (
        order.loc["VQA (vqa_score)", "variants, measured (smallest drop first)"] == "Custom LN < No sharing"
    )
    assert set(order["methods, paper"]) == {"not found"}


def test_e3_table(results):
    df = table_e3(results)
    assert df.loc[("No sharing", "drop from merging"), "VQA (vqa_score)"] == "+4.0 ± 1.4"
    assert df.loc[("Custom LN", "drop from merging"), "VQA (vqa_score)"] == "+1.0 ± 1.4"
    assert df.loc[(PAPER_ROW, "drop from merging"), "NLVR2 (accuracy)"] == "not found"


def test_e4_table(results, distances):
    pts = e4_points(results, distances)
    assert len(pts) == 4 * 2 * 3  # 4 MS models x 2 tasks x 3 metrics
    extra = frame(
        study_rows() + merged("m_s300_lam75", 300, "vqa", [1, 2, 3], method="arithmetic", knob="lam", kv=0.75)
    )
    assert e4_points(extra, distances).equals(pts)  # one merge per MS model: the recipe's setting
    df = table_e4(results, distances, n_bootstrap=100)
    row = df.loc[("l2 (paper's, our reading)", "VQA")]
    assert row["n"] == "4" and row["Spearman rho [95 % bootstrap CI]"].startswith("-1.00 [")
    assert row["paper"] == "not found" and ("cosine", "NLVR2") in df.index


def test_e5_table_beside_published(results):
    pub = load_published(ROOT / "paper" / "published")
    df = table_e5(results, pub)
    assert df.index[0] == "MA baseline" and df.index[3].startswith("recipe merge: ")
    gain = df.loc["gain over naive merging (ours, points)"]
    assert gain[("VQA", "vqa_score")] == "+10.0 ± 1.4"
    paper = df.loc["gain over naive merging (paper)"]
    assert (
        paper[("VQA", "vqa_score")] == "+3 (points or %)"
        and paper[("NLVR2", "accuracy")] == "+25 (points or %)"
    )
    assert "TIES density=0.2 · all · K=300 (ours)" in df.index  # an E6 row, marked ours


def test_methods_table(results):
    df = table_methods(results)
    assert df.loc["arithmetic (official in-place)", "method column"] == "arithmetic"
    assert "in-place" in df.loc["arithmetic (official in-place)", "computes"]


def test_writers(tmp_path):
    df = pd.DataFrame(
        {"VQA (vqa_score)": ["61.0 ± 1.0"], "note": ["a_b & 50%"]}, index=pd.Index(["m"], name="model")
    )
    tex = to_latex(df, caption="E1: test")
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "61.0 $\\pm$ 1.0" in tex and "a\\_b \\& 50\\%" in tex and "\\caption{E1: test}" in tex
    md = to_markdown(df)
    assert md.splitlines()[0].startswith("| model") and "61.0 ± 1.0" in md
    paths = write_table(df, tmp_path, "t")
    assert [p.name for p in paths] == ["t.tex", "t.md"] and paths[1].read_text() == md
    assert tex_escape("~^#") == "\\textasciitilde{}\\textasciicircum{}\\#"


def test_multiindex_markdown(results):
    md = to_markdown(table_e3(results))
    assert md.splitlines()[0].startswith("| variant / row")


def test_e5_table_keeps_the_papers_metrics_only(results):
    """Auxiliary fields (pessimistic recalls, convergence) stay in the metrics files, not in E5."""
    rows = results[results["task"] == "coco"].head(1).assign(metric="r_mean_pessimistic")
    df = table_e5(pd.concat([results, rows]))
    metrics = {m for _, m in df.columns}
    assert metrics <= set(METRIC_ORDER) and "r_mean_pessimistic" not in metrics
