"""Checks for the exercises of chapter 5c: inside a trained CoAtNet."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

import coatlib.inspection
from coatlib.inspection import effective_receptive_field
from coatlib.teaching.exercises._solutions import gaussian_bump, locality_of_flat_table
from coatlib.teaching.exercises.checking import (
    Forbidden,
    Wrong,
    call_reader,
    compare_tensors,
    factor_hint,
    function_name,
    plain_number,
    register_check,
)


@register_check
def check_centre_gradient(fn: Callable) -> None:
    """``fn(net, images)``: the effective receptive field of ``net`` (images ``(B, C, H, W)`` to maps
    ``(B, D, h, w)``): the absolute gradient of the centre output ``(h // 2, w // 2)``, summed over its
    channels, with respect to the input, summed over the input channels, averaged over the images and
    scaled to sum to 1, as ``(H, W)``."""
    torch.manual_seed(5)
    nets = [
        nn.Conv2d(2, 3, 3, padding=1),
        nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1)),
        nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 5, padding=2)),
    ]
    for net in nets:
        images = torch.randn(4, 2, 11, 11)
        want = effective_receptive_field(net, images)

        def raw(summed_over: str, absolute: bool = True) -> torch.Tensor:
            x = images.clone().requires_grad_(True)
            out = net(x)
            h, w = out.shape[-2:]
            (out.sum() if summed_over == "all" else out[:, :, h // 2, w // 2].sum()).backward()
            g = x.grad.abs() if absolute else x.grad
            field = g.sum(1).mean(0)
            return field / field.sum()

        def unscaled(got: torch.Tensor, bad: torch.Tensor, want: torch.Tensor = want) -> str | None:
            if got.sum().abs() > 0 and torch.allclose(got / got.sum(), want, atol=1e-6):
                return "scale the field to sum to 1 (divide by its sum)."
            return None

        hints = [
            unscaled,
            (raw("centre", absolute=False), "take the absolute value of the gradient before averaging."),
            (raw("all"), "differentiate only the centre output position, not the sum of the whole map."),
        ]
        library = Forbidden(coatlib.inspection, "effective_receptive_field", "coatlib's effective_receptive_field")
        got = call_reader(fn, net, images.clone(), forbidden=[library])
        compare_tensors(got, want, f"{function_name(fn)}(net, images)", ("row", "col"), hints)


@register_check
def check_flat_locality(fn: Callable) -> None:
    """``fn(H, W, radius)``: the locality of a flat bias table (every head attends uniformly): the share of
    the ``H W`` keys with ``|dy| <= radius`` and ``|dx| <= radius``, averaged over the queries."""
    for H, W, radius in [(8, 8, 1), (4, 4, 1), (8, 8, 2), (5, 3, 1), (6, 6, 0)]:
        library = Forbidden(coatlib.inspection, "bias_locality", "coatlib's bias_locality")
        call = f"{function_name(fn)}({H}, {W}, {radius})"
        got = plain_number(call_reader(fn, H, W, radius, forbidden=[library]), call)
        want = locality_of_flat_table(H, W, radius)
        if abs(got - want) > 1e-6:
            side = 2 * radius + 1
            hints = [
                (side * side / (H * W), "queries at the border have fewer neighbours: count them per query."),
                (want * H * W, "return a share of the H W keys, not a count."),
                (min(side, H) * min(side, W) / (H * W), "count the neighbours of each query, then average."),
                (
                    locality_of_flat_table(H, W, radius + 1) if radius < min(H, W) else -1,
                    "radius 1 means |dy| <= 1 and |dx| <= 1 (a 3 x 3 neighbourhood); yours is one wider.",
                ),
                (
                    locality_of_flat_table(H, W, radius - 1) if radius > 0 else -1,
                    "|dy| <= radius includes the distance radius itself (<=, not <).",
                ),
            ]
            hint = next((" Hint: " + text for value, text in hints if abs(got - value) < 1e-6), None)
            hint = hint or factor_hint(got, want)
            raise Wrong(f"{call} returned {got:.5g}, expected {want:.5g}.{hint}")


@register_check
def check_gaussian_table(fn: Callable) -> None:
    """``fn(H, W, sigma)``: the ``(2H-1, 2W-1)`` table ``w[dy, dx] = -(dy^2 + dx^2) / (2 sigma^2)``, row
    ``dy + H - 1`` and column ``dx + W - 1`` for the offset ``(dy, dx)``."""
    for H, W, sigma in [(4, 4, 1.0), (8, 8, 1.5), (3, 5, 0.7)]:
        want = gaussian_bump(H, W, sigma)
        got = call_reader(fn, H, W, sigma)
        if isinstance(got, torch.Tensor) and got.shape != want.shape:
            raise Wrong(
                f"{function_name(fn)}({H}, {W}, {sigma}) returned shape {tuple(got.shape)}; expected "
                f"{tuple(want.shape)}. Hint: one entry per offset: (2H-1) x (2W-1), offsets -(H-1) .. H-1."
            )
        hints = [
            (-want, "a bump is largest at (0, 0): the bias must fall with the distance (a minus sign)."),
            (want * 2 * sigma**2 / (2 * sigma), "divide by 2 sigma squared, not 2 sigma."),
            (want * 2, "divide the squared distance by 2 sigma^2, not sigma^2."),
            (want.exp(), "the table holds logits, added before the softmax: leave out the exp."),
        ]
        compare_tensors(got, want, f"{function_name(fn)}({H}, {W}, {sigma})", ("dy", "dx"), hints)
