"""Each figure function on the hand-made frame: a pyplot-free Figure in the paper style that draws what
was measured (replicates, the knob picked on validation, every E4 point with rho and p), and files
that are byte-identical when rebuilt, with no dates or software versions inside."""

from __future__ import annotations

import matplotlib
import pytest
from conftest import DESIGN, frame, merged, study_rows
from matplotlib.figure import Figure

from vlmerge_core.figstyle import figure_bytes, not_run_figure, save_figure
from vlmerge_core.report.e4 import e4_correlations, e4_points
from vlmerge_core.report.figures import fig_e1_seed, fig_e2_methods
from vlmerge_core.report.figures_e4 import fig_e4_layers, fig_e4_scatter
from vlmerge_core.report.framework import fig_framework


def _sweep(rows):
    rows = [
        r
        for r in rows
        if r["model_id"] != "merged_all_s100_r0_interpolation_ratio0.5" or r["task"] != "nlvr2"
    ]
    rows += merged("all_s100_r0", "nlvr2", 60.0, exps="E1;E2;E4;E5", val=59.0)
    for kv, test, val in ((0.25, 58.0, 60.0), (0.75, 57.0, 55.0)):
        rows += merged("all_s100_r0", "nlvr2", test, kv=kv, exps="E2", val=val)
    return rows


def _e4(r, d):
    pts = e4_points(r, d, DESIGN)
    return fig_e4_scatter(pts, e4_correlations(pts))


FIGS = {
    "f1": lambda r, d: fig_framework(),
    "e1": lambda r, d: fig_e1_seed(r, DESIGN),
    "e2": lambda r, d: fig_e2_methods(frame(_sweep(study_rows())), DESIGN),
    "e4": _e4,
    "e4_layers": lambda r, d: fig_e4_layers(r, d, DESIGN),
}


@pytest.mark.parametrize("name", list(FIGS))
def test_figure_is_pure_and_pyplot_free(name, results, distances):
    import matplotlib.pyplot as plt

    before = dict(matplotlib.rcParams)
    fig = FIGS[name](results, distances)
    assert isinstance(fig, Figure) and plt.get_fignums() == []
    assert dict(matplotlib.rcParams) == before  # the style does not leak
    assert any(ax.has_data() or ax.patches for ax in fig.axes)


def test_e1_draws_replicates_and_both_ma_controls(results):
    fig = fig_e1_seed(results, DESIGN)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert {"replicates", "MA baseline (paper's) (200 steps)", "compute-matched MA (300 steps)"} <= set(
        labels
    )
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0 (naive)", "100", "200"]
    points = [c for c in fig.axes[0].collections if c.get_offsets().shape[0] == 3]
    assert len(points) >= 3  # three replicates at each K_seed


def test_e2_draws_only_the_swept_panels():
    fig = fig_e2_methods(frame(_sweep(study_rows())), DESIGN)
    drawn = [ax for ax in fig.axes if ax.axison]
    assert len(drawn) == 1 and drawn[0].get_title() == "interpolation\nNLVR2"
    assert "picked on val" in drawn[0].get_legend_handles_labels()[1]
    assert fig_e2_methods(frame(study_rows()), DESIGN).texts[1].get_text().startswith("not run")


def test_e4_panels_carry_rho_and_exact_or_mc_p(results, distances):
    fig = _e4(results, distances)
    titles = [ax.get_title() for ax in fig.axes]
    assert "l2_rms · VQA\nrho -" in titles[0] and "(exact), n 10" in titles[0]  # every pairing at n = 10
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == 10


@pytest.mark.parametrize("name", ["f1", "e2", "e4_layers"])
def test_rebuild_is_byte_identical(name, results, distances, tmp_path):
    a = save_figure(FIGS[name](results, distances), tmp_path / "a", name)
    b = save_figure(FIGS[name](results, distances), tmp_path / "b", name)
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes(), pa.name


def test_no_dates_or_versions_inside(results):
    fig = fig_e1_seed(results, DESIGN)
    pdf, png = figure_bytes(fig, "pdf"), figure_bytes(fig, "png")
    assert b"CreationDate" not in pdf and b"ModDate" not in pdf and b"Producer" not in pdf
    assert b"Software" not in png and b"matplotlib" not in png.lower()
    with pytest.raises(ValueError, match="'pdf' or 'png'"):
        figure_bytes(fig, "svg")


def test_missing_rows_give_not_run_placeholders(results, distances):
    assert fig_e1_seed(results.iloc[:0], DESIGN).texts[1].get_text().startswith("not run")
    assert _e4(results, distances.iloc[:0]).texts[1].get_text().startswith("not run")
    assert isinstance(not_run_figure("x", "y"), Figure)
