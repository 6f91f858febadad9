"""Checks for the exercises of chapter 2: self-attention."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from coatlib.attention import MultiHeadAttention
from coatlib.flops import count_macs
from coatlib.teaching.exercises._solutions import attention_with_mask
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
def check_masked_attention(fn: Callable) -> None:
    """``fn(q, k, v, keep)``: scaled dot-product attention ``softmax(q k^T / sqrt(d)) v`` in which
    query ``i`` may only attend to the keys ``j`` with ``keep[i, j]`` (a bool ``(N_q, N_k)`` tensor,
    shared by the leading batch and head dimensions); the weights of every query still sum to 1 over
    its kept keys, and a query that keeps no key returns zeros."""
    g = torch.Generator().manual_seed(1)
    cases = [((2, 3, 5, 8), (2, 3, 6, 8), 0.6), ((1, 2, 7, 16), (1, 2, 7, 16), 0.4), ((4, 8), (9, 8), 0.5)]
    for q_shape, kv_shape, p in cases:
        q, k, v = randn(g, *q_shape), randn(g, *kv_shape), randn(g, *kv_shape)
        keep = torch.rand(q_shape[-2], kv_shape[-2], generator=g) < p
        keep[0] = False  # the first query keeps no key at all
        keep[1] = True  # the second keeps every key
        want = attention_with_mask(q, k, v, keep)
        d = q.shape[-1]
        scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
        hints = [
            (
                (scores * keep).softmax(-1) @ v,
                "a score of 0 does not remove a key (exp(0) = 1): set the masked scores to -inf before the softmax.",
            ),
            (
                (scores.softmax(-1) * keep) @ v,
                "zeroing weights after the softmax leaves rows that no longer sum to 1: mask the scores, before the softmax.",
            ),
            (
                scores.masked_fill(keep, float("-inf")).softmax(-1).nan_to_num(0.0) @ v,
                "keep[i, j] = True means query i may attend to key j: mask where keep is False.",
            ),
            (attention_with_mask(q * d**0.5, k, v, keep), "divide the scores by sqrt(d) before the softmax."),
            (
                attention_with_mask(q / d**0.5, k, v, keep),
                "you divided the scores by d; divide by sqrt(d) (q.shape[-1] ** 0.5).",
            ),
            (
                scores.masked_fill(~keep, float("-inf")).softmax(-2).nan_to_num(0.0) @ v,
                "the softmax runs over the keys, the last axis (dim=-1): each query's weights sum to 1; yours "
                "normalise over the queries.",
            ),
        ]

        def nan_hint(got, bad):
            if torch.isnan(got).any():
                return (
                    "a query whose keys are all masked gets a softmax of -inf only, which is NaN: return zeros for it."
                )
            return None

        call = f"{function_name(fn)}(q, k, v, keep) with q of shape {q_shape}, k and v of shape {kv_shape}"
        axes = ("batch", "head")[: len(q_shape) - 2] + ("query", "channel")
        sdpa = Forbidden(F, "scaled_dot_product_attention", "F.scaled_dot_product_attention")
        compare_tensors(call_reader(fn, q, k, v, keep, forbidden=[sdpa]), want, call, axes, [nan_hint, *hints])


@register_check
def check_patchify(fn: Callable) -> None:
    """``fn(images, p)``: cut ``(B, C, H, W)`` images into ``p x p`` patches and flatten each into a
    token: ``(B, N, C*p*p)``, patches in reading order (row by row), each flattened in the order of
    ``nn.Conv2d``'s weight ``(C, p, p)``, so that ``tokens @ conv.weight.flatten(1).T`` equals the
    patch stem ``nn.Conv2d(C, D, p, stride=p)``."""
    g = torch.Generator().manual_seed(2)
    for B, C, H, W, p in [(2, 3, 8, 8, 4), (1, 3, 12, 8, 4), (2, 2, 6, 9, 3)]:
        x = randn(g, B, C, H, W)
        want = F.unfold(x, p, stride=p).transpose(1, 2)
        h, w = H // p, W // p
        patches = x.reshape(B, C, h, p, w, p)
        hints = [
            (
                patches.permute(0, 2, 4, 3, 5, 1).reshape(B, h * w, C * p * p),
                "each patch must be flattened channel first, in the (C, p, p) order of nn.Conv2d's weight; yours is (p, p, C).",
            ),
            (
                patches.permute(0, 4, 2, 1, 3, 5).reshape(B, h * w, C * p * p),
                "list the patches row by row (left to right, then down); yours go column by column.",
            ),
            (want.transpose(1, 2), "tokens go along dimension 1: return (B, N, C*p*p)."),
        ]
        call = f"{function_name(fn)}(images, {p}) with images of shape {(B, C, H, W)}"
        unfold = Forbidden(F, "unfold", "F.unfold (or nn.Unfold)")
        compare_tensors(call_reader(fn, x, p, forbidden=[unfold]), want, call, ("batch", "token", "feature"), hints)


@register_check
def check_attention_macs(fn: Callable) -> None:
    """``fn(n_tokens, dim)``: multiply-accumulates of ``coatlib``'s ``MultiHeadAttention(dim)`` (q, k, v
    and output projections plus the two attention products) on one sequence of ``n_tokens`` tokens."""
    for n, dim in [(196, 64), (49, 256), (1024, 32), (16, 96)]:
        want = count_macs(MultiHeadAttention(dim), torch.zeros(1, n, dim))
        hints = [
            (
                4 * n * dim * dim,
                "that is the four projections only; add the attention products q k^T and A v, which grow with n^2.",
            ),
            (
                2 * n * n * dim,
                "that is the attention products only; add the projections (q, k, v and the output: 4 n dim^2).",
            ),
            (3 * n * dim * dim + 2 * n * n * dim, "you left out the output projection (a dim x dim linear layer)."),
            (
                4 * n * dim * dim + n * n * dim,
                "there are two attention products: q k^T (n x n scores) and A v; each costs n^2 dim.",
            ),
        ]
        compare_number(call_reader(fn, n, dim, forbidden=counters()), want, f"{function_name(fn)}({n}, {dim})", hints)
