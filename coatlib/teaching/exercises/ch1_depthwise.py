"""Checks for the exercises of chapter 1: depthwise convolution."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from coatlib.blocks import MBConv
from coatlib.flops import count_macs
from coatlib.teaching.exercises._solutions import receptive_field_of
from coatlib.teaching.exercises.checking import (
    Forbidden,
    Hint,
    call_reader,
    compare_number,
    compare_tensors,
    counters,
    function_name,
    randn,
    register_check,
)

NO_CONVOLUTION = (
    Forbidden(F, "conv2d", "conv2d (F.conv2d, nn.Conv2d or DepthwiseConv)"),
    Forbidden(torch, "conv2d", "torch.conv2d"),
    Forbidden(F, "unfold", "F.unfold (or nn.Unfold)"),
    Forbidden(torch.Tensor, "unfold", "Tensor.unfold"),
    Forbidden(None, "depthwise_conv_unfold", "the chapter's depthwise_conv_unfold"),
)


@register_check
def check_depthwise_conv(fn: Callable) -> None:
    """``fn(x, weight)``: depthwise convolution of ``x (B, C, H, W)`` with ``weight (C, 1, k, k)``,
    stride 1, zero padding ``k // 2``, no bias: the output of ``F.conv2d(x, weight, padding=k // 2, groups=C)``."""
    g = torch.Generator().manual_seed(0)
    for B, C, H, W, k in [(2, 3, 8, 8, 3), (1, 4, 5, 7, 5), (2, 6, 7, 6, 3)]:
        x, w = randn(g, B, C, H, W), randn(g, C, 1, k, k)
        p = k // 2
        want = F.conv2d(x, w, padding=p, groups=C)
        got = call_reader(fn, x.clone(), w.clone(), forbidden=NO_CONVOLUTION)
        hints: list[Hint] = [
            (
                F.conv2d(x, w, groups=C),
                f"no padding: pad x with k // 2 = {p} zeros on every side, so that the output keeps the input's size.",
            ),
            (
                F.conv2d(x, w.flip(-2, -1), padding=p, groups=C),
                "you flipped the kernel. PyTorch's conv2d (and this book) does not flip: "
                "y[c, r, s] = sum over a, b of w[c, 0, a, b] * x[c, r + a - k//2, s + b - k//2].",
            ),
            (F.conv2d(x, w.transpose(-2, -1), padding=p, groups=C), "rows and columns of the kernel are swapped."),
            (
                F.conv2d(x.sum(1, keepdim=True).expand(-1, C, -1, -1), w, padding=p, groups=C),
                "you summed over the input channels. Depthwise means output channel c sees input channel c only.",
            ),
            (
                F.conv2d(x, w[:1].expand(C, -1, -1, -1), padding=p, groups=C),
                "every channel used the kernel of channel 0; channel c uses weight[c, 0].",
            ),
            (
                F.conv2d(x, w, padding=p, groups=C)[..., :H, :W].roll((1, 1), (-2, -1)),
                "the output is shifted by one pixel: the window of offset (a, b) starts at row a, column b of the "
                "padded input.",
            ),
            lambda got, bad: _border_only(bad, p),
        ]
        call = f"{function_name(fn)}(x, weight) with x of shape {(B, C, H, W)} and a {k}x{k} kernel"
        compare_tensors(got, want, call, ("batch", "channel", "row", "col"), hints, atol=1e-4)


def _border_only(bad: torch.Tensor, p: int) -> str | None:
    inner = bad[..., p:-p, p:-p] if p else bad
    if p and not inner.any():
        return f"the values are right inside and wrong only within {p} pixel(s) of the border: pad with zeros."
    return None


@register_check
def check_mbconv_macs(fn: Callable) -> None:
    """``fn(c, k, h, w)``: multiply-accumulates of ``coatlib``'s CoAtNet MBConv block with ``c`` input and
    output channels on an ``h x w`` map: ``MBConv(c, c, kernel_size=k)``
    (stride 1), i.e. a 1x1 expansion to 4c channels, a ``k x k`` depthwise conv, squeeze-excitation on
    the pooled vector (4c -> c/4 -> 4c) and a 1x1 projection back to c. Norms, activations, biases and
    the residual sum are not counted."""
    for c, k, h, w in [(96, 3, 56, 56), (64, 5, 14, 14), (32, 3, 20, 30)]:
        block = MBConv(c, c, kernel_size=k).eval()
        want = count_macs(block, torch.zeros(1, c, h, w))
        e, r = 4 * c, c // 4
        convs = h * w * (c * e + e * k * k + e * c)
        hints = [
            (convs, "add the squeeze-excitation: two 1x1 convs (4c -> c/4 -> 4c) on the pooled vector."),
            (
                convs + h * w * 2 * e * r,
                "squeeze-excitation runs once per image, on the averaged vector, not at every position.",
            ),
            (
                h * w * (c * e + c * k * k + e * c) + 2 * e * r,
                "the depthwise conv runs on the expanded 4c channels, not on c.",
            ),
            (h * w * e * k * k + 2 * e * r, "add the two 1x1 convs: the expansion c -> 4c and the projection 4c -> c."),
            (h * w * c * c * k * k, "that is a standard k x k convolution from c to c channels."),
        ]
        compare_number(
            call_reader(fn, c, k, h, w, forbidden=counters()), want, f"{function_name(fn)}{(c, k, h, w)}", hints
        )


@register_check
def check_receptive_field(fn: Callable) -> None:
    """``fn(kernel_sizes, strides)``: receptive field (in input pixels, along one axis) of one output
    of a stack of convolutions applied in order."""
    cases = [
        ([3], [1]),
        ([3, 3, 3], [1, 1, 1]),
        ([3, 3, 3], [2, 2, 1]),
        ([7, 3, 3, 3], [2, 2, 1, 1]),
        ([5, 3], [1, 2]),
        ([2, 3, 3], [2, 1, 2]),
    ]
    for ks, ss in cases:
        want = receptive_field_of(ks, ss)
        steps_after = [1]
        for s in ss:
            steps_after.append(steps_after[-1] * s)
        hints = [
            (
                1 + sum(k - 1 for k in ks),
                "the strides matter: after a stride-2 layer, neighbouring inputs of the next layer are 2 pixels apart.",
            ),
            (
                1 + sum((k - 1) * st for k, st in zip(ks, steps_after[1:])),
                "a layer's own stride does not widen its own window; it spreads the inputs of the layers after it.",
            ),
            (sum(ks), "a stack of two 3x3 convs sees 5 pixels, not 6: each layer adds k - 1."),
            (
                sum(k - 1 for k in ks) * steps_after[-1] + 1,
                "each layer's k - 1 is multiplied by the strides *before* it only, not by all of them.",
            ),
            (want - 1, "count the output pixel itself: a single 3x3 conv sees 3 pixels (start the sum at 1)."),
        ]
        compare_number(call_reader(fn, list(ks), list(ss)), want, f"{function_name(fn)}({ks}, {ss})", hints)
