"""Looking inside a CoAtNet, drawn: bias tables, attention maps, receptive fields and depthwise
kernels, as measured by :mod:`coatlib.inspection`."""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from coatlib.inspection import erf_size


def plot_bias_tables(
    tables: list[torch.Tensor], title: str = "", columns: int = 12, labels: list[str] | None = None
) -> plt.Figure:
    """Every head of every block as a 2-D map over the offset ``(dy, dx)``: one panel of the figure per
    block, titled by its label, with rows of up to ``columns`` heads (each map titled by its head's
    number), and one colour scale centred on zero for all of them. ``labels`` names the tables (default
    ``block 0``, ``block 1`` ...), e.g. to put a stage before and after training in one figure. The
    figure fits the book's column (7.5 in) whatever the number of heads. (In timm's rw models the first
    block of a stage has half the heads of the others.)"""
    labels = labels or [f"block {b}" for b in range(len(tables))]
    per_row = min(columns, max(t.shape[0] for t in tables))
    rows = [-(-t.shape[0] // per_row) for t in tables]  # rows of maps per block
    cell = min(1.1, 6.4 / per_row)  # inches per map: at most 7.5 in with the colour bar
    heights = [r * (cell + 0.25) + 0.35 for r in rows]
    fig = plt.figure(figsize=(cell * per_row + 1.1, sum(heights) + (0.4 if title else 0.1)), layout="constrained")
    maps_side, bar_side = fig.subfigures(1, 2, width_ratios=[cell * per_row, 1.1])
    panels = maps_side.subfigures(len(tables), 1, height_ratios=heights, squeeze=False)[:, 0]
    limit = max(t.abs().max().item() for t in tables) or 1.0
    h, w = tables[0].shape[1:]
    extent = (-(w // 2) - 0.5, w // 2 + 0.5, h // 2 + 0.5, -(h // 2) - 0.5)  # dx to the right, dy down
    for panel, label, table, n_rows in zip(panels, labels, tables, rows):
        panel.suptitle(label, fontsize=10, x=0.01, ha="left")
        axes = panel.subplots(n_rows, per_row, squeeze=False)
        for ax in axes.flat[table.shape[0] :]:  # no map here
            ax.remove()
        for head in range(table.shape[0]):
            ax = axes.flat[head]
            image = ax.imshow(table[head].numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, extent=extent)
            ax.set_title(f"head {head}" if head == 0 else str(head), fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_frame_on(False)
            if head + per_row >= table.shape[0]:  # nothing below it
                ax.set_xlabel("dx", fontsize=10)
            if head % per_row == 0:
                ax.set_ylabel("dy", fontsize=10)
    # one colour bar for the whole figure: every map shares its scale
    bar = bar_side.add_axes((0.15, 0.15, 0.18, 0.7))
    bar_side.colorbar(image, cax=bar, label="bias w[dy, dx]")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def plot_attention(
    maps: torch.Tensor,
    query: tuple[int, int],
    picture: torch.Tensor | None = None,
    heads: list[int] | None = None,
    title: str = "",
) -> plt.Figure:
    """The attention of the heads ``heads`` (default: all) of ``maps`` ``(heads, H, W)`` from the map
    position ``query`` (marked with a cross), over ``picture`` (RGB ``(H_img, W_img, 3)`` in [0, 1]) if given."""
    heads = list(range(maps.shape[0])) if heads is None else list(heads)
    H, W = maps.shape[1:]
    extent = (-0.5, W - 0.5, H - 0.5, -0.5)  # map positions at integer coordinates
    side = min(2.2, 7.3 / len(heads))  # the figure fits the book's column (7.5 in)
    fig, axes = plt.subplots(
        1, len(heads), figsize=(side * len(heads), side + 0.6), squeeze=False, layout="constrained"
    )
    for head, ax in zip(heads, axes[0]):
        if picture is not None:
            ax.imshow(torch.as_tensor(picture).numpy(), extent=extent)
        ax.imshow(maps[head].numpy(), cmap="magma", alpha=0.7 if picture is not None else 1.0, extent=extent)
        ax.plot(query[1], query[0], "c+", markersize=12, markeredgewidth=2)
        ax.set_title(f"head {head}", fontsize=10)
        ax.set_xlabel("column")
        ax.set_ylabel("row")
    fig.suptitle(title)
    return fig


def plot_receptive_fields(fields: dict[str, torch.Tensor], title: str = "", columns: int = 4) -> plt.Figure:
    """One panel per named field ``(H, W)`` (from ``effective_receptive_field``), each with its 90% square
    (``erf_size``) in the title. Each field is divided by its peak, so that one colour scale, 0 to 1,
    shows a concentrated field (S1) and a spread-out one (S4) alike."""
    rows = -(-len(fields) // columns)
    per_row = min(columns, len(fields))
    fig, axes = plt.subplots(
        rows, per_row, figsize=(2.4 * per_row, 2.4 * rows + 0.5), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[len(fields) :]:
        ax.set_visible(False)
    for ax, (name, field) in zip(axes.flat, fields.items()):
        image = ax.imshow((field / field.max()).numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"{name}: 90% in {erf_size(field)} px", fontsize=10)
        ax.set_xlabel("column (pixel)", fontsize=10)
        ax.set_ylabel("row (pixel)", fontsize=10)
        ax.tick_params(labelsize=10)
    fig.colorbar(image, ax=axes, shrink=0.7, label="|gradient| / its peak")
    fig.suptitle(title)
    return fig


def plot_depthwise_kernels(
    kernels: list[torch.Tensor], channels: int = 12, title: str = "", labels: list[str] | None = None
) -> plt.Figure:
    """The first ``channels`` depthwise filters of each block (one row per block, named by ``labels``,
    default ``block 0`` ...) and, in the first column, their mean absolute value over all the block's
    channels; one colour scale centred on zero for the filters, the mean on the same scale."""
    labels = labels or [f"block {b}" for b in range(len(kernels))]
    fig, axes = plt.subplots(
        len(kernels),
        channels + 1,
        figsize=(0.8 * (channels + 1) + 1.2, 0.9 * len(kernels) + 0.7),
        squeeze=False,
        layout="constrained",
    )
    limit = max(k[:channels].abs().max().item() for k in kernels)
    k = kernels[0].shape[-1]
    extent = (-(k // 2) - 0.5, k // 2 + 0.5, k // 2 + 0.5, -(k // 2) - 0.5)  # offsets from the centre tap
    for b, kernel in enumerate(kernels):
        panels = [("mean |w|", kernel.abs().mean(0))] + [(f"ch {c}", kernel[c]) for c in range(channels)]
        for ax, (name, values) in zip(axes[b], panels):
            image = ax.imshow(values.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, extent=extent)
            ax.set_title(f"{labels[b]}, {name}" if name.startswith("mean") else name, fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[b, 0].set_ylabel("dy", fontsize=10)
    for ax in axes[-1]:
        ax.set_xlabel("dx", fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.7, label="weight")
    fig.suptitle(title)
    return fig
