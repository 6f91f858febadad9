"""Checks for the exercises of chapter 3: relative attention."""

from __future__ import annotations

from typing import Callable

import torch

import coatlib.attention
from coatlib.attention import relative_position_index
from coatlib.teaching.exercises._solutions import bias_with_clipping
from coatlib.teaching.exercises.checking import (
    Forbidden,
    call_reader,
    compare_tensors,
    function_name,
    randn,
    register_check,
)

NO_INDEX = (Forbidden(coatlib.attention, "relative_position_index", "coatlib's relative_position_index"),)


def _offset_hint(want: torch.Tensor, what: str):
    """A hint function: every index is off by the same number."""

    def hint(got: torch.Tensor, bad: torch.Tensor) -> str | None:
        shift = (got - want).unique()
        if len(shift) == 1:
            return f"every index is off by {shift.item():+d}: {what}"
        return None

    return hint


@register_check
def check_relative_index(fn: Callable) -> None:
    """``fn(H, W)``: the ``(N, N)`` integer index, ``N = H*W``, of the offset ``pos(i) - pos(j)`` into a
    flattened ``(2H-1) x (2W-1)`` table: ``(dy + H - 1) * (2W - 1) + (dx + W - 1)``."""
    for H, W in [(3, 3), (2, 4), (4, 3), (1, 5)]:
        want = relative_position_index(H, W)
        ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        dy = ys.flatten()[:, None] - ys.flatten()[None, :]
        dx = xs.flatten()[:, None] - xs.flatten()[None, :]
        hints = [
            (
                (dy + H - 1) * W + (dx + W - 1),
                "rows of the table are 2W - 1 entries long, not W: with stride W distinct offsets share an entry.",
            ),
            (want.T, "the bias is w[i - j]: use pos(i) - pos(j) (query minus key), not pos(j) - pos(i)."),
            (
                dy * (2 * W - 1) + dx,
                "offsets run from -(H-1) to H-1: add H - 1 to dy and W - 1 to dx so that indices start at 0.",
            ),
            ((dy + H - 1) * (2 * H - 1) + (dx + W - 1), "the row stride is 2W - 1 (the table's width), not 2H - 1."),
            (
                (dx + W - 1) * (2 * H - 1) + (dy + H - 1),
                "rows and columns are swapped: the row of the table is dy + H - 1, its column dx + W - 1.",
            ),
            _offset_hint(
                want, "offset (-(H-1), -(W-1)) is entry 0: add exactly H - 1 to dy and W - 1 to dx (an off-by-one)."
            ),
        ]
        got = call_reader(fn, H, W, forbidden=NO_INDEX)
        compare_tensors(got, want, f"{function_name(fn)}({H}, {W})", ("query", "key"), hints)


@register_check
def check_clipped_bias(fn: Callable) -> None:
    """``fn(table, H, W)``: the relative bias ``(heads, N, N)``, ``N = H*W``, of an ``H x W`` map from
    a table ``(heads, 2K+1, 2L+1)`` that only holds the offsets ``-K..K`` and ``-L..L``: the offset
    ``pos(i) - pos(j)`` is clipped into that range in each axis, as Shaw et al. clip theirs."""
    g = torch.Generator().manual_seed(3)
    for heads, K, L, H, W in [(2, 1, 1, 4, 4), (1, 2, 1, 3, 5), (3, 2, 3, 5, 4), (1, 3, 3, 3, 3)]:
        table = randn(g, heads, 2 * K + 1, 2 * L + 1)
        want = bias_with_clipping(table, H, W)
        rows, cols = torch.arange(H * W) // W, torch.arange(H * W) % W
        dy, dx = rows[:, None] - rows[None, :], cols[:, None] - cols[None, :]
        hints = [
            (
                bias_with_clipping(table.flip(-2, -1), H, W),
                "the bias is w[i - j]: use pos(i) - pos(j) (query minus key), not pos(j) - pos(i).",
            ),
            (
                table[:, dy.clamp(-K, K), dx.clamp(-L, L)],
                "offsets run from -K to K: add K (and L) so that offset -K is entry 0; negative indices wrap around.",
            ),
            (
                table[:, (dy % (2 * K + 1)), (dx % (2 * L + 1))],
                "clip the offsets into -K..K with clamp; wrapping them around (%) gives far tokens a near token's bias.",
            ),
            (
                table[:, dy.clamp(-K + 1, K - 1) + K, dx.clamp(-L + 1, L - 1) + L],
                "you clipped to -(K-1)..K-1: the table holds the offsets -K..K, so clamp(-K, K), then add K.",
            ),
            (
                table[:, dx.clamp(-K, K) + K, dy.clamp(-L, L) + L] if K == L else table[:, :0],
                "rows and columns are swapped: dy (the row offset) indexes the table's rows.",
            ),
        ]
        call = f"{function_name(fn)}(table of shape {tuple(table.shape)}, {H}, {W})"
        compare_tensors(call_reader(fn, table, H, W, forbidden=NO_INDEX), want, call, ("head", "query", "key"), hints)


@register_check
def check_static_kernel(fn: Callable) -> None:
    """``fn(table, row, col)``: with zero content (``q.k = 0``), the pre-softmax attention weights of the
    query at ``(row, col)`` over the ``H x W`` map, as an ``(H, W)`` tensor; ``table`` is ``(2H-1, 2W-1)``."""
    g = torch.Generator().manual_seed(4)
    for H, W, row, col in [(3, 3, 1, 1), (4, 5, 0, 0), (5, 4, 3, 1)]:
        table = randn(g, 2 * H - 1, 2 * W - 1)
        window = table[row : row + H, col : col + W].flip(
            0, 1
        )  # entry [jy, jx] = table[row - jy + H-1, col - jx + W-1]
        want = window.flatten().softmax(0).view(H, W)
        flipped = table[H - 1 - row : 2 * H - 1 - row, W - 1 - col : 2 * W - 1 - col]
        hints = [
            (window, "apply the softmax over the H x W positions: the weights of one query sum to 1."),
            (
                flipped.flatten().softmax(0).view(H, W),
                "the weight of key j is w[i - j] (query minus key); yours is w[j - i].",
            ),
            (
                table.flatten().softmax(0).view_as(table)[row : row + H, col : col + W].flip(0, 1),
                "normalise over the H x W positions of the map only, not over the whole table.",
            ),
            (window.softmax(0), "one softmax over all H x W positions together; yours normalises each column."),
            (window.softmax(1), "one softmax over all H x W positions together; yours normalises each row."),
        ]
        call = f"{function_name(fn)}(table, {row}, {col}) for a {H}x{W} map"
        compare_tensors(call_reader(fn, table, row, col), want, call, ("row", "col"), hints)
