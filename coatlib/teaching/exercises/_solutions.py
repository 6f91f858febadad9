"""The reference answers the checks compare with. Private: a notebook that imports this module is not
doing the exercise, and the checks refuse these functions (and any other of ``coatlib``'s) by name.

The names differ from those the students write (``masked_attention`` ...), so that
``from coatlib.teaching.exercises import masked_attention`` fails. Each reference has a test
in ``tests/test_exercises.py`` that computes its values another way.
"""

from __future__ import annotations

from typing import Sequence

import torch

from coatlib.attention import relative_position_index
from coatlib.inspection import bias_locality


def receptive_field_of(kernel_sizes: Sequence[int], strides: Sequence[int]) -> int:
    """Receptive field of a stack of convolutions: each layer adds ``(k - 1)`` times the product of
    the strides before it (the distance, in input pixels, between its neighbouring inputs)."""
    size, step = 1, 1
    for k, s in zip(kernel_sizes, strides):
        size += (k - 1) * step
        step *= s
    return size


def attention_with_mask(q, k, v, keep):
    """Scaled dot-product attention in which query ``i`` only sees the keys ``j`` with ``keep[i, j]``;
    a query that keeps no key returns zeros."""
    scores = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).masked_fill(~keep, float("-inf"))
    weights = scores.softmax(-1).nan_to_num(0.0)  # a row of -inf only gives NaN: no key, no output
    return weights @ v


def attention_with_table(q, k, v, table: torch.Tensor, softmax: str = "pre") -> torch.Tensor:
    """Eq. 3: ``q, k, v (B, heads, N, d)`` on an ``H x W`` map, ``table (heads, 2H-1, 2W-1)``."""
    H, W = (table.shape[1] + 1) // 2, (table.shape[2] + 1) // 2
    bias = table.flatten(1)[:, relative_position_index(H, W)]
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    weights = (scores + bias).softmax(-1) if softmax == "pre" else scores.softmax(-1) + bias
    return weights @ v


def bias_with_clipping(table: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """The ``(heads, N, N)`` bias of an ``H x W`` map from a table of ``(heads, 2K+1, 2L+1)`` entries
    for the offsets ``-K..K`` (rows) and ``-L..L`` (columns); larger offsets are clipped."""
    K, L = (table.shape[-2] - 1) // 2, (table.shape[-1] - 1) // 2
    rows, cols = torch.arange(H * W) // W, torch.arange(H * W) % W
    dy = (rows[:, None] - rows[None, :]).clamp(-K, K) + K
    dx = (cols[:, None] - cols[None, :]).clamp(-L, L) + L
    return table[:, dy, dx]


def bias_table_params(config, image_size: int) -> int:
    """Relative-bias parameters of a CoAtNet built from ``config`` for square images of
    ``image_size`` pixels: every Transformer block of S3 (map ``image_size / 16``) and S4 (``/ 32``)
    has ``width / head_dim`` heads with a ``(2H-1) x (2W-1)`` table each."""
    total = 0
    for stage, (depth, width) in enumerate(zip(config.depths[2:], config.widths[2:]), start=3):
        side = image_size // 2 ** (stage + 1)
        total += depth * (width // config.head_dim) * (2 * side - 1) ** 2
    return total


def locality_of_flat_table(H: int, W: int, radius: int) -> float:
    """The share of keys within ``radius`` (in rows and in columns) of a query, averaged over
    the queries of an ``H x W`` map: the locality ``bias_locality`` gives a flat table."""
    return bias_locality(torch.zeros(1, 2 * H - 1, 2 * W - 1), radius).item()


def gaussian_bump(H: int, W: int, sigma: float) -> torch.Tensor:
    """A ``(2H-1, 2W-1)`` bias table that is a Gaussian bump at offset (0, 0) in log space,
    ``w[dy, dx] = -(dy^2 + dx^2) / (2 sigma^2)``."""
    dy = torch.arange(-(H - 1), H, dtype=torch.float32)[:, None]
    dx = torch.arange(-(W - 1), W, dtype=torch.float32)[None]
    return -(dy**2 + dx**2) / (2 * sigma**2)
