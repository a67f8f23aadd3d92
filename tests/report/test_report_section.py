"""report_section: one ``## `` section of a generated REPORT.md, as notebook 09 shows it."""

import pytest

from vlmerge_core.report import report_section


def test_report_section_is_the_text_up_to_the_next_heading(tmp_path):
    report = tmp_path / "REPORT.md"
    report.write_text("# Title\n\n## Verdicts\nv\n## The claims\nc1\n### C1\nx\n## Artefacts\na\n")
    assert report_section(report, "The claims") == "c1\n### C1\nx"
    assert report_section(report, "Artefacts") == "a\n"
    with pytest.raises(KeyError, match="no section '## Missing'.*The claims"):
        report_section(report, "Missing")
