"""Checks for the exercises of chapter 6: the family tree."""

from __future__ import annotations

import math
from typing import Callable

import torch

from coatlib.layers import make_divisible
from coatlib.models import swin
from coatlib.models.swin import shift_mask, window_partition
from coatlib.teaching.exercises.checking import (
    Forbidden,
    Wrong,
    call_reader,
    compare_number,
    compare_tensors,
    function_name,
    register_check,
)


@register_check
def check_scale_stage(fn: Callable) -> None:
    """``fn(channels, layers, width, depth)``: one row of EfficientNet-B0's table scaled by the compound
    coefficients ``width`` and ``depth``: ``(make_divisible(channels * width), ceil(layers * depth))``, the
    channels rounded to the nearest multiple of 8 but never more than 10% down, the layers rounded up."""
    cases = [
        (16, 1, 1.0, 1.0),
        (24, 2, 1.1, 1.2),
        (40, 2, 1.4, 1.8),
        (112, 3, 1.1, 1.2),
        (80, 3, 1.8, 2.6),
        (16, 1, 1.8, 2.6),
        (320, 1, 2.0, 3.1),
        (24, 2, 1.6, 2.2),
    ]
    for channels, layers, width, depth in cases:
        want = (make_divisible(channels * width), math.ceil(layers * depth))
        call = f"{function_name(fn)}{(channels, layers, width, depth)}"
        got = call_reader(fn, channels, layers, width, depth)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise Wrong(f"{call} returned {got!r}; return a pair (channels, layers).")
        c = channels * width
        compare_number(
            got[0],
            want[0],
            f"{call}, channels",
            [
                (
                    round(c),
                    "round the channels to a multiple of 8 (hardware likes it): make_divisible(channels * width).",
                ),
                (int(c) // 8 * 8, "round to the *nearest* multiple of 8 (add 4 before flooring), not down."),
                (
                    int(c),
                    "round the channels to a multiple of 8 (hardware likes it): make_divisible(channels * width).",
                ),
            ],
        )
        compare_number(
            got[1],
            want[1],
            f"{call}, layers",
            [
                (
                    round(layers * depth),
                    "round the number of layers *up* (math.ceil): a stage never gets fewer blocks than depth x layers.",
                ),
                (int(layers * depth), "round the number of layers *up* (math.ceil), not down."),
            ],
        )


@register_check
def check_shift_mask(fn: Callable) -> None:
    """``fn(height, width, window, shift)``: the shifted-window attention mask of Swin for a ``height x width``
    map cut into ``window x window`` windows after a cyclic shift by ``shift`` rows and columns: a bool tensor
    ``(nW, window**2, window**2)``, True where two tokens of a window come from different regions of the
    un-shifted map (so must not attend to each other), windows in reading order, tokens row by row."""

    def labelled(h, w, win, regions):
        labels = regions(h)[:, None] * 3 + regions(w)[None, :]
        labels = window_partition(labels[None, :, :, None], win)[..., 0]
        return labels[:, :, None] != labels[:, None, :]

    for h, w, win, s in [(8, 8, 4, 2), (12, 8, 4, 2), (14, 14, 7, 3), (6, 9, 3, 1)]:
        want = shift_mask(h, w, win, (s, s)) != 0
        call = f"{function_name(fn)}{(h, w, win, s)}"
        library = Forbidden(swin, "shift_mask", "coatlib's shift_mask")
        got = call_reader(fn, h, w, win, s, forbidden=[library])
        if isinstance(got, torch.Tensor) and got.dtype != torch.bool:
            raise Wrong(f"{call} returned a {got.dtype} tensor; return a bool tensor, True where attention is masked.")
        n = h // win * (w // win)
        hints = [
            (~want, "True must mark the pairs from *different* regions (the ones that may not attend)."),
            (
                torch.zeros_like(want),
                "the map is shifted: the last windows hold tokens of up to 3 x 3 regions of the original map.",
            ),
            (
                labelled(h, w, win, lambda L: (torch.arange(L) >= win).long() + (torch.arange(L) >= s).long()),
                "the regions are [0, L - window), [L - window, L - shift) and [L - shift, L) along each axis: the "
                "wrapped-around tokens sit at the end of the shifted map.",
            ),
            (
                want.view(h // win, w // win, win * win, win * win).transpose(0, 1).reshape(n, win * win, win * win),
                "list the windows in reading order (row of windows by row of windows), as window_partition does.",
            ),
        ]
        compare_tensors(got, want, call, ("window", "query token", "key token"), hints)
