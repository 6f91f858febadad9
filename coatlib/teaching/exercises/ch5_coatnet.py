"""Checks for the exercises of chapter 5: coatnet."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

import coatlib.attention
from coatlib.attention import resize_table
from coatlib.blocks import TransformerBlock
from coatlib.models.coatnet import CONFIGS, CoAtNet, StageSpec, stage_plan
from coatlib.teaching.exercises.checking import (
    Forbidden,
    Wrong,
    call_reader,
    compare_number,
    compare_tensors,
    function_name,
    randn,
    register_check,
)

NO_MODEL = (Forbidden(CoAtNet, "__init__", "CoAtNet(...) (building the model)"),)
NO_BLOCK = (Forbidden(TransformerBlock, "__init__", "TransformerBlock(...) (building the block)"),)


@register_check
def check_bias_params(fn: Callable) -> None:
    """``fn(config, image_size)``: the number of relative-bias parameters of a CoAtNet built from
    ``config`` (a ``CoAtNetConfig``: ``depths``, ``widths``, ``head_dim``) for square images of
    ``image_size`` pixels."""
    for name, size in [
        ("coatnet_0", 224),
        ("coatnet_0", 384),
        ("coatnet_2", 512),
        ("coatnet_5", 512),
        ("coatnet_pico", 64),
    ]:
        config = CONFIGS[name]
        runs = [run for run in stage_plan(config, "C-C-T-T", size) if run.kind == "T"]  # S3 and S4

        def total(per_block: Callable[[StageSpec, int, int], int], runs: list[StageSpec] = runs) -> int:
            """The sum over the Transformer runs of ``per_block(run, H, W)`` times the run's blocks."""
            return sum(run.blocks * per_block(run, *run.size) for run in runs)

        want = total(lambda run, h, w: run.heads * (2 * h - 1) * (2 * w - 1))
        hints = [
            (
                total(lambda run, h, w: run.width // 32 * (2 * h - 1) * (2 * w - 1)),
                "the number of heads is width / config.head_dim; not every configuration has heads of 32.",
            ),
            (
                total(lambda run, h, w: run.heads * h * w),
                "one entry per offset: an H x W map has (2H-1) x (2W-1) offsets, not H x W.",
            ),
            (
                sum(run.heads * (2 * run.size[0] - 1) * (2 * run.size[1] - 1) for run in runs),
                "every block of a stage has its own tables: multiply by the depth.",
            ),
            (
                total(lambda run, h, w: run.heads * (2 * h - 1) * (2 * w - 1), runs[:1]),
                "S4's Transformer blocks have bias tables too.",
            ),
            (
                total(lambda run, h, w: run.heads * (2 * h + 1) * (2 * w + 1)),
                "offsets run from -(H-1) to H-1: 2H - 1 of them.",
            ),
        ]
        got = call_reader(fn, config, size, forbidden=NO_MODEL)
        compare_number(got, want, f"{function_name(fn)}(CONFIGS[{name!r}], {size})", hints)


@register_check
def check_transformer_params(fn: Callable) -> None:
    """``fn(in_dim, out_dim, map_size, head_dim)``: parameters of one CoAtNet Transformer block
    (``coatlib.blocks.TransformerBlock``) from ``in_dim`` to ``out_dim`` channels on a
    ``map_size = (H, W)`` map, with heads of ``head_dim`` channels: the shortcut projection (when the
    width changes), two LayerNorms, q/k/v and output projections, one bias table per head and the FFN."""
    for cin, cout, (h, w), hd in [
        (192, 384, (14, 14), 32),
        (384, 384, (14, 14), 32),
        (384, 768, (7, 7), 32),
        (32, 64, (4, 6), 16),
    ]:
        with torch.device("meta"):
            block = TransformerBlock(cin, cout, (h, w), stride=1 if cin == cout else 2, head_dim=hd)
        want = sum(p.numel() for p in block.parameters())
        heads, table, full = cout // hd, (2 * h - 1) * (2 * w - 1), cout // hd * (2 * h - 1) * (2 * w - 1)
        shortcut = cin * cout + cout if cin != cout else 0
        hints = [
            (want - full, "add the relative bias tables: one table of (2H - 1)(2W - 1) scalars per head."),
            (
                want - full + heads * h * w,
                "a table holds one scalar per offset i - j: (2H - 1)(2W - 1) of them, not H W.",
            ),
            (
                want - full + table,
                f"every head has its own table: multiply by the number of heads, out_dim / head_dim = {heads}.",
            ),
            (want - full + 8 * table, f"the number of heads is out_dim / head_dim = {heads}, not a fixed 8."),
            (
                want - shortcut,
                "when the width changes, the shortcut projects Pool(x) with a linear layer (in_dim x out_dim weights + bias).",
            ),
            (
                want - (8 * cout + 4) * cout + (8 * cout + 4) * cin,
                "the FFN expands the block's output width by 4: out_dim -> 4 out_dim -> out_dim.",
            ),
        ]
        got = call_reader(fn, cin, cout, (h, w), hd, forbidden=NO_BLOCK)
        compare_number(got, want, f"{function_name(fn)}({cin}, {cout}, {(h, w)}, {hd})", hints)


@register_check
def check_resize_table(fn: Callable) -> None:
    """``fn(table, map_size)``: a relative-bias table ``(heads, 2H-1, 2W-1)`` made for an ``H x W`` map,
    resized for a ``map_size = (H', W')`` map to ``(heads, 2H'-1, 2W'-1)`` by bilinear interpolation with
    the corner entries (the largest offsets) kept in place, as ``coatlib.attention.resize_table`` does."""
    g = torch.Generator().manual_seed(7)
    for heads, (h, w), (h2, w2) in [(2, (7, 7), (12, 12)), (3, (4, 6), (8, 9)), (1, (14, 14), (7, 7))]:
        table = randn(g, heads, 2 * h - 1, 2 * w - 1)
        size = (2 * h2 - 1, 2 * w2 - 1)
        want = resize_table(table, size)
        hints = [
            (
                F.interpolate(table[None], size=size, mode="bilinear", align_corners=False)[0],
                "keep the corners in place (align_corners=True): the largest offsets of the old map become the largest of the new.",
            ),
            (
                F.interpolate(table[None], size=size, mode="nearest")[0],
                "interpolate bilinearly, not by copying the nearest entry.",
            ),
            (
                F.interpolate(table[None], size=size, mode="bicubic", align_corners=True)[0],
                "interpolate bilinearly, not bicubically.",
            ),
            (
                F.interpolate(table[None], size=size[::-1], mode="bilinear", align_corners=True)[0],
                "the new size is (2H' - 1, 2W' - 1) in that order: rows from H', columns from W'.",
            ),
        ]
        call = f"{function_name(fn)}(table of shape {tuple(table.shape)}, {(h2, w2)})"
        library = Forbidden(coatlib.attention, "resize_table", "coatlib's resize_table")
        got = call_reader(fn, table, (h2, w2), forbidden=[library])
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (heads, h2, w2):
            raise Wrong(
                f"{call} returned shape {tuple(got.shape)}; the table of an H' x W' map has one entry per offset: "
                f"(heads, 2H' - 1, 2W' - 1) = {(heads, *size)}."
            )
        compare_tensors(got, want, call, ("head", "row", "col"), hints)
