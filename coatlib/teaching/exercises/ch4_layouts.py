"""Checks for the exercises of chapter 4: vertical layouts."""

from __future__ import annotations

from typing import Callable

import torch

from coatlib.attention import RelativeAttention
from coatlib.flops import count_macs
from coatlib.models import swin
from coatlib.models.swin import WindowAttention, window_partition
from coatlib.teaching.exercises.checking import (
    Forbidden,
    call_reader,
    compare_number,
    compare_tensors,
    counters,
    function_name,
    randn,
    register_check,
)


@register_check
def check_attention_memory(fn: Callable) -> None:
    """``fn(image_size, stage, width, batch)``: bytes of the float32 attention weights ``(batch, heads, N, N)``
    of one relative-attention layer in stage ``S{stage}`` (1..4) of a CoAtNet for ``image_size`` images,
    ``width`` channels, heads of size 32. S{stage} works on a map of ``image_size / 2**(stage + 1)`` pixels a
    side (the stem S0 halves the image, then every stage). Measured on the ``meta`` device."""
    for image_size, stage, width, batch in [(224, 1, 96, 1), (224, 3, 384, 8), (384, 2, 192, 2), (512, 4, 1024, 4)]:
        side = image_size // 2 ** (stage + 1)
        with torch.device("meta"):  # shapes only: no memory is used
            layer = RelativeAttention(width, head_dim=32, map_size=side)
            weights = layer.attention_weights(torch.zeros(batch, width, side, side))
        want = weights.numel() * weights.element_size()
        heads, n = width // 32, side * side
        hints = [
            (
                batch * n * n * 4,
                f"every head has its own N x N matrix: multiply by the number of heads, width / 32 = {heads}.",
            ),
            (
                batch * heads * n * 4,
                "the weights pair every position with every position: N x N numbers per head, not N.",
            ),
            (batch * heads * n * n, "a float32 number takes 4 bytes."),
            (heads * n * n * 4, "every image of the batch has its own weights: multiply by the batch size."),
            (
                batch * heads * (4 * n) ** 2 * 4,
                f"S{stage} works on a map of image_size / 2**(stage + 1) = {side} pixels a side: the stem halves the image first.",
            ),
            (
                batch * heads * (n // 4) ** 2 * 4,
                f"S{stage} works on a map of image_size / 2**(stage + 1) = {side} pixels a side.",
            ),
        ]
        compare_number(
            call_reader(fn, image_size, stage, width, batch),
            want,
            f"{function_name(fn)}{(image_size, stage, width, batch)}",
            hints,
        )


@register_check
def check_window_attention_macs(fn: Callable) -> None:
    """``fn(height, width, window, dim)``: multiply-accumulates of windowed self-attention, Swin's W-MSA
    (``coatlib.models.swin.WindowAttention(dim, window=window)``, heads of size 32), on one
    ``height x width`` map of ``dim`` channels whose sides are multiples of ``window``: the four
    projections and the two attention products inside every ``window x window`` window."""
    for h, w, window, dim in [(56, 56, 7, 96), (16, 24, 4, 64), (28, 28, 7, 192), (14, 14, 14, 64)]:
        layer = WindowAttention(dim, head_dim=32, window=window)
        layer.fused = False  # the explicit path: every matrix product is visible to the counter
        want = count_macs(layer, torch.zeros(1, h, w, dim))
        n = h * w
        hints = [
            (
                4 * n * dim * dim + 2 * n * n * dim,
                "that is global attention over all N = height x width positions; in a window every query sees window^2 keys only.",
            ),
            (
                2 * n * window * window * dim,
                "that is the attention products only; add the four projections (q, k, v and output: 4 N dim^2).",
            ),
            (
                4 * n * dim * dim,
                "that is the projections only; add q k^T and A v inside the windows (N window^2 dim each).",
            ),
            (4 * n * dim * dim + 2 * n * window * dim, "a window holds window x window = window^2 tokens, not window."),
            (
                4 * n * dim * dim + n * window * window * dim,
                "there are two attention products, q k^T and A v, each N window^2 dim.",
            ),
        ]
        got = call_reader(fn, h, w, window, dim, forbidden=counters())
        compare_number(got, want, f"{function_name(fn)}{(h, w, window, dim)}", hints)


@register_check
def check_window_partition(fn: Callable) -> None:
    """``fn(x, window)``: cut a channels-last map ``x (B, H, W, C)`` into non-overlapping ``window x window``
    windows, ``(B * H/window * W/window, window * window, C)``: the windows in reading order (image by image,
    then row by row), the tokens of each window in reading order too, as ``coatlib.models.swin.window_partition``."""
    g = torch.Generator().manual_seed(5)
    for B, H, W, C, w in [(2, 4, 6, 3, 2), (1, 6, 6, 2, 3), (2, 8, 4, 5, 4)]:
        x = randn(g, B, H, W, C)
        want = window_partition(x, w)
        grid = x.view(
            B, H // w, w, W // w, w, C
        )  # (batch, window row, row in window, window column, column in window, C)
        hints = [
            (
                x.reshape(-1, w * w, C),
                "a plain reshape cuts each image into strips of whole rows; split H into (H/window, window) "
                "and W into (W/window, window), and bring the two in-window axes together before flattening.",
            ),
            (
                grid.permute(0, 3, 1, 2, 4, 5).reshape(-1, w * w, C),
                "list the windows row by row (left to right, then down); yours go column by column.",
            ),
            (
                grid.permute(0, 1, 3, 4, 2, 5).reshape(-1, w * w, C),
                "list the tokens inside a window row by row; yours go column by column.",
            ),
        ]
        call = f"{function_name(fn)}(x, {w}) with x of shape {(B, H, W, C)}"
        library = Forbidden(swin, "window_partition", "coatlib's window_partition")
        compare_tensors(call_reader(fn, x, w, forbidden=[library]), want, call, ("window", "token", "channel"), hints)
