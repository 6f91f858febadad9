"""Looking inside a CoAtNet: the learned relative-bias tables and where a head attends.

Works on the paper's CoAtNet and on timm's rw models alike (any model whose
``model.stages[i].blocks`` hold ``.attn`` relative-attention modules):

* ``bias_tables(model, stage)``: every block's table ``w`` of Eq. 3, ``(heads, 2H-1, 2W-1)``;
* ``attention_maps(model, image, stage, query)``: the attention weights of each head from
  one query position of a stage's map, ``(heads, H, W)``;
* ``plot_bias_tables`` and ``plot_attention`` draw them.

Stages are numbered as in the paper: S3 is ``stage=3`` (``model.stages[2]``).
Cell ``[dy + H - 1, dx + W - 1]`` of a table is the bias from a query to the key
``dy`` rows and ``dx`` columns *before* it (offset ``i - j``): a bright cell at
``dy = +1`` makes a head look one row up.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

from coatlib.attention import RelativeAttention


def attention_layers(model: nn.Module, stage: int) -> list[RelativeAttention]:
    """The relative-attention module of every block of stage ``S{stage}``, in order."""
    blocks = model.stages[stage - 1].blocks
    layers = [b.attn for b in blocks if isinstance(getattr(b, "attn", None), RelativeAttention)]
    if not layers:
        raise ValueError(f"stage S{stage} has no relative-attention blocks: CoAtNet's are S3 and S4 (stage=3, 4)")
    return layers


def bias_tables(model: nn.Module, stage: int) -> list[torch.Tensor]:
    """Each block's learned bias table of stage ``S{stage}``: ``(heads, 2H-1, 2W-1)``, a copy."""
    return [layer.relative_bias_table.detach().float().cpu().clone() for layer in attention_layers(model, stage)]


@torch.no_grad()
def attention_maps(
    model: nn.Module, image: torch.Tensor, stage: int, query: tuple[int, int], block: int = 0
) -> torch.Tensor:
    """Where each head of block ``block`` of stage ``S{stage}`` looks from the map position
    ``query = (row, col)``: its attention weights over the ``H x W`` map, ``(heads, H, W)``
    (each map sums to 1). ``image`` is one normalised image ``(3, H_img, W_img)`` or a batch of one."""
    layer = attention_layers(model, stage)[block]
    seen = []
    handle = layer.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        model.eval()(image if image.ndim == 4 else image[None])
    finally:
        handle.remove()
    H, W = layer.map_size
    row, col = query
    if not (0 <= row < H and 0 <= col < W):
        raise ValueError(f"query {query} is outside the {H}x{W} map of S{stage}")
    weights = layer.attention_weights(seen[0])[0]  # (heads, N, N): row = query, column = key
    return weights[:, row * W + col].reshape(-1, H, W).float().cpu()


def plot_bias_tables(tables: list[torch.Tensor], title: str = "", columns: int = 12) -> plt.Figure:
    """Every head of every block as a 2-D map over the offset ``(dy, dx)``: one row of up to
    ``columns`` heads per block (wrapped), one colour scale centred on zero. (In timm's rw
    models the first block of a stage has half the heads of the others.)"""
    most = max(t.shape[0] for t in tables)
    per_row = min(columns, most)
    rows_per_block = -(-most // per_row)
    rows = rows_per_block * len(tables)
    fig, axes = plt.subplots(
        rows, per_row, figsize=(1.1 * per_row, 1.1 * rows + 0.6), squeeze=False, layout="constrained"
    )
    limit = max(t.abs().max().item() for t in tables) or 1.0
    h, w = tables[0].shape[1:]
    extent = (-(w // 2) - 0.5, w // 2 + 0.5, h // 2 + 0.5, -(h // 2) - 0.5)  # dx to the right, dy down
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    for b, table in enumerate(tables):
        for head in range(table.shape[0]):
            ax = axes[b * rows_per_block + head // per_row, head % per_row]
            image = ax.imshow(table[head].numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, extent=extent)
            ax.set_title(f"block {b}, head {head}", fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("dx", fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel("dy", fontsize=7)
    fig.colorbar(image, ax=axes, shrink=0.6, label="bias w[dy, dx]")
    fig.suptitle(title)
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
    fig, axes = plt.subplots(1, len(heads), figsize=(2.2 * len(heads), 2.6), squeeze=False, layout="constrained")
    for head, ax in zip(heads, axes[0]):
        if picture is not None:
            ax.imshow(torch.as_tensor(picture).numpy(), extent=extent)
        ax.imshow(maps[head].numpy(), cmap="magma", alpha=0.7 if picture is not None else 1.0, extent=extent)
        ax.plot(query[1], query[0], "c+", markersize=12, markeredgewidth=2)
        ax.set_title(f"head {head}", fontsize=8)
        ax.set_xlabel("column")
        ax.set_ylabel("row")
    fig.suptitle(title)
    return fig
