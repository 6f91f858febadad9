"""Checks for the exercises of chapter 2: self-attention."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from coatlib.attention import MultiHeadAttention
from coatlib.flops import count_macs
from coatlib.teaching.exercises._base import (
    _call,
    _check,
    _compare,
    _compare_number,
    _name,
    _randn,
)


@_check
def check_attention(fn: Callable) -> None:
    """``fn(q, k, v)``: scaled dot-product attention ``softmax(q k^T / sqrt(d)) v`` over the last two
    dimensions (``q: (..., Nq, d)``, ``k, v: (..., Nk, d)``), like ``F.scaled_dot_product_attention``."""
    g = torch.Generator().manual_seed(1)
    for q_shape, kv_shape in [((2, 3, 5, 8), (2, 3, 5, 8)), ((6, 4), (6, 4)), ((1, 2, 4, 16), (1, 2, 9, 16))]:
        q, k, v = _randn(g, *q_shape), _randn(g, *kv_shape), _randn(g, *kv_shape)
        d = q.shape[-1]
        scores = q @ k.transpose(-2, -1)
        want = F.scaled_dot_product_attention(q, k, v) if q.ndim > 2 else (scores / d**0.5).softmax(-1) @ v
        hints = [
            ((scores / d**0.5).softmax(-1), "you returned the attention weights; multiply them with v."),
            (scores.softmax(-1) @ v, "divide the scores by sqrt(d) before the softmax (d is the size of q's last dimension)."),
            ((scores / d).softmax(-1) @ v, "divide by sqrt(d), not by d."),
            ((scores / d**0.5).softmax(-2) @ v, "take the softmax over the keys (the last dimension), so that each query's weights sum to 1."),
        ]
        call = f"{_name(fn)}(q, k, v) with q of shape {q_shape} and k, v of shape {kv_shape}"
        _compare(_call(fn, q, k, v), want, call, ("batch", "head")[: q.ndim - 2] + ("query", "channel"), hints)


@_check
def check_patchify(fn: Callable) -> None:
    """``fn(images, p)``: cut ``(B, C, H, W)`` images into ``p x p`` patches and flatten each into a
    token: ``(B, N, C*p*p)``, patches in reading order (row by row), each flattened in the order of
    ``nn.Conv2d``'s weight ``(C, p, p)``, so that ``tokens @ conv.weight.flatten(1).T`` equals the
    patch stem ``nn.Conv2d(C, D, p, stride=p)``."""
    g = torch.Generator().manual_seed(2)
    for B, C, H, W, p in [(2, 3, 8, 8, 4), (1, 3, 12, 8, 4), (2, 2, 6, 9, 3)]:
        x = _randn(g, B, C, H, W)
        want = F.unfold(x, p, stride=p).transpose(1, 2)
        h, w = H // p, W // p
        patches = x.reshape(B, C, h, p, w, p)
        hints = [
            (patches.permute(0, 2, 4, 3, 5, 1).reshape(B, h * w, C * p * p),
             "each patch must be flattened channel first, in the (C, p, p) order of nn.Conv2d's weight; yours is (p, p, C)."),
            (patches.permute(0, 4, 2, 1, 3, 5).reshape(B, h * w, C * p * p), "list the patches row by row (left to right, then down); yours go column by column."),
            (want.transpose(1, 2), "tokens go along dimension 1: return (B, N, C*p*p)."),
        ]
        call = f"{_name(fn)}(images, {p}) with images of shape {(B, C, H, W)}"
        _compare(_call(fn, x, p), want, call, ("batch", "token", "feature"), hints)


@_check
def check_attention_macs(fn: Callable) -> None:
    """``fn(n_tokens, dim)``: multiply-accumulates of ``coatlib``'s ``MultiHeadAttention(dim)`` (q, k, v
    and output projections plus the two attention products) on one sequence of ``n_tokens`` tokens."""
    for n, dim in [(196, 64), (49, 256), (1024, 32), (16, 96)]:
        want = count_macs(MultiHeadAttention(dim), torch.zeros(1, n, dim))
        hints = [
            (4 * n * dim * dim, "that is the four projections only; add the attention products q k^T and A v, which grow with n^2."),
            (2 * n * n * dim, "that is the attention products only; add the projections (q, k, v and the output: 4 n dim^2)."),
            (3 * n * dim * dim + 2 * n * n * dim, "you left out the output projection (a dim x dim linear layer)."),
            (4 * n * dim * dim + n * n * dim, "there are two attention products: q k^T (n x n scores) and A v; each costs n^2 dim."),
        ]
        _compare_number(_call(fn, n, dim), want, f"{_name(fn)}({n}, {dim})", hints)
