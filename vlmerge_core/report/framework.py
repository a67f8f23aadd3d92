"""F1: the study's framework, redrawn as a schematic (our drawing, after PAPER.md §1-§5).

The pipeline runs left to right (init -> seed pre-training of the MA model -> VL pre-training of the
MS model -> merging -> fine-tuning); the three factors the paper varies, the baselines and the
distance metrics hang below the stage they act on.
"""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from vlmerge_core.figstyle import new_figure, styled
from vlmerge_core.report.colors import PALETTE

STAGES = (
    ("Init", "BEiT (image-only MIM);\nmicro: a short\nMIM run"),
    ("Seed pre-training", "MA transformer,\n$K_{seed}$ steps $\\rightarrow W^0$"),
    (
        "VL pre-training",
        "MS: experts $v, l, vl$\nfrom $W^0$, $K_{VL}$ steps\n$\\rightarrow W^v, W^l, W^{vl}$",
    ),
    ("Merging", "experts $\\rightarrow$ one\nMA transformer"),
    ("Fine-tuning", "VQA, COCO, Flickr30k,\nNLVR2, ImageNet,\nADE20k, text"),
)
FACTORS = (
    (0, "Baselines", "MA pre-trained from the\ninit, same budget;\nMS unmerged"),
    (1, "Initialisation", "$K_{seed} = 0$: naive merge\n$K_{seed} > 0$: merge\nfrom a seed"),
    (2, "Architecture", "No sharing, Custom Attn,\nCustom FFN, Custom LN"),
    (
        3,
        "Merging method",
        "interpolation $\\alpha$\narithmetic $\\lambda$ (code:\nin place; formula)\nRegMean; ours: TIES, DARE",
    ),
    (4, "Distances", "of $\\tau^v, \\tau^l$: L2, cosine,\nSSD, TSSD; predict\nthe merged score"),
)


def _box(ax, x: float, y: float, w: float, h: float, title: str, body: str, face: str, edge: str) -> None:
    ax.add_patch(
        FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.4,rounding_size=1.2", fc=face, ec=edge, lw=1)
    )
    ax.text(x + w / 2, y + h - 1.2, title, ha="center", va="top", weight="bold", fontsize=7)
    ax.text(x + w / 2, y + h - 4.6, body, ha="center", va="top", fontsize=5.8, linespacing=1.35)


def _arrow(ax, a: tuple[float, float], b: tuple[float, float], style: str = "-|>", ls: str = "-") -> None:
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=8, lw=1, ls=ls, color="#333333"))


@styled
def fig_framework() -> Figure:
    """F1: the framework of the study as a schematic (no data)."""
    fig = new_figure(7.0, 2.6)
    ax = fig.add_subplot()
    ax.set_xlim(-1, 101)
    ax.set_ylim(4, 39)
    ax.set_axis_off()
    w, gap, top, h = 18.0, 2.5, 23.0, 14.0
    xs = [i * (w + gap) for i in range(len(STAGES))]
    for x, (title, body) in zip(xs, STAGES):
        _box(ax, x, top, w, h, title, body, "#f2f2f2", "#333333")
    for x0, x1 in zip(xs, xs[1:]):
        _arrow(ax, (x0 + w + 0.4, top + h / 2), (x1 - 0.4, top + h / 2))
    for (stage, title, body), c in zip(FACTORS, (PALETTE[7], PALETTE[0], PALETTE[2], PALETTE[1], PALETTE[4])):
        x = xs[stage]
        _box(ax, x, 6.0, w, 11.5, title, body, "white", c)
        _arrow(ax, (x + w / 2, 17.6), (x + w / 2, top - 0.6), style="-", ls=":")
    return fig
