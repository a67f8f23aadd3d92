"""Each table function on the hand-made frame: rows, spreads over replicates, the knob picked on
validation, E3's drop rows (MS - that row's merge), E4's permutation p-values, the paper's columns,
and the LaTeX (booktabs) and Markdown writers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from conftest import DESIGN, frame, merged, ms, study_rows

from vlmerge_core.report.e0 import table_e0, table_e0_scores, table_e0_zeroshot
from vlmerge_core.report.e1 import table_e1
from vlmerge_core.report.e2 import best_of_methods, default_configs, table_e2
from vlmerge_core.report.e3 import table_e3, table_orderings
from vlmerge_core.report.e4 import e4_correlations, e4_points, table_e4
from vlmerge_core.report.e5 import table_e5
from vlmerge_core.report.e6 import table_methods
from vlmerge_core.report.load import Study
from vlmerge_core.report.published import load_published
from vlmerge_core.report.schema import METRIC_ORDER
from vlmerge_core.report.tableio import PAPER_ROW, tex_escape, to_latex, to_markdown, write_table

ROOT = Path(__file__).resolve().parents[2]


def test_e0_tables(results, chance):
    df = table_e0(Study(results=results, chance=chance, design=DESIGN))
    assert list(df.index) == ["VQA", "NLVR2"] and set(df["valid stand-in"]) == {"valid"}
    assert df.loc["VQA", "untrained"] == "25.0 [23.0, 27.0]"
    assert df.loc["VQA", "best pre-trained (ft)"] == "63.8 ± 0.8 (n = 3) MA K=300"  # units: replicates
    assert df.loc["VQA", "random init (ft)"] == "41.0 ± 1.0 (n = 3)"  # units: fine-tuning seeds
    scores = table_e0_scores(results)
    assert list(scores.index)[:3] == ["untrained (random init, no fine-tuning)", "random init", "init (MIM)"]
    assert "MA K=200 (units: pt_seed)" in scores.index
    pre = pd.DataFrame({"model_id": ["init", "init", "ma100_r0"], "kind": ["init", "init", "ma"],
                        "seed_steps": pd.array([None, None, 100], dtype="Int64"), "variant": ["", "", ""],
                        "pt_seed": pd.array([None, None, 0], dtype="Int64"),
                        "steps": pd.array([100, 200, 100], dtype="Int64"), "metric": ["rsum"] * 3,
                        "value": [1.0, 2.0, 30.0]})  # fmt: skip
    zs = table_e0_zeroshot(pre)
    assert zs.loc["init", "rsum"] == "2.0" and zs.loc["ma100_r0", "pt_seed"] == "0"  # last step kept


def test_e1_table_over_replicates(results):
    df = table_e1(results, DESIGN)
    assert df.loc["interpolation ratio=0.5 · all · K=0 (naive)", "VQA (vqa_score)"] == "51.0 ± 1.0 (3)"
    assert df.loc["MA baseline (paper's) (200 pre-training steps)", "VQA (vqa_score)"] == "61.8 ± 0.8 (3)"
    assert "compute-matched MA (300 pre-training steps)" in df.index
    assert df.loc["drop from merging (MS - merged), K=0", "VQA (vqa_score)"].startswith("+14.0 [")
    assert set(df.loc[PAPER_ROW]) == {"not found"}
    assert not any("arithmetic" in i for i in df.index)  # only E1 merges


def _sweep(rows: list[dict]) -> list[dict]:
    """A knob sweep on the first recipe replicate (VQA only): ratio 0.25 is best on test, 0.75 on val."""
    rows = [r for r in rows if not (r["model_id"] == "merged_all_s100_r0_interpolation_ratio0.5")]
    rows += merged("all_s100_r0", "vqa", 60.0, exps="E1;E2;E4;E5", val=57.0)
    rows += merged("all_s100_r0", "nlvr2", 60.0, exps="E1;E2;E4;E5")
    rows += merged("all_s100_r0", "vqa", 70.0, kv=0.25, exps="E2", val=50.0)  # best on test, worst on val
    rows += merged("all_s100_r0", "vqa", 55.0, kv=0.75, exps="E2", val=58.0)
    return rows


def test_e2_picks_the_knob_on_validation():
    results = frame(_sweep(study_rows()))
    picks = best_of_methods(results, DESIGN)["interpolation"]
    assert picks["vqa"].knob == "ratio=0.75" and picks["vqa"].n_knobs == 3  # never the test-best 0.25
    assert (
        picks["vqa"].test.mean == 55.0 and picks["nlvr2"].knob == "ratio=0.5" and picks["nlvr2"].n_knobs == 1
    )
    df = table_e2(results, DESIGN)
    assert df.loc["interpolation", "VQA (vqa_score)"] == "55.0 (1) (ratio=0.75, picked on val of 3)"
    assert df.loc["RegMean", "NLVR2 (accuracy)"].endswith("(alpha=1)")  # RegMean on every task
    assert set(df.loc["paper: best alpha / lambda / alpha_R"]) == {"not found"}
    assert default_configs(results, DESIGN)["interpolation"].endswith("|0.5|")  # default knob: most coverage


def _e3_rows() -> list[dict]:
    """E3 by hand: the LN variant (one replicate) and No sharing (three), each merged by two methods."""
    e3 = (
        "merged_all_s100_r0_interpolation_ratio0.5",
        "merged_all_s100_r0_arithmetic_lam0.75",
    )  # as the plan tags
    rows = [{**r, "experiments": r["experiments"] + ";E3"} if r["model_id"] in e3 and r["task"] == "vqa" else r
            for r in study_rows() if r["variant"] != "ln"]  # fmt: skip
    rows += ms("ln_s100_r0", "vqa", 70.0, "E3")
    rows += merged("ln_s100_r0", "vqa", 69.0, exps="E3;E4")
    rows += merged("ln_s100_r0", "vqa", 66.5, "arithmetic", 0.75, "E3")
    for r in range(3):
        rows += merged(f"all_s100_r{r}", "vqa", 0.0, "ties", 0.5, "E3")  # a third method, on "all" only
    return rows


def test_e3_drop_rows_are_ms_minus_their_own_merge():
    df = table_e3(frame(_e3_rows()))
    col = "VQA (vqa_score)"
    assert (
        df.loc[("Custom LN", "drop from merging: MS - interpolation ratio=0.5 · ln · K=100"), col]
        == "+1.0 (n = 1)"
    )
    assert df.loc[("Custom LN", "drop from merging: MS - arithmetic (official in-place) lam=0.75 · ln · K=100"),
                  col] == "+3.5 (n = 1)"  # fmt: skip
    # No sharing: MS (66, 66.5, 67) minus each merge per replicate, never another row's merge
    drops = {i[1]: df.loc[i, col] for i in df.index if i[0] == "No sharing" and i[1].startswith("drop")}
    assert drops["drop from merging: MS - interpolation ratio=0.5 · all · K=100"].startswith("+5.3 [")
    assert drops["drop from merging: MS - arithmetic (official in-place) lam=0.75 · all · K=100"].startswith(
        "+10.8 ["
    )
    assert drops["drop from merging: MS - TIES density=0.5 · all · K=100 (ours)"].startswith("+66.5 [")
    rows = list(df.index)
    for i, (var, name) in enumerate(rows):  # each drop row follows its own merge row
        if name.startswith("drop from merging: MS - "):
            assert rows[i - 1] == (var, name.removeprefix("drop from merging: MS - "))
    assert df.loc[(PAPER_ROW, "drop from merging"), "NLVR2 (accuracy)"] == "not found"


def test_orderings(results):
    order = table_orderings(frame(_e3_rows()), DESIGN)
    assert order.loc["VQA (vqa_score)", "methods, measured (best first)"].startswith("RegMean")
    assert order.loc["VQA (vqa_score)", "variants, measured (smallest drop first)"].startswith("Custom LN")
    assert set(order["methods, paper"]) == {"not found"}


def test_e4_points_and_table(results, distances):
    pts = e4_points(results, distances, DESIGN)
    grid = pts[pts["in_grid"] & (pts["metric"] == "l2_rms") & (pts["task"] == "vqa")]
    assert len(grid) == 10 and set(grid["group"]) >= {"recipe replicate", "Custom LN", "MS RNG seed", "LR x2"}
    assert len(pts[(pts["metric"] == "l2_rms") & (pts["task"] == "vqa")]) == 16  # E1 + E4 for the partial
    df = table_e4(e4_correlations(pts, n_bootstrap=100))
    row = df.loc[("l2_rms (paper's, our reading)", "VQA")]
    assert row["n (E4 grid)"] == "10" and row["n (E1 + E4)"] == "16" and row["paper"] == "not found"
    assert row["Spearman rho"].startswith("-0.") and "[" in row["Spearman rho"]  # bootstrap from 8 points
    assert "exact (all 3628800 permutations)" in row["p (two-sided, permutation)"]
    assert "within strata" in row["p (partial)"]


def test_e5_table_beside_published(results):
    pub = load_published(ROOT / "paper" / "published")
    df = table_e5(results, DESIGN, pub)
    assert df.index[0] == "recipe merge (300 steps)" and df.index[1] == "naive merge (200 steps)"
    assert "MA baseline (paper's) (200 steps)" in df.index and "compute-matched MA (300 steps)" in df.index
    gain = df.loc["gain over naive merging (ours: recipe - naive, paired)"]
    assert gain[("VQA", "vqa_score")] == "+10.2 [+8.3, +12.1]"
    assert df.loc["recipe - compute-matched MA (paired)"][("VQA", "vqa_score")] == "-2.7 [-4.1, -1.2]"
    paper = df.loc["gain over naive merging (paper)"]
    assert (
        paper[("VQA", "vqa_score")] == "+3 (points or %)"
        and paper[("NLVR2", "accuracy")] == "+25 (points or %)"
    )
    assert "RegMean alpha=1 · all · K=100" in df.index


def test_e5_table_keeps_the_papers_metrics_only(results):
    """Auxiliary fields (pessimistic recalls, convergence) stay in the metrics files, not in E5."""
    rows = results[results["task"] == "vqa"].head(1).assign(metric="vqa_pessimistic")
    df = table_e5(pd.concat([results, rows]), DESIGN)
    assert {m for _, m in df.columns} <= set(METRIC_ORDER)


def test_methods_table(results):
    df = table_methods(results)
    assert df.loc["arithmetic (official in-place)", "method column"] == "arithmetic"
    assert (
        df.loc["interpolation", "configurations"] == "10"
        and "in-place" in df.loc["arithmetic (official in-place)", "computes"]
    )


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
    assert to_markdown(table_e3(frame(_e3_rows()))).splitlines()[0].startswith("| variant / row")
