"""Figures for the book: a CoAtNet's stage layout, and the layout study of the paper's section 2.2.

``stage_table(model)`` gives the stages of a built CoAtNet (any size, any
layout, the paper's or timm's rw variants, on any device including ``meta``):
its stage plan (:func:`coatlib.models.coatnet.stage_plan`), the stem, then S1..S4
as runs of MBConv ("C") or Transformer ("T") blocks with their width D and
feature-map size, the rows of the paper's Table 3. ``draw_stages(model)`` draws them;
``plot_layout_study(record)`` and ``plot_ideal_world(record)`` draw the layout study of
``coatlib.studies.layouts``: test accuracy against data size and against training
loss, and the online loss of the ideal world.

Every figure has labelled axes and an opaque white background, so that it
reads the same in the book's light and dark themes.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch.nn as nn
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from coatlib.diagrams import COLOURS, KIND_COLOUR
from coatlib.flops import count_params
from coatlib.models.coatnet import BLOCK_NAMES, CoAtNetBase, StageSpec
from coatlib.models.coatnet_rw import RwCoAtNet

LEGEND = {
    "stem": "stem S0: two 3x3 convs (ViT-Rel: one 16x16 patch conv)",
    "C": "MBConv (depthwise conv + SE)",
    "T": "TFMRel (relative attention + FFN)",
    "head": "head: pool, LayerNorm, tanh pre-logits, classifier",
}


def stage_table(model: nn.Module) -> list[StageSpec]:
    """The stages of a CoAtNet ``model`` (the paper's or an rw variant), stem first: its stage plan
    at its image size, one :class:`~coatlib.models.coatnet.StageSpec` per run of equal blocks.

    A stage whose blocks change kind (CoAtNet-6/7 open S3 with MBConv blocks) gives one row per
    run. Raises ``TypeError`` for a model that is not a CoAtNet.
    """
    if not isinstance(model, CoAtNetBase):
        raise TypeError(
            f"stage_table needs a CoAtNet (from coatlib.create_model('coatnet_...')), got {type(model).__name__}"
        )
    return list(model.plan)


def _opaque(fig: plt.Figure, *axes: plt.Axes) -> None:
    fig.patch.set_facecolor("white")
    fig.patch.set_alpha(1.0)
    for ax in axes:
        ax.set_facecolor("white")


def draw_stages(
    model: nn.Module, ax: plt.Axes | None = None, title: str | None = None, legend: bool = True
) -> plt.Figure:
    """Draw the stage layout of a CoAtNet: one bar per run of blocks, as high as its width D
    (log scale), coloured by block type and labelled with the number of blocks; the x axis
    names each stage and its feature-map size. Returns the figure."""
    rows = stage_table(model)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.15 * (len(rows) + 1) + 1.5, 3.4), layout="constrained")
    fig = ax.figure
    _opaque(fig, ax)
    kinds = [r.kind for r in rows] + ["head"]
    widths = [r.width for r in rows] + [rows[-1].width]
    xs = range(len(kinds))
    colours = [COLOURS[KIND_COLOUR[k]] for k in kinds]
    bars = ax.bar(xs, widths, width=0.8, color=colours, edgecolor="black", linewidth=0.6)
    for bar, row in zip(bars, rows):
        ax.annotate(
            f"{row.blocks}x {BLOCK_NAMES[row.kind]}\nD={row.width}",
            (bar.get_x() + 0.4, bar.get_height()),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.annotate(
        "norm, pool,\nFC" if isinstance(model, RwCoAtNet) else "pool, LN,\ntanh, FC",
        (bars[-1].get_x() + 0.4, bars[-1].get_height()),
        xytext=(0, 3),
        textcoords="offset points",
        ha="center",
        va="bottom",
        fontsize=8,
    )
    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_ylim(min(widths) / 2, max(widths) * 4)
    ax.set_xticks(list(xs), [f"{r.stage}\n{r.size[0]}x{r.size[1]}" for r in rows] + ["head\n1x1"])
    ax.set_xlabel("stage (feature-map size)")
    ax.set_ylabel("channels D (log scale)")
    if title is None:
        H, W = model.image_size
        title = f"layout {model.layout}, {H}x{W} input, {count_params(model) / 1e6:.2f}M parameters"
    ax.set_title(title, fontsize=10)
    if legend:
        stage_legend(ax, [k for k in KIND_COLOUR if k in kinds])
    return fig


def stage_legend(ax: plt.Axes, kinds=tuple(KIND_COLOUR), **kwargs):
    """Add the legend of ``draw_stages``' colours for ``kinds`` (default: all) to ``ax``; returns it."""
    handles = [Patch(facecolor=COLOURS[KIND_COLOUR[k]], edgecolor="black", label=LEGEND[k]) for k in kinds]
    return ax.legend(handles=handles, **{"fontsize": 7, "loc": "upper left", "facecolor": "white", **kwargs})


# The five layouts in the Okabe-Ito colour-blind-safe palette, each with its own marker: five hues
# that stay apart (blue, green, orange, black, pink; no two neighbours of the same family), so that
# C-C-T-T and C-T-T-T, which often lie close together, read apart by colour and by marker.
LAYOUT_STYLE = {
    "ViT-Rel": {"color": "#CC79A7", "marker": "D"},
    "C-C-C-C": {"color": "#0072B2", "marker": "o"},
    "C-C-C-T": {"color": "#009E73", "marker": "s"},
    "C-C-T-T": {"color": "#E69F00", "marker": "^"},
    "C-T-T-T": {"color": "#000000", "marker": "v"},
}
COLUMN_WIDTH = 7.5  # inches: the book's text column


def plot_layout_study(record: dict, task: str = "task") -> plt.Figure:
    """The real world of a ``coatlib.studies.layouts`` record in two panels, each point the mean over
    seeds with its 95% interval (``coatlib.studies.stats``; test accuracy with the test set's own noise):

    1. test accuracy against the number of training images (generalization at each data size);
    2. test accuracy against the final training loss, one line per layout through its sizes
       (the paper's criterion: at equal training loss, the higher point generalizes better).
    """
    from coatlib.models.coatnet import LAYOUTS
    from coatlib.studies.layouts import study_table

    rows = [r for r in study_table(_check_study(record)) if r["task"] == task and r["world"] == "real"]
    if not rows:
        raise ValueError(f"the record has no finished real-world runs of {task!r}")
    fig, (acc_ax, fit_ax) = plt.subplots(1, 2, figsize=(COLUMN_WIDTH, 4.0), layout="constrained")
    _opaque(fig, acc_ax, fit_ax)
    for layout in LAYOUTS:
        mine = [r for r in rows if r["layout"] == layout]
        if not mine:
            continue
        style = {**LAYOUT_STYLE[layout], "markersize": 7, "capsize": 3, "label": layout, "linewidth": 1.5}
        sizes = [r["size"] for r in mine]
        acc = [r["test_acc"] for r in mine]
        loss = [r["train_loss"] for r in mine]
        drawn = [
            acc_ax.errorbar(sizes, [a.mean for a in acc], yerr=_bars(acc), **style),
            # through the sizes in order, thin, so that the crossing error bars stay readable
            fit_ax.errorbar(
                [x.mean for x in loss],
                [a.mean for a in acc],
                xerr=_bars(loss),
                yerr=_bars(acc),
                **{**style, "linewidth": 0.8, "linestyle": ":"},
            ),
        ]
        for container in drawn:  # error bars lighter than the points they belong to
            for bar in container.lines[2]:
                bar.set_alpha(0.45)
    sizes = sorted({r["size"] for r in rows})
    acc_ax.set_xscale("log")
    acc_ax.set_xticks(sizes, [f"{n:,}" for n in sizes], minor=False)
    acc_ax.set_xticks([], minor=True)
    acc_ax.set(xlabel="training images (log scale)", ylabel="test accuracy")
    fit_ax.set(xlabel="final training loss (lower: fits better)", ylabel="test accuracy")
    fit_ax.invert_xaxis()
    for ax in (acc_ax, fit_ax):
        ax.grid(alpha=0.3)
    # one legend for both panels, under them, where it hides no point
    fig.legend(
        *acc_ax.get_legend_handles_labels(),
        loc="outside lower center",
        ncols=5,
        fontsize=10,
        title=f"mean of {rows[0]['seeds']} seeds with its 95% interval",
        title_fontsize=10,
        handletextpad=0.3,
        columnspacing=1.0,
    )
    return fig


def plot_ideal_world(record: dict) -> plt.Figure:
    """Online training loss against steps in the ideal world (fresh images at every step), one line per
    layout (the mean over seeds; the band is the seeds' range), with chance, ``ln(90)``, dashed."""
    import math

    from coatlib.models.coatnet import LAYOUTS
    from coatlib.studies.layouts import study_runs

    runs = study_runs(_check_study(record), "task", "ideal")
    if not any(runs.values()):
        raise ValueError("the record has no finished ideal-world runs")
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 3.4), layout="constrained")
    _opaque(fig, ax)
    for layout in LAYOUTS:
        curves = [r["loss_curve"] for r in runs[layout]]
        if not curves:
            continue
        steps = runs[layout][0]["steps"]
        x = [(i + 0.5) * steps / len(curves[0]) for i in range(len(curves[0]))]
        mean = [sum(c) / len(c) for c in zip(*curves)]
        style = LAYOUT_STYLE[layout]
        # markers at staggered steps, so that curves lying on each other (at chance) stay told apart
        offset = LAYOUTS.index(layout)
        ax.plot(
            x, mean, color=style["color"], marker=style["marker"], markevery=(offset, 5), markersize=7, label=layout
        )
        ax.fill_between(
            x, [min(c) for c in zip(*curves)], [max(c) for c in zip(*curves)], color=style["color"], alpha=0.2
        )
    ax.axhline(math.log(90), color="black", linestyle="--", linewidth=1, label="chance (ln 90)")
    ax.set(xlabel="optimiser step (each on fresh images)", ylabel="training loss = test loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=10, ncols=2)
    return fig


def _check_study(record: dict) -> dict:
    if not isinstance(record, dict) or record.get("experiment") != "layout_study" or not record.get("runs"):
        raise ValueError(
            "needs a record of coatlib.studies.layouts.layout_study with finished runs "
            "(coatlib.studies.layouts.study_results() reads the committed one)"
        )
    return record


def _bars(intervals) -> list[list[float]]:
    """Error bars from intervals: distances below and above the mean."""
    return [[i.mean - i.low for i in intervals], [i.high - i.mean for i in intervals]]


# --- the book's figure style -------------------------------------------------------------------

# The Okabe-Ito palette (colour-blind safe), each colour paired with its own marker, so that a line
# reads without its colour too.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
BOOK_STYLE = {
    "figure.figsize": (COLUMN_WIDTH, 3.6),
    "figure.dpi": 150,  # 7.5 in at 150 dpi: 1,125 pixels for a column of about 780 CSS px
    "savefig.dpi": 150,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "figure.constrained_layout.use": True,
    "font.size": 11,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "lines.markersize": 5,
    "axes.prop_cycle": plt.cycler(color=PALETTE, marker=MARKERS),
}


def use_book_style() -> None:
    """Draw every later figure for the book's column: 7.5 in wide at 150 dpi, text of at least 10 pt,
    the colour-blind-safe :data:`PALETTE` with one marker per colour, an opaque white background.

    Each chapter calls it once in its import cell; it only sets ``matplotlib.rcParams``."""
    plt.rcParams.update(BOOK_STYLE)
