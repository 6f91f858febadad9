"""Checks for the exercises of chapter 3: relative attention."""
from __future__ import annotations

from typing import Callable

import torch

from coatlib.attention import relative_position_index
from coatlib.teaching.exercises._base import (
    _call,
    _check,
    _compare,
    _name,
    _randn,
)


@_check
def check_relative_index(fn: Callable) -> None:
    """``fn(H, W)``: the ``(N, N)`` integer index, ``N = H*W``, of the offset ``pos(i) - pos(j)`` into a
    flattened ``(2H-1) x (2W-1)`` table: ``(dy + H - 1) * (2W - 1) + (dx + W - 1)``."""
    for H, W in [(3, 3), (2, 4), (4, 3), (1, 5)]:
        want = relative_position_index(H, W)
        ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        dy = ys.flatten()[:, None] - ys.flatten()[None, :]
        dx = xs.flatten()[:, None] - xs.flatten()[None, :]
        hints = [
            ((dy + H - 1) * W + (dx + W - 1),
             "rows of the table are 2W - 1 entries long, not W: with stride W distinct offsets share an entry."),
            (want.T, "the bias is w[i - j]: use pos(i) - pos(j) (query minus key), not pos(j) - pos(i)."),
            (dy * (2 * W - 1) + dx, "offsets run from -(H-1) to H-1: add H - 1 to dy and W - 1 to dx so that indices start at 0."),
            ((dy + H - 1) * (2 * H - 1) + (dx + W - 1), "the row stride is 2W - 1 (the table's width), not 2H - 1."),
        ]
        _compare(_call(fn, H, W), want, f"{_name(fn)}({H}, {W})", ("query", "key"), hints)


def relative_attention(q, k, v, table: torch.Tensor, softmax: str = "pre") -> torch.Tensor:
    """Reference Eq. 3: ``q, k, v (B, heads, N, d)`` on an ``H x W`` map, ``table (heads, 2H-1, 2W-1)``."""
    H, W = (table.shape[1] + 1) // 2, (table.shape[2] + 1) // 2
    bias = table.flatten(1)[:, relative_position_index(H, W)]
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    weights = (scores + bias).softmax(-1) if softmax == "pre" else scores.softmax(-1) + bias
    return weights @ v


@_check
def check_relative_attention(fn: Callable) -> None:
    """``fn(q, k, v, table, softmax)``: relative attention, Eq. 3. ``q, k, v`` are ``(B, heads, N, d)``
    for an ``H x W`` map (``N = H*W``), ``table`` is ``(heads, 2H-1, 2W-1)`` and ``softmax`` is ``"pre"``
    (bias added to the logits) or ``"post"`` (bias added to the weights after the softmax)."""
    g = torch.Generator().manual_seed(3)
    for (B, heads, H, W, d), mode in [((2, 2, 3, 3, 4), "pre"), ((2, 2, 3, 3, 4), "post"), ((1, 3, 2, 4, 8), "pre"), ((1, 3, 2, 4, 8), "post")]:
        q, k, v = (_randn(g, B, heads, H * W, d) for _ in range(3))
        table = _randn(g, heads, 2 * H - 1, 2 * W - 1)
        want = relative_attention(q, k, v, table, mode)
        other = "post" if mode == "pre" else "pre"
        hints = [
            (relative_attention(q, k, v, table, other), f"you computed the {other!r}-softmax form; softmax={mode!r} asks for the other one."),
            (relative_attention(q, k, v, table.flip(1, 2), mode), "the bias must be w[i - j] (query minus key); yours is w[j - i]."),
            (relative_attention(q * d**0.5, k, v, table, mode), "scale the dot products q.k by 1 / sqrt(d); the bias is not scaled."),
            (relative_attention(q, k, v, table * 0, mode), "the bias table is missing."),
        ]
        call = f"{_name(fn)}(q, k, v, table, {mode!r}) for a {H}x{W} map with {heads} heads"
        _compare(_call(fn, q, k, v, table, mode), want, call, ("batch", "head", "query", "channel"), hints)


@_check
def check_static_kernel(fn: Callable) -> None:
    """``fn(table, row, col)``: with zero content (``q.k = 0``), the pre-softmax attention weights of the
    query at ``(row, col)`` over the ``H x W`` map, as an ``(H, W)`` tensor; ``table`` is ``(2H-1, 2W-1)``."""
    g = torch.Generator().manual_seed(4)
    for H, W, row, col in [(3, 3, 1, 1), (4, 5, 0, 0), (5, 4, 3, 1)]:
        table = _randn(g, 2 * H - 1, 2 * W - 1)
        window = table[row : row + H, col : col + W].flip(0, 1)  # entry [jy, jx] = table[row - jy + H-1, col - jx + W-1]
        want = window.flatten().softmax(0).view(H, W)
        flipped = table[H - 1 - row : 2 * H - 1 - row, W - 1 - col : 2 * W - 1 - col]
        hints = [
            (window, "apply the softmax over the H x W positions: the weights of one query sum to 1."),
            (flipped.flatten().softmax(0).view(H, W), "the weight of key j is w[i - j] (query minus key); yours is w[j - i]."),
            (table.flatten().softmax(0).view_as(table)[row : row + H, col : col + W].flip(0, 1),
             "normalise over the H x W positions of the map only, not over the whole table."),
        ]
        call = f"{_name(fn)}(table, {row}, {col}) for a {H}x{W} map"
        _compare(_call(fn, table, row, col), want, call, ("row", "col"), hints)
