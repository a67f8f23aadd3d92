"""Each figure function on the hand-made frame: a pyplot-free Figure in the paper style, and files that
are byte-identical when rebuilt, with no dates or software versions inside."""

from __future__ import annotations

import matplotlib
import pytest
from matplotlib.figure import Figure

from vlmerge_core.report.figstyle import figure_bytes, not_run_figure, save_figure
from vlmerge_core.report.figures import fig_e1_seed, fig_e2_methods, fig_e4_layers, fig_e4_scatter
from vlmerge_core.report.framework import fig_framework

FIGS = {
    "f1": lambda r, d: fig_framework(),
    "e1": lambda r, d: fig_e1_seed(r),
    "e2": lambda r, d: fig_e2_methods(r),
    "e4": lambda r, d: fig_e4_scatter(r, d),
    "e4_layers": lambda r, d: fig_e4_layers(r, d),
}


@pytest.mark.parametrize("name", list(FIGS))
def test_figure_is_pure_and_pyplot_free(name, results, distances):
    import matplotlib.pyplot as plt

    before = dict(matplotlib.rcParams)
    fig = FIGS[name](results, distances)
    assert isinstance(fig, Figure) and plt.get_fignums() == []
    assert dict(matplotlib.rcParams) == before  # the style does not leak
    assert any(ax.has_data() or ax.patches for ax in fig.axes)


def test_e1_draws_methods_and_baselines(results):
    fig = fig_e1_seed(results)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert {"interpolation 0.5", "MS (unmerged)", "MA baseline"} <= set(labels)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0 (naive)", "100", "300"]


@pytest.mark.parametrize("name", ["f1", "e2", "e4_layers"])
def test_rebuild_is_byte_identical(name, results, distances, tmp_path):
    a = save_figure(FIGS[name](results, distances), tmp_path / "a", name)
    b = save_figure(FIGS[name](results, distances), tmp_path / "b", name)
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes(), pa.name


def test_no_dates_or_versions_inside(results):
    fig = fig_e1_seed(results)
    pdf, png = figure_bytes(fig, "pdf"), figure_bytes(fig, "png")
    assert b"CreationDate" not in pdf and b"ModDate" not in pdf and b"Producer" not in pdf
    assert b"Software" not in png and b"matplotlib" not in png.lower()
    with pytest.raises(ValueError, match="'pdf' or 'png'"):
        figure_bytes(fig, "svg")


def test_missing_rows_give_not_run_placeholders(results, distances):
    none = results.iloc[:0]
    assert fig_e1_seed(none).texts[1].get_text().startswith("not run")
    assert fig_e4_scatter(results, distances.iloc[:0]).texts[1].get_text().startswith("not run")
    assert isinstance(not_run_figure("x", "y"), Figure)
