"""Looking inside a CoAtNet: bias tables, attention, receptive fields and depthwise kernels.

Works on the paper's CoAtNet and on timm's rw models alike (any model whose
``model.stages[i].blocks`` hold ``.attn`` relative-attention modules), trained
or not:

* ``bias_tables(model, stage)``: every block's table ``w`` of Eq. 3, ``(heads, 2H-1, 2W-1)``;
* ``bias_locality(table, radius)``: how much of a head's attention its table alone puts
  within ``radius`` of the query, one number per head;
* ``attention_maps(model, image, stage, query)``: the attention weights of each head from
  one query position of a stage's map, ``(heads, H, W)``, and ``attention_locality``, the
  share of the actual attention (content and bias) near the query;
* ``distance_ratio(weights, map_size)``: how far attention reaches, the attention-weighted mean
  distance between query and key divided by the same mean under uniform attention (1: as far
  as uniform attention, 0: only the query itself); ``table_distance_ratio`` for a table alone
  and ``attention_distance_ratios`` for every relative-attention layer of a model on images;
* ``effective_receptive_field(model, images, stage)``: how strongly each input pixel moves
  the centre output of a stage (Luo et al. 2016), and ``erf_size`` its extent in pixels;
* ``depthwise_kernels(model, stage)``: the depthwise filters of a stage's MBConv blocks.

:mod:`coatlib.viz.inside` draws them.

Stages are numbered as in the paper: S3 is ``stage=3`` (``model.stages[2]``).
Cell ``[dy + H - 1, dx + W - 1]`` of a table is the bias from a query to the key
``dy`` rows and ``dx`` columns *before* it (offset ``i - j``): a bright cell at
``dy = +1`` makes a head look one row up.
"""

from __future__ import annotations

from numbers import Integral
from typing import Callable

import torch
import torch.nn as nn

from coatlib.attention import RelativeAttention, relative_position_index


def check_stage(model: nn.Module, stage: int, first: int = 1) -> int:
    """``stage`` if it numbers a stage of ``model`` (``first`` to the last, ``S1`` = 1; ``first=0`` admits
    the stem); a ``ValueError`` with the valid range otherwise: a negative number never counts from the end."""
    last = len(model.stages)
    if isinstance(stage, bool) or not isinstance(stage, Integral) or not first <= stage <= last:
        names = "0 (the stem) to " if first == 0 else ""
        raise ValueError(
            f"stage must be an int from {first} to {last} ({names}S1 to S{last}, numbered as in the paper), "
            f"got {stage!r}"
        )
    return stage


def check_block(block: int, count: int, stage: int) -> int:
    """``block`` if it numbers one of a stage's ``count`` blocks: 0 to ``count - 1``, or as a Python index
    from the end, -1 (the last) to ``-count`` (blocks count from 0, so -1 cannot be mistaken for a first
    block the way stage 0 once was for S4); a ``ValueError`` with that range otherwise."""
    if isinstance(block, bool) or not isinstance(block, Integral) or not -count <= block < count:
        raise ValueError(
            f"block must be an int from 0 to {count - 1} (S{stage} has {count} blocks; -1 is the last, "
            f"-{count} the first), got {block!r}"
        )
    return block


def attention_layers(model: nn.Module, stage: int) -> list[RelativeAttention]:
    """The relative-attention module of every block of stage ``S{stage}``, in order."""
    blocks = model.stages[check_stage(model, stage) - 1].blocks
    layers = [b.attn for b in blocks if isinstance(getattr(b, "attn", None), RelativeAttention)]
    if not layers:
        raise ValueError(f"stage S{stage} has no relative-attention blocks: CoAtNet's are S3 and S4 (stage=3, 4)")
    return layers


def bias_tables(model: nn.Module, stage: int) -> list[torch.Tensor]:
    """Each block's learned bias table of stage ``S{stage}``: ``(heads, 2H-1, 2W-1)``, a copy."""
    return [layer.relative_bias_table.detach().float().cpu().clone() for layer in attention_layers(model, stage)]


