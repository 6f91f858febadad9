"""Checks for the exercises of chapter 5: coatnet."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from coatlib.attention import resize_table
from coatlib.blocks import TransformerBlock
from coatlib.teaching.exercises._base import (
    Wrong,
    _call,
    _check,
    _compare,
    _compare_number,
    _name,
    _randn,
)


@_check
def check_coatnet_head(fn: Callable) -> None:
    """``fn(model, features)``: the head of a CoAtNet ``model`` applied to the output of its last stage,
    ``features`` of shape ``(B, D, H, W)`` (as ``model.forward_features`` returns it):
    global average pooling over the positions, ``model.norm`` (LayerNorm), ``model.pre_logits`` (linear
    and tanh) and ``model.head`` (the classifier). Returns the logits ``(B, classes)``."""
    from coatlib.registry import create_model

    g = torch.Generator().manual_seed(6)
    with torch.random.fork_rng():  # building the model must not move the reader's random numbers
        torch.manual_seed(6)
        model = create_model("coatnet_pico", num_classes=7, image_size=64).eval()
    with torch.no_grad():
        model.norm.weight.copy_(1 + _randn(g, 128))  # a LayerNorm that is not the identity
        model.norm.bias.copy_(_randn(g, 128))
        features = 3 * _randn(g, 2, 128, 2, 2) + 1
        want = model.head(model.pre_logits(model.norm(features.mean((2, 3)))))
        hints = [
            (model.head(model.pre_logits(features.mean((2, 3)))), "apply model.norm (the LayerNorm) to the pooled features."),
            (model.head(model.pre_logits(model.norm(features.transpose(1, 3)).mean((1, 2)))), "pool first, then normalise: the LayerNorm acts on the pooled vector."),
            (model.head(model.norm(features.mean((2, 3)))), "apply model.pre_logits (linear + tanh) before the classifier."),
            (model.head(model.pre_logits(model.norm(features.amax((2, 3))))), "the pooling is an average over the positions, not a maximum."),
        ]
        _compare(_call(fn, model, features), want, f"{_name(fn)}(model, features of shape (2, 128, 2, 2))", ("image", "class"), hints)


@_check
def check_transformer_params(fn: Callable) -> None:
    """``fn(in_dim, out_dim, map_size, head_dim)``: parameters of one CoAtNet Transformer block
    (``coatlib.blocks.TransformerBlock``) from ``in_dim`` to ``out_dim`` channels on a
    ``map_size = (H, W)`` map, with heads of ``head_dim`` channels: the shortcut projection (when the
    width changes), two LayerNorms, q/k/v and output projections, one bias table per head and the FFN."""
    for cin, cout, (h, w), hd in [(192, 384, (14, 14), 32), (384, 384, (14, 14), 32), (384, 768, (7, 7), 32), (32, 64, (4, 6), 16)]:
        with torch.device("meta"):
            block = TransformerBlock(cin, cout, (h, w), stride=1 if cin == cout else 2, head_dim=hd)
        want = sum(p.numel() for p in block.parameters())
        heads, table, full = cout // hd, (2 * h - 1) * (2 * w - 1), cout // hd * (2 * h - 1) * (2 * w - 1)
        shortcut = cin * cout + cout if cin != cout else 0
        hints = [
            (want - full, "add the relative bias tables: one table of (2H - 1)(2W - 1) scalars per head."),
            (want - full + heads * h * w, "a table holds one scalar per offset i - j: (2H - 1)(2W - 1) of them, not H W."),
            (want - full + table, f"every head has its own table: multiply by the number of heads, out_dim / head_dim = {heads}."),
            (want - full + 8 * table, f"the number of heads is out_dim / head_dim = {heads}, not a fixed 8."),
            (want - shortcut, "when the width changes, the shortcut projects Pool(x) with a linear layer (in_dim x out_dim weights + bias)."),
            (want - (8 * cout + 4) * cout + (8 * cout + 4) * cin, "the FFN expands the block's output width by 4: out_dim -> 4 out_dim -> out_dim."),
        ]
        _compare_number(_call(fn, cin, cout, (h, w), hd), want, f"{_name(fn)}({cin}, {cout}, {(h, w)}, {hd})", hints)


@_check
def check_resize_table(fn: Callable) -> None:
    """``fn(table, map_size)``: a relative-bias table ``(heads, 2H-1, 2W-1)`` made for an ``H x W`` map,
    resized for a ``map_size = (H', W')`` map to ``(heads, 2H'-1, 2W'-1)`` by bilinear interpolation with
    the corner entries (the largest offsets) kept in place, as ``coatlib.attention.resize_table`` does."""
    g = torch.Generator().manual_seed(7)
    for heads, (h, w), (h2, w2) in [(2, (7, 7), (12, 12)), (3, (4, 6), (8, 9)), (1, (14, 14), (7, 7))]:
        table = _randn(g, heads, 2 * h - 1, 2 * w - 1)
        size = (2 * h2 - 1, 2 * w2 - 1)
        want = resize_table(table, size)
        hints = [
            (F.interpolate(table[None], size=size, mode="bilinear", align_corners=False)[0],
             "keep the corners in place (align_corners=True): the largest offsets of the old map become the largest of the new."),
            (F.interpolate(table[None], size=size, mode="nearest")[0], "interpolate bilinearly, not by copying the nearest entry."),
            (F.interpolate(table[None], size=size, mode="bicubic", align_corners=True)[0], "interpolate bilinearly, not bicubically."),
        ]
        call = f"{_name(fn)}(table of shape {tuple(table.shape)}, {(h2, w2)})"
        got = _call(fn, table, (h2, w2))
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (heads, h2, w2):
            raise Wrong(f"{call} returned shape {tuple(got.shape)}; the table of an H' x W' map has one entry per offset: "
                        f"(heads, 2H' - 1, 2W' - 1) = {(heads, *size)}.")
        _compare(got, want, call, ("head", "row", "col"), hints)
