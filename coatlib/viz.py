"""Figures for the book: a CoAtNet's stage layout, and the layout study of the paper's section 3.2.

``stage_table(model)`` reads the stages of a built CoAtNet (any size, any
layout, on any device including ``meta``): stem, then S1..S4 as runs of
MBConv ("C") or Transformer ("T") blocks with their width D and feature-map
size, the rows of the paper's Table 3. ``draw_stages(model)`` draws them;
``plot_layout_sweep(record)`` draws the layout study of
``coatlib.experiments.layout_sweep``: accuracy and training loss against data
size, and accuracy at equal training loss.

Every figure has labelled axes and an opaque white background, so that it
reads the same in the book's light and dark themes.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch.nn as nn
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from coatlib.blocks import TransformerBlock
from coatlib.flops import count_params

COLORS = {"stem": "#9e9e9e", "C": "#4c72b0", "T": "#dd8452", "head": "#6b6b6b"}
BLOCK_NAMES = {"stem": "conv", "C": "MBConv", "T": "TFMRel", "head": "head"}
LEGEND = {
    "stem": "stem S0: two 3x3 convs (ViT-Rel: one 16x16 patch conv)",
    "C": "MBConv (depthwise conv + SE)",
    "T": "TFMRel (relative attention + FFN)",
    "head": "head: pool, LayerNorm, tanh pre-logits, classifier",
}


@dataclass(frozen=True)
class Segment:
    """A run of equal blocks: one row of the paper's Table 3 (a stage, or part of one)."""

    stage: str  # "S0" .. "S4"; "S1-S4" for ViT-Rel's single run of Transformer blocks
    kind: str  # "stem", "C" (MBConv) or "T" (Transformer with relative attention)
    blocks: int  # L
    width: int  # D, channels after the run
    size: tuple[int, int]  # feature-map height and width in the run


def _kind_and_width(block: nn.Module) -> tuple[str, int]:
    """``("C", channels)`` for an MBConv (its project conv), ``("T", channels)`` for a Transformer
    block (its second LayerNorm)."""
    if isinstance(block, TransformerBlock):
        return "T", block.norm2.normalized_shape[0]
    return "C", block.project.out_channels


def stage_table(model: nn.Module) -> list[Segment]:
    """The stages of a CoAtNet ``model`` as :class:`Segment` rows, stem first.

    A stage whose blocks change kind or width (CoAtNet-6/7 open S3 with MBConv
    blocks) gives one row per run. Raises ``TypeError`` for a model that is not
    a CoAtNet.
    """
    if not all(hasattr(model, a) for a in ("stages", "stem", "layout", "image_size")):
        raise TypeError(
            f"stage_table needs a CoAtNet (from coatlib.create_model('coatnet_...')), got {type(model).__name__}"
        )
    H, W = model.image_size
    vit = model.layout == "ViT-Rel"
    if vit:  # one 16x16 patch conv
        rows = [Segment("S0", "stem", 1, model.stem.out_channels, (H // 16, W // 16))]
    else:  # two 3x3 convs, the first with stride 2
        rows = [Segment("S0", "stem", 2, model.stem[1].out_channels, (H // 2, W // 2))]
    for s, stage in enumerate(model.stages, start=1):
        size = (H // 16, W // 16) if vit else (H // 2 ** (s + 1), W // 2 ** (s + 1))
        for block in stage.blocks:
            kind, width = _kind_and_width(block)
            last = rows[-1]
            if last.stage == stage.name and last.kind == kind and last.width == width:
                rows[-1] = Segment(stage.name, kind, last.blocks + 1, width, size)
            else:
                rows.append(Segment(stage.name, kind, 1, width, size))
    return rows


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
    bars = ax.bar(xs, widths, width=0.8, color=[COLORS[k] for k in kinds], edgecolor="black", linewidth=0.6)
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
        "pool, LN,\ntanh, FC",
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
        stage_legend(ax, [k for k in COLORS if k in kinds])
    return fig


def stage_legend(ax: plt.Axes, kinds=tuple(COLORS), **kwargs):
    """Add the legend of ``draw_stages``' colours for ``kinds`` (default: all) to ``ax``; returns it."""
    handles = [Patch(facecolor=COLORS[k], edgecolor="black", label=LEGEND[k]) for k in kinds]
    return ax.legend(handles=handles, **{"fontsize": 7, "loc": "upper left", "facecolor": "white", **kwargs})


LAYOUT_COLORS = {
    "ViT-Rel": "#8c8c8c",
    "C-C-C-C": "#4c72b0",
    "C-C-C-T": "#55a868",
    "C-C-T-T": "#dd8452",
    "C-T-T-T": "#c44e52",
}


def plot_layout_sweep(record: dict, data: str | None = None, axes=None) -> plt.Figure:
    """Draw a ``coatlib.experiments.layout_sweep`` record for one data set (default: its task) in three
    panels, each point the mean over seeds with its standard error as a bar:

    1. test accuracy against the number of training images (generalisation at each data size);
    2. final training loss against the number of training images (capacity: how low each layout fits);
    3. test accuracy against final training loss, one line per layout through its data sizes
       (the paper's criterion: at equal training loss, the higher point generalises better).
    """
    from coatlib.experiments import PAPER_ORDER, sweep_summary

    runs = record.get("runs") if isinstance(record, dict) else None
    if not runs:
        raise ValueError("plot_layout_sweep needs a record of coatlib.experiments.layout_sweep with finished runs")
    data = data or record["settings"]["task"]["data"]
    rows = [r for r in sweep_summary(record) if r["data"] == data]
    if not rows:
        raise ValueError(f"the record has no finished runs on {data!r}")
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
    fig = axes[0].figure
    _opaque(fig, *axes)
    for layout in PAPER_ORDER:
        mine = [r for r in rows if r["layout"] == layout]
        if not mine:
            continue
        style = {"color": LAYOUT_COLORS[layout], "marker": "o", "markersize": 4, "capsize": 3, "label": layout}
        sizes = [r["size"] for r in mine]
        acc, acc_se = [r["test_acc"] for r in mine], [r["test_acc_se"] for r in mine]
        loss, loss_se = [r["train_loss"] for r in mine], [r["train_loss_se"] for r in mine]
        axes[0].errorbar(sizes, acc, yerr=acc_se, **style)
        axes[1].errorbar(sizes, loss, yerr=loss_se, **style)
        axes[2].errorbar(loss, acc, xerr=loss_se, yerr=acc_se, **style)
    seeds = sorted({r["seeds"] for r in rows})
    all_sizes = sorted({r["size"] for r in rows})
    for ax in axes[:2]:
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_sizes, [f"{n:,}" for n in all_sizes], minor=False)
        ax.set_xticks([], minor=True)
        ax.set_xlabel("training images (log scale)")
    axes[0].set(ylabel="test accuracy", title=f"{data}: test accuracy")
    axes[1].set(ylabel="final training loss (eval mode)", title=f"{data}: training loss (capacity)")
    axes[2].set(
        xlabel="final training loss (falling to the right)",
        ylabel="test accuracy",
        title=f"{data}: test accuracy at equal training loss",
    )
    axes[2].invert_xaxis()
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, title=f"mean ± SE, {'/'.join(map(str, seeds))} seeds", title_fontsize=8)
    return fig