def bias_locality(table: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Share of each head's attention within ``radius`` of the query when the content is zero.

    With ``q = k = 0`` the attention of Eq. 3 is ``softmax_j(w[i - j])``: the table alone decides where a
    head looks. For every query ``i`` of the ``H x W`` map this sums the weights on the keys ``j`` with
    ``|dy| <= radius`` and ``|dx| <= radius`` (a ``(2 radius + 1)``-square around the query, as a
    ``3 x 3`` convolution sees for ``radius=1``), then averages over the queries. ``table`` is one block's
    ``(heads, 2H-1, 2W-1)``; the result is ``(heads,)``. A flat table gives the share of keys in that
    square (smaller at the border); a table that only looks at the query gives 1.
    """
    H, W = (table.shape[1] + 1) // 2, (table.shape[2] + 1) // 2
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    dy = rows.flatten()[:, None] - rows.flatten()[None]  # (N, N): query i, key j, offset i - j
    dx = cols.flatten()[:, None] - cols.flatten()[None]
    bias = table.float()[:, dy + H - 1, dx + W - 1]  # (heads, N, N)
    near = (dy.abs() <= radius) & (dx.abs() <= radius)
    return (bias.softmax(-1) * near).sum(-1).mean(-1)


@torch.no_grad()
def attention_maps(
    model: nn.Module, image: torch.Tensor, stage: int, query: tuple[int, int], block: int = 0
) -> torch.Tensor:
    """Where each head of block ``block`` of stage ``S{stage}`` looks from the map position
    ``query = (row, col)``: its attention weights over the ``H x W`` map, ``(heads, H, W)``
    (each map sums to 1). ``image`` is one normalised image ``(3, H_img, W_img)`` or a batch of one."""
    layers = attention_layers(model, stage)
    layer = layers[check_block(block, len(layers), stage)]
    H, W = layer.map_size
    row, col = query
    if not (0 <= row < H and 0 <= col < W):
        raise ValueError(f"query {query} is outside the {H}x{W} map of S{stage}")
    weights = _attention_weights(model, layer, image if image.ndim == 4 else image[None])[0]
    return weights[:, row * W + col].reshape(-1, H, W).float().cpu()  # row = query, column = key


def _attention_weights(model: nn.Module, layer: RelativeAttention, images: torch.Tensor) -> torch.Tensor:
    """Run ``model`` on ``images`` and return ``layer``'s attention weights ``(B, heads, N, N)``."""
    seen = []
    handle = layer.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        model.eval()(images)
    finally:
        handle.remove()
    return layer.attention_weights(seen[0])


@torch.no_grad()
def attention_locality(model: nn.Module, images: torch.Tensor, stage: int, radius: int = 1) -> list[torch.Tensor]:
    """``bias_locality`` with the content: the share of each head's actual attention on ``images`` within
    ``radius`` of the query (``|dy|, |dx| <= radius``), averaged over the queries and the images; one
    ``(heads,)`` tensor per block of stage ``S{stage}``."""
    shares = []
    for layer in attention_layers(model, stage):
        H, W = layer.map_size
        rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        rows, cols = rows.flatten(), cols.flatten()
        near = ((rows[:, None] - rows[None]).abs() <= radius) & ((cols[:, None] - cols[None]).abs() <= radius)
        weights = _attention_weights(model, layer, images).float().cpu()  # (B, heads, N, N)
        shares.append((weights * near).sum(-1).mean((0, 2)))
    return shares


def key_distances(map_size: tuple[int, int]) -> torch.Tensor:
    """``(N, N)`` Euclidean distance, in map positions, between query ``i`` and key ``j`` of an ``H x W`` map."""
    H, W = map_size
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    pos = torch.stack([rows.flatten(), cols.flatten()], 1).float()  # (N, 2)
    return torch.cdist(pos, pos)


def uniform_distance(map_size: tuple[int, int]) -> float:
    """Mean distance between a query and a key under uniform attention, averaged over the queries of the
    map: the distance a head with a flat table and no content reaches (the denominator of ``distance_ratio``)."""
    return key_distances(map_size).mean().item()


def distance_ratio(weights: torch.Tensor, map_size: tuple[int, int]) -> torch.Tensor:
    """How far attention reaches: ``sum_j A_ij d(i, j)``, averaged over the queries ``i``, divided by
    ``uniform_distance``.

    ``weights`` is ``(..., N, N)`` (row: query, column: key; rows sum to 1) on an ``H x W`` map,
    ``N = H W``; the result is ``(...)``: 1 for uniform attention, 0 when every query attends to itself
    only, below 1 when attention favours near keys, above 1 when it favours far ones. ``d`` is the
    Euclidean distance in map positions, so maps of different sizes compare through the ratio.
    """
    d = key_distances(map_size)
    N = d.shape[0]
    if weights.shape[-2:] != (N, N):
        raise ValueError(f"weights of shape {tuple(weights.shape)} are not (..., {N}, {N}) for a {map_size} map")
    return (weights.float() * d).sum(-1).mean(-1) / d.mean()


def table_distance_ratio(table: torch.Tensor) -> torch.Tensor:
    """``distance_ratio`` of each head's table alone, ``softmax_j(w[i - j])`` (no content): ``(heads,)``.

    ``table`` is one layer's ``(heads, 2H - 1, 2W - 1)``. A constant table gives exactly 1; a table that
    falls steeply with the offset's length gives nearly 0.
    """
    H, W = (table.shape[1] + 1) // 2, (table.shape[2] + 1) // 2
    bias = table.float().flatten(1)[:, relative_position_index(H, W)]  # (heads, N, N)
    return distance_ratio(bias.softmax(-1), (H, W))


def relative_attention_layers(model: nn.Module) -> list[tuple[str, RelativeAttention]]:
    """Every relative-attention layer of ``model``, in order, named ``S3.0`` (stage S3, block 0) for a
    CoAtNet (ViT-Rel's single stage is ``S1-S4``), by its module name otherwise."""
    layers = []
    for s, stage in enumerate(getattr(model, "stages", [])):
        for b, block in enumerate(getattr(stage, "blocks", [])):
            if isinstance(getattr(block, "attn", None), RelativeAttention):
                layers.append((f"{getattr(stage, 'name', f'S{s + 1}')}.{b}", block.attn))
    if not layers:
        layers = [(name, m) for name, m in model.named_modules() if isinstance(m, RelativeAttention)]
    return layers


@torch.no_grad()
def attention_distance_ratios(model: nn.Module, images: torch.Tensor, batch_size: int = 20) -> list[torch.Tensor]:
    """``distance_ratio`` of the actual attention (content and table) of every layer of
    ``relative_attention_layers(model)`` on ``images`` ``(B, 3, H, W)``, averaged over the images: one
    ``(heads,)`` tensor per layer. One forward pass per batch of images serves every layer."""
    layers = [layer for _, layer in relative_attention_layers(model)]
    sums = [torch.zeros(layer.num_heads) for layer in layers]
    seen: dict[int, torch.Tensor] = {}
    handles = [
        layer.register_forward_pre_hook(lambda module, args, i=i: seen.__setitem__(i, args[0]))
        for i, layer in enumerate(layers)
    ]
    was_training = model.training
    try:
        model.eval()
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size])
            for i, layer in enumerate(layers):
                weights = layer.attention_weights(seen[i])  # (b, heads, N, N)
                sums[i] += distance_ratio(weights, layer.map_size).sum(0).cpu()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [s / len(images) for s in sums]


