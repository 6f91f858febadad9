"""A CoAtNet's stage layout, as a table and as a figure.

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

from coatlib.flops import count_params
from coatlib.models.coatnet import BLOCK_NAMES, CoAtNetBase, StageSpec
from coatlib.models.coatnet_rw import RwCoAtNet
from coatlib.viz.diagrams import COLOURS, KIND_COLOUR
from coatlib.viz.style import opaque

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
    opaque(fig, ax)
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
            fontsize=10,
        )
    ax.annotate(
        "norm, pool,\nFC" if isinstance(model, RwCoAtNet) else "pool, LN,\ntanh, FC",
        (bars[-1].get_x() + 0.4, bars[-1].get_height()),
        xytext=(0, 3),
        textcoords="offset points",
        ha="center",
        va="bottom",
        fontsize=10,
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
    return ax.legend(handles=handles, **{"fontsize": 10, "loc": "upper left", "facecolor": "white", **kwargs})
