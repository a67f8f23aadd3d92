"""The paper stage end to end on a small synthetic study (the new contract: replicates, design.json,
val and test rows, an E4 grid): every artefact written, byte-identical on a rebuild, verdicts in the
summary, the README's generated Markdown, numbers in prose only from the generated macros."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vlmerge_core.report.build import ARTEFACTS
from vlmerge_core.report.macros import macro_name, write_macros
from vlmerge_core.report.stage import run_paper_stage
from vlmerge_core.report.synthetic import make_study
from vlmerge_core.report.templates import REPORT_HTML, REPORT_MD


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    study = make_study(root / "study", tasks=("vqa", "coco"), n_ft_seeds=2)
    assert (study / "design.json").exists()
    outs = [run_paper_stage(profile="smoke", metrics_dir=str(study), out_dir=str(root / d),
                            metrics_out=str(root / f"{d}.json")) for d in ("a", "b")]  # fmt: skip
    return root, outs


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_every_artefact_is_written(built):
    root, (summary, _) = built
    files = _files(root / "a")
    for art in ARTEFACTS:
        exts = ("tex", "md") if art.kind == "table" else ("pdf", "png")
        for ext in exts:
            assert f"{art.kind}s/{art.name}.{ext}" in files
    for name in ("REPORT.md", "report.html", "generated/numbers.tex", "generated/numbers.json",
                 "generated/numbers.md", "generated/summary.json", "generated/verdicts.md", "generated/e0.md",
                 "published/published.csv", "tables/claim_c1.md"):  # fmt: skip
        assert name in files, name
    assert set(summary["artefacts"].values()) == {"built"}
    assert summary["config"] == {
        "formats": ["pdf", "png"],
        "n_bootstrap": 50,
        "rng_seed": 0,
        "c2_margin": 1.0,
    }


def test_rebuild_is_byte_identical(built):
    root, (a, b) = built
    fa, fb = _files(root / "a"), _files(root / "b")
    assert fa.keys() == fb.keys()
    assert [k for k in fa if fa[k] != fb[k]] == []
    assert (root / "a.json").read_bytes() == (root / "b.json").read_bytes()


def test_summary_and_report(built):
    root, (summary, _) = built
    assert set(summary["verdicts"]) == {"C1", "C2", "C3", "C4", "C5"}
    assert summary["verdicts"]["C1"]["verdict"] == "reproduced"  # the synthetic study's seed effect
    assert (
        summary["verdicts"]["C5"]["parts"]["architecture"]["verdict"] == "inconclusive"
    )  # n = 1 per variant
    assert set(summary["verdicts"]["C2"]["parts"]) == {"vs MA baseline (paper's)", "vs compute-matched MA"}
    assert json.loads((root / "a.json").read_text())["verdicts"] == summary["verdicts"]
    report = (root / "a" / "REPORT.md").read_text()
    numbers = json.loads((root / "a" / "generated" / "numbers.json").read_text())
    assert (
        report.index("## E0")
        < report.index("### C1")
        < report.index("### C5")
        < report.index("## Open items")
    )
    assert f"### C1: Seed pre-training makes merging work: **{numbers['c1.verdict']}**" in report
    assert numbers["c1.vqa.gain"] in report and "nan" not in report.lower()
    assert "`arithmetic`" in report and "arithmetic_formula" in report and "not found" in report
    tex = (root / "a" / "generated" / "numbers.tex").read_text()
    assert f"\\newcommand{{\\{macro_name('c1.vqa.gain')}}}" in tex
    html = (root / "a" / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and 'src="figures/e1_seed.png"' in html
    assert "<li><b>inconclusive</b>: every measured task is inconclusive" in html


def test_generated_markdown_for_the_readme(built):
    """verdicts.md and e0.md come from the metrics only, and the rule below the verdicts is the code's."""
    from vlmerge_core.report.outcomes import rule_markdown

    root, (summary, _) = built
    verdicts = (root / "a" / "generated" / "verdicts.md").read_text()
    assert verdicts.startswith("<!-- generated") and verdicts.endswith(rule_markdown())
    for cid, v in summary["verdicts"].items():
        assert f"| {cid}  " in verdicts or f"| {cid} " in verdicts
        assert v["verdict"] in verdicts
    e0 = (root / "a" / "generated" / "e0.md").read_text()
    assert "| VQA " in e0 and "valid stand-in" in e0
    assert (root / "a" / "tables" / "e0_validity.md").read_text() in e0
    report = (root / "a" / "REPORT.md").read_text()
    assert rule_markdown() in report


def test_templates_type_no_numbers():
    for template in (REPORT_MD, REPORT_HTML):
        prose = re.sub(r"{{.*?}}|{%.*?%}|<style>.*?</style>|<[^>]+>", " ", template, flags=re.S)
        names = r"\b[ECF]\d\b|§\d|\b0-100\b|^\d\. |utf-8|\bE0-E6\b|C1-C5|ViT-B/16|issue \d+|Figure 1"  # names, not numbers
        prose = re.sub(names, " ", prose, flags=re.M)
        assert not re.findall(r"\d", prose), [
            prose[m.start() - 30 : m.end() + 10] for m in re.finditer(r"\d", prose)
        ]


def test_missing_metrics_are_not_run(tmp_path):
    summary = run_paper_stage(
        profile="smoke", metrics_dir=str(tmp_path / "none"), out_dir=str(tmp_path / "p")
    )
    assert {v["verdict"] for v in summary["verdicts"].values()} == {"not run"}
    assert set(summary["artefacts"].values()) == {"not run", "built"}  # F1 needs no metrics
    assert summary["artefacts"]["figure:f1_framework"] == "built"
    assert (tmp_path / "p" / "tables" / "e1_seed.md").read_text().count("not run") == 1
    assert (tmp_path / "p" / "tables" / "claim_c1.md").read_text().count("not run") == 1
    report = (tmp_path / "p" / "REPORT.md").read_text()
    assert "results.csv" in report and "design.json" in report


def test_macro_names():
    assert macro_name("c1.vqa.gain") == "vlmCOneVqaGain"
    assert macro_name("e0.bar.chance_sd") == "vlmEZeroBarChanceSd"
    with pytest.raises(ValueError, match="both map to"):
        write_macros({"a.b": "1", "a_b": "2"}, "/nonexistent")