def stage_output(model: nn.Module, images: torch.Tensor, stage: int) -> torch.Tensor:
    """The feature map after stage ``S{stage}`` (0 is the stem, up to the last stage): ``(B, D, H, W)``."""
    x = model.stem(images)
    for block in model.stages[: check_stage(model, stage, first=0)]:
        x = block(x)
    return x


def effective_receptive_field(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, stage: int | None = None
) -> torch.Tensor:
    """How much each input pixel moves the centre of a feature map, averaged over ``images`` (Luo et al. 2016).

    The feature map is ``stage_output(model, images, stage)`` for a CoAtNet, or ``model(images)`` when
    ``stage`` is None (any function from images ``(B, C, H, W)`` to maps ``(B, D, h, w)``, e.g. one
    convolution). Each image's gradient of the centre position ``(h // 2, w // 2)`` of the map, summed
    over its ``D`` channels, with respect to the input is taken in absolute value, summed over the input
    channels and averaged over the images; the result ``(H, W)`` is scaled to sum to 1. BatchNorm runs
    in eval mode, so the images do not see each other.
    """
    if isinstance(model, nn.Module):
        model.eval()
    x = images.detach().clone().requires_grad_(True)
    out = model(x) if stage is None else stage_output(model, x, stage)
    h, w = out.shape[-2:]
    out[:, :, h // 2, w // 2].sum().backward()
    field = x.grad.abs().sum(1).mean(0)
    return field / field.sum()


def erf_size(field: torch.Tensor, mass: float = 0.9) -> int:
    """Side in pixels of the smallest square around the field's centre that holds ``mass`` of ``field``.

    The square is centred on the pixel nearest the field's centre of mass (a stage's centre output sits
    a few pixels off the image centre: S3's position 4 of 8 covers pixels 64 to 79 of 128) and grows
    one pixel each side at a time (odd sides ``1, 3, 5, ...``), clipped at the image border; a field
    that never reaches ``mass`` inside the image gives the image's larger side.
    """
    H, W = field.shape
    total = field.sum()
    cy = round((field.sum(1) * torch.arange(H)).sum().item() / total.item())
    cx = round((field.sum(0) * torch.arange(W)).sum().item() / total.item())
    for r in range(max(H, W)):
        inside = field[max(cy - r, 0) : cy + r + 1, max(cx - r, 0) : cx + r + 1].sum()
        if inside >= (mass - 1e-6) * total:  # 1e-6: float rounding of the sums, for mass=1
            return 2 * r + 1
    return max(H, W)


def depthwise_kernels(model: nn.Module, stage: int) -> list[torch.Tensor]:
    """The depthwise filters of every MBConv block of stage ``S{stage}``: ``(channels, k, k)`` each, a copy."""
    convs = [  # the paper's block: .dw = ConvNormAct, [0] the conv; timm's rw block: .dw holds it
        next(m for m in b.dw.modules() if isinstance(m, nn.Conv2d))
        for b in model.stages[check_stage(model, stage) - 1].blocks
        if hasattr(b, "dw")
    ]
    if not convs:
        raise ValueError(f"stage S{stage} has no MBConv blocks with a depthwise convolution")
    return [conv.weight.detach().float().cpu()[:, 0].clone() for conv in convs]
