"""Checks for the exercises of chapter 5b: a CoAtNet trained on ImageNet."""

from __future__ import annotations

from typing import Callable

import torch

from coatlib.attention import RelativeAttention
from coatlib.teaching.exercises.checking import Wrong, call_reader, function_name, randn, register_check


def _looked_at_by_a_layer(table: torch.Tensor, query: tuple[int, int]) -> tuple[int, int]:
    """The key a query attends to most in a relative-attention layer with random weights whose content
    is removed (zero q, k) and whose one head holds ``table``: measured, not computed from the formula."""
    H, W = (table.shape[0] + 1) // 2, (table.shape[1] + 1) // 2
    layer = RelativeAttention(8, head_dim=8, map_size=(H, W)).eval()
    with torch.no_grad():
        layer.qkv.weight.zero_()
        layer.qkv.bias.zero_()
        layer.relative_bias_table.copy_(table[None])
        weights = layer.attention_weights(torch.randn(1, 8, H, W))[0, 0]
    j = int(weights[query[0] * W + query[1]].argmax())
    return j // W, j % W


@register_check
def check_attended_key(fn: Callable) -> None:
    """``fn(table, query)``: with the content removed, the key ``(row, col)`` that the query at
    ``query = (row, col)`` attends to most, for one head's table ``(2H-1, 2W-1)`` of an ``H x W`` map
    whose largest entry is unique (the offset ``i - j`` with ``i`` the query)."""
    g = torch.Generator().manual_seed(11)
    for H, W, query in [(14, 14, (5, 7)), (7, 7, (0, 0)), (6, 9, (2, 8)), (5, 4, (4, 1))]:
        table = randn(g, 2 * H - 1, 2 * W - 1) - 20.0
        for dy, dx in [(0, 1), (-2, 1), (1, -3)]:  # the offset of the one large entry
            row, col = query[0] - dy, query[1] - dx
            if not (0 <= row < H and 0 <= col < W):
                continue
            peaked = table.clone()
            peaked[dy + H - 1, dx + W - 1] = 10.0
            want = _looked_at_by_a_layer(peaked, query)
            call = f"{function_name(fn)}(table, {query}) for a {H}x{W} map, the large entry at offset {(dy, dx)}"
            got = call_reader(fn, peaked.clone(), query)
            if isinstance(got, torch.Tensor):
                got = got.tolist()
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                raise Wrong(f"{call} returned {got!r}; return a pair (row, col).")
            got = tuple(int(v) for v in got)
            if got != want:
                hints = {
                    (
                        query[0] + dy,
                        query[1] + dx,
                    ): "the offset is i - j with i the query: j = i - offset, not i + offset.",
                    (want[1], want[0]): "rows and columns are swapped: return (row, col).",
                    (dy + H - 1, dx + W - 1): "that is the entry of the table; the key is the query minus the offset.",
                }
                hint = hints.get(got)
                raise Wrong(f"{call} returned {got}, expected {want}." + (f" Hint: {hint}" if hint else ""))
