"""Automatic checks for the book's exercises.

Every code exercise asks for a function and has a check here, called in the
notebook right after the exercise::

    check_depthwise_conv(depthwise_conv)

The check calls the reader's function on random inputs (fixed seed, several
shapes), compares each answer with the reference and prints one report line:
``check_depthwise_conv: correct``, or ``check_depthwise_conv: not yet.``
followed by what is wrong (a shape, the first position where the values
differ, the values there) and a hint when the answer matches a common mistake.

A wrong answer never raises: the check returns a :class:`CheckResult` (falsy
when wrong) so the notebook goes on. ``CHECKS`` maps each check's name to its
function, for graders. The cell conventions of exercises and solutions are
described in :mod:`coatlib.book`.
"""
from __future__ import annotations

import copy
import functools
import math
import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.data import DistributedSampler

from coatlib.attention import MultiHeadAttention, RelativeAttention, relative_position_index, resize_table
from coatlib.flops import count_macs
from coatlib.layers import MBConv, make_divisible
from coatlib.models.coatnet import TransformerBlock
from coatlib.models.swin import WindowAttention, shift_mask, window_partition


class Wrong(Exception):
    """Raised inside a check; its message tells the reader what is wrong."""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ``bool(result)`` is ``passed``; ``str(result)`` is the report."""

    name: str
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return f"{self.name}: {self.message}"

    def _ipython_display_(self) -> None:
        """Show nothing in a notebook: the check printed its report when it ran."""


CHECKS: dict[str, Callable[..., CheckResult]] = {}


def _check(body: Callable[[Callable], None]) -> Callable[..., CheckResult]:
    """Turn ``body(fn)``, which raises :class:`Wrong`, into a check that prints and returns a report."""
    name = body.__name__

    @functools.wraps(body)
    def check(fn: Callable, verbose: bool = True) -> CheckResult:
        try:
            if not callable(fn):
                raise Wrong(f"expected your function, got {type(fn).__name__}: pass the function itself, without calling it.")
            body(fn)
            result = CheckResult(name, True, "correct")
        except Wrong as e:
            result = CheckResult(name, False, f"not yet. {e}")
        if verbose:
            print(result)
        return result

    CHECKS[name] = check
    return check


def _call(fn: Callable, *args):
    """Call the reader's function; turn any exception into a report that names the call."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise Wrong(f"{_name(fn)} raises NotImplementedError: replace the stub with your code.") from None
    except Exception as e:  # the reader's bug, reported, not raised
        raise Wrong(f"{_name(fn)}({_describe(args)}) raised {type(e).__name__}: {e}") from None


def _name(fn: Callable) -> str:
    return getattr(fn, "__name__", "your function")


def _describe(args) -> str:
    return ", ".join(f"tensor of shape {tuple(a.shape)}" if isinstance(a, torch.Tensor) else repr(a) for a in args)


Hint = tuple[torch.Tensor, str] | Callable[[torch.Tensor, torch.Tensor], str | None]


def _compare(got, want: torch.Tensor, call: str, axes: Sequence[str], hints: Sequence[Hint] = (), atol: float = 1e-5):
    """Raise :class:`Wrong` naming the first difference between ``got`` and ``want``.

    ``hints`` are ``(mistaken_output, hint)`` pairs, whose hint is given when
    ``got`` equals that mistaken output, or functions ``(got, bad_mask) -> hint | None``.
    """
    if not isinstance(got, torch.Tensor):
        raise Wrong(f"{call} returned a {type(got).__name__}; return a torch.Tensor of shape {tuple(want.shape)}.")
    got = got.detach().cpu()
    exact = not want.is_floating_point()
    if exact and got.is_floating_point():
        raise Wrong(f"{call} returned a {got.dtype} tensor; return integers (torch.long) that can index a table.")
    if got.shape != want.shape:
        msg = f"{call} returned shape {tuple(got.shape)}; expected {tuple(want.shape)} ({', '.join(axes)})."
        raise Wrong(msg + _hint(got, None, hints))
    got = got.to(want.dtype)
    bad = got != want if exact else ~torch.isclose(got, want, rtol=1e-4, atol=atol)
    if bad.any():
        pos = tuple(int(i) for i in bad.nonzero()[0])
        where = ", ".join(f"{a}={p}" for a, p in zip(axes, pos))
        g, w = got[pos].item(), want[pos].item()
        msg = (
            f"{call}: {int(bad.sum())} of {bad.numel()} values are wrong; the first at [{where}] is "
            f"{g:.5g}, expected {w:.5g}."
        )
        raise Wrong(msg + _hint(got, bad, hints))


def _hint(got: torch.Tensor, bad: torch.Tensor | None, hints: Sequence[Hint]) -> str:
    for hint in hints:
        if callable(hint):
            text = hint(got, bad) if bad is not None else None
        else:
            mistaken, text = hint
            if mistaken.shape != got.shape or not torch.allclose(got.to(mistaken.dtype), mistaken, atol=1e-5):
                text = None
        if text:
            return " Hint: " + text
    return ""


def _compare_number(got, want: int, call: str, hints: Sequence[tuple[int, str]] = ()) -> None:
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if not isinstance(got, numbers.Real) or isinstance(got, bool):
        raise Wrong(f"{call} returned a {type(got).__name__}; return a number.")
    if got != want:
        hint = next((" Hint: " + text for value, text in hints if got == value), "")
        raise Wrong(f"{call} returned {got:,}, expected {want:,}.{hint}")


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=g)


# ---------------------------------------------------------------------------
# Chapter 1: depthwise convolution


@_check
def check_depthwise_conv(fn: Callable) -> None:
    """``fn(x, weight)``: depthwise convolution of ``x (B, C, H, W)`` with ``weight (C, 1, k, k)``,
    stride 1, zero padding ``k // 2``, no bias: the output of ``F.conv2d(x, weight, padding=k // 2, groups=C)``."""
    g = torch.Generator().manual_seed(0)
    for B, C, H, W, k in [(2, 3, 8, 8, 3), (1, 4, 5, 7, 5), (2, 6, 7, 6, 3)]:
        x, w = _randn(g, B, C, H, W), _randn(g, C, 1, k, k)
        p = k // 2
        want = F.conv2d(x, w, padding=p, groups=C)
        got = _call(fn, x.clone(), w.clone())
        hints: list[Hint] = [
            (F.conv2d(x, w, groups=C), f"no padding: pad x with k // 2 = {p} zeros on every side, so that the output keeps the input's size."),
            (F.conv2d(x, w.flip(-2, -1), padding=p, groups=C),
             "you flipped the kernel. PyTorch's conv2d (and this book) does not flip: "
             "y[c, r, s] = sum over a, b of w[c, 0, a, b] * x[c, r + a - k//2, s + b - k//2]."),
            (F.conv2d(x, w.transpose(-2, -1), padding=p, groups=C), "rows and columns of the kernel are swapped."),
            (F.conv2d(x.sum(1, keepdim=True).expand(-1, C, -1, -1), w, padding=p, groups=C),
             "you summed over the input channels. Depthwise means output channel c sees input channel c only."),
            (F.conv2d(x, w[:1].expand(C, -1, -1, -1), padding=p, groups=C), "every channel used the kernel of channel 0; channel c uses weight[c, 0]."),
            lambda got, bad: _border_only(bad, p),
        ]
        call = f"{_name(fn)}(x, weight) with x of shape {(B, C, H, W)} and a {k}x{k} kernel"
        _compare(got, want, call, ("batch", "channel", "row", "col"), hints, atol=1e-4)


def _border_only(bad: torch.Tensor, p: int) -> str | None:
    inner = bad[..., p:-p, p:-p] if p else bad
    if p and not inner.any():
        return f"the values are right inside and wrong only within {p} pixel(s) of the border: pad with zeros."
    return None


@_check
def check_mbconv_macs(fn: Callable) -> None:
    """``fn(c, k, h, w)``: multiply-accumulates of ``coatlib``'s CoAtNet MBConv block with ``c`` input and
    output channels on an ``h x w`` map: ``MBConv(c, c, mid_chs=4 * c, kernel_size=k, se_chs=c // 4)``
    (stride 1), i.e. a 1x1 expansion to 4c channels, a ``k x k`` depthwise conv, squeeze-excitation on
    the pooled vector (4c -> c/4 -> 4c) and a 1x1 projection back to c. Norms, activations, biases and
    the residual sum are not counted."""
    for c, k, h, w in [(96, 3, 56, 56), (64, 5, 14, 14), (32, 3, 20, 30)]:
        block = MBConv(c, c, mid_chs=4 * c, kernel_size=k, se_chs=c // 4).eval()
        want = count_macs(block, torch.zeros(1, c, h, w))
        e, r = 4 * c, c // 4
        convs = h * w * (c * e + e * k * k + e * c)
        hints = [
            (convs, "add the squeeze-excitation: two 1x1 convs (4c -> c/4 -> 4c) on the pooled vector."),
            (convs + h * w * 2 * e * r, "squeeze-excitation runs once per image, on the averaged vector, not at every position."),
            (h * w * (c * e + c * k * k + e * c) + 2 * e * r, "the depthwise conv runs on the expanded 4c channels, not on c."),
            (h * w * e * k * k + 2 * e * r, "add the two 1x1 convs: the expansion c -> 4c and the projection 4c -> c."),
            (h * w * c * c * k * k, "that is a standard k x k convolution from c to c channels."),
        ]
        _compare_number(_call(fn, c, k, h, w), want, f"{_name(fn)}{(c, k, h, w)}", hints)


def receptive_field(kernel_sizes: Sequence[int], strides: Sequence[int]) -> int:
    """Receptive field of a stack of convolutions: each layer adds ``(k - 1)`` times the product of
    the strides before it (the distance, in input pixels, between its neighbouring inputs)."""
    size, step = 1, 1
    for k, s in zip(kernel_sizes, strides):
        size += (k - 1) * step
        step *= s
    return size


@_check
def check_receptive_field(fn: Callable) -> None:
    """``fn(kernel_sizes, strides)``: receptive field (in input pixels, along one axis) of one output
    of a stack of convolutions applied in order."""
    cases = [([3], [1]), ([3, 3, 3], [1, 1, 1]), ([3, 3, 3], [2, 2, 1]), ([7, 3, 3, 3], [2, 2, 1, 1]), ([5, 3], [1, 2]), ([2, 3, 3], [2, 1, 2])]
    for ks, ss in cases:
        want = receptive_field(ks, ss)
        steps_after = [1]
        for s in ss:
            steps_after.append(steps_after[-1] * s)
        hints = [
            (1 + sum(k - 1 for k in ks), "the strides matter: after a stride-2 layer, neighbouring inputs of the next layer are 2 pixels apart."),
            (1 + sum((k - 1) * st for k, st in zip(ks, steps_after[1:])),
             "a layer's own stride does not widen its own window; it spreads the inputs of the layers after it."),
            (sum(ks), "a stack of two 3x3 convs sees 5 pixels, not 6: each layer adds k - 1."),
        ]
        _compare_number(_call(fn, list(ks), list(ss)), want, f"{_name(fn)}({ks}, {ss})", hints)


# ---------------------------------------------------------------------------
# Chapter 2: self-attention


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


# ---------------------------------------------------------------------------
# Chapter 3: relative attention


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


# ---------------------------------------------------------------------------
# Chapter 4: vertical layouts


@_check
def check_attention_memory(fn: Callable) -> None:
    """``fn(image_size, stage, width, batch)``: bytes of the float32 attention weights ``(batch, heads, N, N)``
    of one relative-attention layer in stage ``S{stage}`` (1..4) of a CoAtNet for ``image_size`` images,
    ``width`` channels, heads of size 32. S{stage} works on a map of ``image_size / 2**(stage + 1)`` pixels a
    side (the stem S0 halves the image, then every stage). Measured on the ``meta`` device."""
    for image_size, stage, width, batch in [(224, 1, 96, 1), (224, 3, 384, 8), (384, 2, 192, 2), (512, 4, 1024, 4)]:
        side = image_size // 2 ** (stage + 1)
        with torch.device("meta"):  # shapes only: no memory is used
            layer = RelativeAttention(width, head_dim=32, map_size=side)
            weights = layer.attention_weights(torch.zeros(batch, side, side, width))
        want = weights.numel() * weights.element_size()
        heads, n = width // 32, side * side
        hints = [
            (batch * n * n * 4, f"every head has its own N x N matrix: multiply by the number of heads, width / 32 = {heads}."),
            (batch * heads * n * 4, "the weights pair every position with every position: N x N numbers per head, not N."),
            (batch * heads * n * n, "a float32 number takes 4 bytes."),
            (heads * n * n * 4, "every image of the batch has its own weights: multiply by the batch size."),
            (batch * heads * (4 * n) ** 2 * 4,
             f"S{stage} works on a map of image_size / 2**(stage + 1) = {side} pixels a side: the stem halves the image first."),
            (batch * heads * (n // 4) ** 2 * 4, f"S{stage} works on a map of image_size / 2**(stage + 1) = {side} pixels a side."),
        ]
        _compare_number(_call(fn, image_size, stage, width, batch), want, f"{_name(fn)}{(image_size, stage, width, batch)}", hints)


@_check
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
            (4 * n * dim * dim + 2 * n * n * dim,
             "that is global attention over all N = height x width positions; in a window every query sees window^2 keys only."),
            (2 * n * window * window * dim, "that is the attention products only; add the four projections (q, k, v and output: 4 N dim^2)."),
            (4 * n * dim * dim, "that is the projections only; add q k^T and A v inside the windows (N window^2 dim each)."),
            (4 * n * dim * dim + 2 * n * window * dim, "a window holds window x window = window^2 tokens, not window."),
            (4 * n * dim * dim + n * window * window * dim, "there are two attention products, q k^T and A v, each N window^2 dim."),
        ]
        _compare_number(_call(fn, h, w, window, dim), want, f"{_name(fn)}{(h, w, window, dim)}", hints)


@_check
def check_window_partition(fn: Callable) -> None:
    """``fn(x, window)``: cut a channels-last map ``x (B, H, W, C)`` into non-overlapping ``window x window``
    windows, ``(B * H/window * W/window, window * window, C)``: the windows in reading order (image by image,
    then row by row), the tokens of each window in reading order too, as ``coatlib.models.swin.window_partition``."""
    g = torch.Generator().manual_seed(5)
    for B, H, W, C, w in [(2, 4, 6, 3, 2), (1, 6, 6, 2, 3), (2, 8, 4, 5, 4)]:
        x = _randn(g, B, H, W, C)
        want = window_partition(x, w)
        grid = x.view(B, H // w, w, W // w, w, C)  # (batch, window row, row in window, window column, column in window, C)
        hints = [
            (x.reshape(-1, w * w, C), "a plain reshape cuts each image into strips of whole rows; split H into (H/window, window) "
             "and W into (W/window, window), and bring the two in-window axes together before flattening."),
            (grid.permute(0, 3, 1, 2, 4, 5).reshape(-1, w * w, C), "list the windows row by row (left to right, then down); yours go column by column."),
            (grid.permute(0, 1, 3, 4, 2, 5).reshape(-1, w * w, C), "list the tokens inside a window row by row; yours go column by column."),
        ]
        call = f"{_name(fn)}(x, {w}) with x of shape {(B, H, W, C)}"
        _compare(_call(fn, x, w), want, call, ("window", "token", "channel"), hints)


# ---------------------------------------------------------------------------
# Chapter 5: CoAtNet


@_check
def check_coatnet_head(fn: Callable) -> None:
    """``fn(model, features)``: the head of a CoAtNet ``model`` applied to the output of its last stage,
    ``features`` of shape ``(B, H, W, D)`` (channels last, as ``model.forward_features`` returns it):
    global average pooling over the positions, ``model.norm`` (LayerNorm), ``model.pre_logits`` (linear
    and tanh) and ``model.head`` (the classifier). Returns the logits ``(B, classes)``."""
    from coatlib.registry import create_model

    g = torch.Generator().manual_seed(6)
    with torch.random.fork_rng():  # building the model must not move the reader's random numbers
        torch.manual_seed(6)
        model = create_model("coatnet_pico", num_classes=7, image_size=64).eval()
    with torch.no_grad():
        model.norm.weight.copy_(1 + _randn(g, 128))  # a LayerNorm that is not the identity
        model.norm.bias.copy_(_randn(g, 128))
        features = 3 * _randn(g, 2, 2, 2, 128) + 1
        want = model.head(model.pre_logits(model.norm(features.mean((1, 2)))))
        hints = [
            (model.head(model.pre_logits(features.mean((1, 2)))), "apply model.norm (the LayerNorm) to the pooled features."),
            (model.head(model.pre_logits(model.norm(features).mean((1, 2)))), "pool first, then normalise: the LayerNorm acts on the pooled vector."),
            (model.head(model.norm(features.mean((1, 2)))), "apply model.pre_logits (linear + tanh) before the classifier."),
            (model.head(model.pre_logits(model.norm(features.amax((1, 2))))), "the pooling is an average over the positions, not a maximum."),
        ]
        _compare(_call(fn, model, features), want, f"{_name(fn)}(model, features of shape (2, 2, 2, 128))", ("image", "class"), hints)


@_check
def check_transformer_params(fn: Callable) -> None:
    """``fn(in_dim, out_dim, map_size, head_dim)``: parameters of one CoAtNet Transformer block
    (``coatlib.models.coatnet.TransformerBlock``) from ``in_dim`` to ``out_dim`` channels on a
    ``map_size = (H, W)`` map, with heads of ``head_dim`` channels: the shortcut projection (when the
    width changes), two LayerNorms, q/k/v and output projections, one bias table per head and the FFN."""
    for cin, cout, (h, w), hd in [(192, 384, (14, 14), 32), (384, 384, (14, 14), 32), (384, 768, (7, 7), 32), (32, 64, (4, 6), 16)]:
        with torch.device("meta"):
            block = TransformerBlock(cin, cout, (h, w), stride=1 if cin == cout else 2, head_dim=hd)
        want = sum(p.numel() for p in block.parameters())
        heads, table, full = cout // hd, (2 * h - 1) * (2 * w - 1), cout // hd * (2 * h - 1) * (2 * w - 1)
        shortcut = cin * cout + cout if cin != cout else 0
        hints = [
            (want - full, "add the relative bias tables: one table of (2H - 1)(2W - 1) scalars per head."),
            (want - full + heads * h * w, "a table holds one scalar per offset i - j: (2H - 1)(2W - 1) of them, not H W."),
            (want - full + table, f"every head has its own table: multiply by the number of heads, out_dim / head_dim = {heads}."),
            (want - full + 8 * table, f"the number of heads is out_dim / head_dim = {heads}, not a fixed 8."),
            (want - shortcut, "when the width changes, the shortcut projects Pool(x) with a linear layer (in_dim x out_dim weights + bias)."),
            (want - (8 * cout + 4) * cout + (8 * cout + 4) * cin, "the FFN expands the block's output width by 4: out_dim -> 4 out_dim -> out_dim."),
        ]
        _compare_number(_call(fn, cin, cout, (h, w), hd), want, f"{_name(fn)}({cin}, {cout}, {(h, w)}, {hd})", hints)


@_check
def check_resize_table(fn: Callable) -> None:
    """``fn(table, map_size)``: a relative-bias table ``(heads, 2H-1, 2W-1)`` made for an ``H x W`` map,
    resized for a ``map_size = (H', W')`` map to ``(heads, 2H'-1, 2W'-1)`` by bilinear interpolation with
    the corner entries (the largest offsets) kept in place, as ``coatlib.attention.resize_table`` does."""
    g = torch.Generator().manual_seed(7)
    for heads, (h, w), (h2, w2) in [(2, (7, 7), (12, 12)), (3, (4, 6), (8, 9)), (1, (14, 14), (7, 7))]:
        table = _randn(g, heads, 2 * h - 1, 2 * w - 1)
        size = (2 * h2 - 1, 2 * w2 - 1)
        want = resize_table(table, size)
        hints = [
            (F.interpolate(table[None], size=size, mode="bilinear", align_corners=False)[0],
             "keep the corners in place (align_corners=True): the largest offsets of the old map become the largest of the new."),
            (F.interpolate(table[None], size=size, mode="nearest")[0], "interpolate bilinearly, not by copying the nearest entry."),
            (F.interpolate(table[None], size=size, mode="bicubic", align_corners=True)[0], "interpolate bilinearly, not bicubically."),
        ]
        call = f"{_name(fn)}(table of shape {tuple(table.shape)}, {(h2, w2)})"
        got = _call(fn, table, (h2, w2))
        if isinstance(got, torch.Tensor) and tuple(got.shape) == (heads, h2, w2):
            raise Wrong(f"{call} returned shape {tuple(got.shape)}; the table of an H' x W' map has one entry per offset: "
                        f"(heads, 2H' - 1, 2W' - 1) = {(heads, *size)}.")
        _compare(got, want, call, ("head", "row", "col"), hints)


# ---------------------------------------------------------------------------
# Chapter 7: scaling up


def _compare_sequence(got, want: list, call: str, hints: Sequence[tuple[list, str]] = ()) -> None:
    """Raise :class:`Wrong` unless ``got`` is a sequence of ints equal to ``want``."""
    if isinstance(got, torch.Tensor):
        got = got.tolist()
    if not isinstance(got, (list, tuple, range)) or not all(isinstance(v, numbers.Integral) for v in got):
        raise Wrong(f"{call} returned {got!r}; return a tuple or list of ints.")
    got = [int(v) for v in got]
    if got != want:
        hint = next((" Hint: " + text for mistaken, text in hints if got == mistaken), "")
        raise Wrong(f"{call} returned {got}, expected {want}.{hint}")


@_check
def check_channels_last_strides(fn: Callable) -> None:
    """``fn(shape)``: the strides, in elements, of a tensor of ``shape = (N, C, H, W)`` stored contiguously
    in the channels-last layout (memory order N, H, W, C), listed in the order of the dimensions N, C, H, W,
    as ``x.contiguous(memory_format=torch.channels_last).stride()`` gives them."""
    for shape in [(2, 3, 4, 5), (1, 8, 7, 7), (4, 16, 2, 3), (3, 2, 5, 1)]:
        N, C, H, W = shape
        want = list(torch.empty(shape).contiguous(memory_format=torch.channels_last).stride())
        hints = [
            ([C * H * W, H * W, W, 1], "those are the strides of the usual (NCHW, contiguous) layout. In channels-last "
             "the channels of one pixel are neighbours in memory: the stride of C is 1."),
            ([H * W * C, W * C, C, 1], "those are the strides in memory order (N, H, W, C); list them in the order of "
             "the tensor's dimensions (N, C, H, W), as x.stride() does."),
            ([H * W * C, 1, W, C], "the stride of H is the number of elements in one row of pixels, W * C; the stride "
             "of W is C (the next pixel starts C elements later)."),
        ]
        _compare_sequence(_call(fn, shape), want, f"{_name(fn)}({shape})", hints)


class _DtypeSpy(TorchFunctionMode):
    """Records whether any torch function returns a tensor of ``dtype``."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype, self.seen = dtype, False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        self.seen |= any(isinstance(t, torch.Tensor) and t.dtype == self.dtype for t in outs)
        return out


@_check
def check_round_to_bf16(fn: Callable) -> None:
    """``fn(x)``: the float32 tensor ``x`` rounded to the nearest bfloat16 number (ties to the even one), as
    a float32 tensor, computed on the bits (``x.view(torch.int32)``) without bfloat16 tensors. For finite
    ``x`` this equals ``x.to(torch.bfloat16).float()``."""
    g = torch.Generator().manual_seed(8)
    x = _randn(g, 4000) * 10.0 ** torch.randint(-30, 30, (4000,), generator=g)
    kept = torch.randint(-2**15, 2**15, (64,), generator=g, dtype=torch.int32) * 2**16  # bf16 bit patterns ...
    ties = (kept + 2**15).view(torch.float32)  # ... and the float32 numbers exactly halfway between two of them
    x = torch.cat([x, ties[ties.isfinite()], torch.tensor([0.0, -0.0, 1.0, -1.5, 3.0e38, 1e-40])])
    want = x.to(torch.bfloat16).float()
    bits = x.view(torch.int32)
    hints = [
        ((bits & -(2**16)).view(torch.float32), "you cut off the low 16 bits, which rounds towards zero; round to the "
         "nearest: add 0x7FFF plus the lowest kept bit ((bits >> 16) & 1) before cutting."),
        (((bits + 2**15) & -(2**16)).view(torch.float32), "right except exactly halfway between two bfloat16 numbers: "
         "ties go to the even one. Add 0x7FFF + ((bits >> 16) & 1) instead of 0x8000."),
        (x.half().float(), "that is float16 (5 exponent bits, 10 mantissa bits); bfloat16 keeps float32's 8 exponent "
         "bits and 7 mantissa bits: the upper 16 bits of the float32."),
    ]
    spy = _DtypeSpy(torch.bfloat16)
    with spy:
        got = _call(fn, x.clone())
    if spy.seen:
        raise Wrong(f"{_name(fn)} made a bfloat16 tensor. Do the rounding yourself with integer operations on "
                    f"x.view(torch.int32), then .view(torch.float32); the check compares with PyTorch's conversion.")
    if isinstance(got, torch.Tensor) and got.dtype != torch.float32:
        raise Wrong(f"{_name(fn)} returned a {got.dtype} tensor; return float32 (use .view(torch.float32) on the bits).")
    _compare(got, want, f"{_name(fn)}(x) for {len(x)} numbers", ("element",), hints, atol=0.0)


@_check
def check_shard_indices(fn: Callable) -> None:
    """``fn(n, world, rank)``: the indices of the samples that process ``rank`` of ``world`` processes gets in
    one epoch from ``DistributedSampler`` over ``n`` samples with ``shuffle=False``, as a list of ints in order:
    ``0 .. n-1`` padded to a multiple of ``world`` by repeating the first indices, then every ``world``-th one
    starting at ``rank``."""
    for n, world in [(10, 2), (10, 3), (7, 4), (16, 4), (3, 4)]:
        padded = [i % n for i in range(math.ceil(n / world) * world)]
        per = len(padded) // world
        for rank in range(world):
            want = list(DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False))
            hints = [
                (padded[rank * per : (rank + 1) * per], "DistributedSampler deals the samples out like cards: every "
                 "world-th index starting at rank, not a consecutive block."),
                (list(range(rank, n, world)), f"every process must get the same number of samples, ceil(n / world) = "
                 f"{per}, or they would disagree on the number of steps: pad by repeating the first indices."),
                (list(range(rank, n - n % world, world)), "DistributedSampler (drop_last=False) pads rather than drops: "
                 "repeat the first indices until there are ceil(n / world) * world of them."),
            ]
            _compare_sequence(_call(fn, n, world, rank), want, f"{_name(fn)}({n}, {world}, {rank})", hints)


def _shard_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, world: int,
                     reduce: str = "mean", shards: int | None = None) -> list[torch.Tensor]:
    """Gradients of the mean cross-entropy on each of ``world`` consecutive shares of the batch, averaged
    (DDP's all-reduce), or summed, or of the first ``shards`` shares only."""
    params = list(model.parameters())
    pieces = list(zip(images.chunk(world), labels.chunk(world)))[:shards]
    grads = [torch.autograd.grad(F.cross_entropy(model(x), y), params) for x, y in pieces]
    total = [torch.stack(g).sum(0) for g in zip(*grads)]
    return [t / world for t in total] if reduce == "mean" else total


@_check
def check_ddp_gradient(fn: Callable) -> None:
    """``fn(model, images, labels, world)``: the gradient every process holds after DDP's all-reduce when
    ``world`` processes each compute the mean cross-entropy of ``model`` on their share of the batch, the
    consecutive shares ``images.chunk(world)``: a list with one tensor per parameter, in the order of
    ``model.parameters()``. The model (in training mode) has BatchNorm, which normalises each share on its own."""
    g = torch.Generator().manual_seed(9)
    with torch.random.fork_rng():  # building the model must not move the reader's random numbers
        torch.manual_seed(9)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.GELU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).train()
    names = [name for name, _ in model.named_parameters()]
    for world, batch in [(2, 8), (4, 8), (3, 12)]:
        images, labels = _randn(g, batch, 3, 6, 6), torch.randint(0, 5, (batch,), generator=g)
        want = _shard_gradients(model, images, labels, world)
        full = _shard_gradients(model, images, labels, 1)
        summed = _shard_gradients(model, images, labels, world, reduce="sum")
        first = _shard_gradients(model, images, labels, world, reduce="sum", shards=1)
        call = f"{_name(fn)}(model, {batch} images, labels, world={world})"
        got = _call(fn, copy.deepcopy(model), images.clone(), labels.clone(), world)
        if not isinstance(got, (list, tuple)) or len(got) != len(want):
            raise Wrong(f"{call} returned {type(got).__name__} of length {len(got) if hasattr(got, '__len__') else '-'}; "
                        f"return a list of {len(want)} tensors, one per parameter ({', '.join(names)}).")
        for i, name in enumerate(names):
            hints = [
                (full[i], "that is the gradient of one process on the whole batch. BatchNorm normalises each "
                 "process's share with that share's statistics: compute the gradient on every share, then average."),
                (summed[i], f"DDP averages the processes' gradients (all-reduce sum, then / world): yours is "
                 f"world = {world} times too large."),
                (first[i], "that is the gradient of the first share only; average over all world shares."),
            ]
            axes = tuple(f"dim {d}" for d in range(want[i].ndim))
            _compare(got[i], want[i], f"{call}, gradient of {name}", axes, hints)


# ---------------------------------------------------------------------------
# Chapter 6: the family tree


@_check
def check_scale_stage(fn: Callable) -> None:
    """``fn(channels, layers, width, depth)``: one row of EfficientNet-B0's table scaled by the compound
    coefficients ``width`` and ``depth``: ``(make_divisible(channels * width), ceil(layers * depth))``, the
    channels rounded to the nearest multiple of 8 but never more than 10% down, the layers rounded up."""
    cases = [(16, 1, 1.0, 1.0), (24, 2, 1.1, 1.2), (40, 2, 1.4, 1.8), (112, 3, 1.1, 1.2), (80, 3, 1.8, 2.6),
             (16, 1, 1.8, 2.6), (320, 1, 2.0, 3.1), (24, 2, 1.6, 2.2)]
    for channels, layers, width, depth in cases:
        want = (make_divisible(channels * width), math.ceil(layers * depth))
        call = f"{_name(fn)}{(channels, layers, width, depth)}"
        got = _call(fn, channels, layers, width, depth)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise Wrong(f"{call} returned {got!r}; return a pair (channels, layers).")
        c = channels * width
        _compare_number(got[0], want[0], f"{call}, channels", [
            (round(c), "round the channels to a multiple of 8 (hardware likes it): make_divisible(channels * width)."),
            (int(c) // 8 * 8, "round to the *nearest* multiple of 8 (add 4 before flooring), not down."),
            (int(c), "round the channels to a multiple of 8 (hardware likes it): make_divisible(channels * width)."),
        ])
        _compare_number(got[1], want[1], f"{call}, layers", [
            (round(layers * depth), "round the number of layers *up* (math.ceil): a stage never gets fewer blocks than depth x layers."),
            (int(layers * depth), "round the number of layers *up* (math.ceil), not down."),
        ])


@_check
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
        call = f"{_name(fn)}{(h, w, win, s)}"
        got = _call(fn, h, w, win, s)
        if isinstance(got, torch.Tensor) and got.dtype != torch.bool:
            raise Wrong(f"{call} returned a {got.dtype} tensor; return a bool tensor, True where attention is masked.")
        n = h // win * (w // win)
        hints = [
            (~want, "True must mark the pairs from *different* regions (the ones that may not attend)."),
            (torch.zeros_like(want), "the map is shifted: the last windows hold tokens of up to 3 x 3 regions of the original map."),
            (labelled(h, w, win, lambda L: (torch.arange(L) >= win).long() + (torch.arange(L) >= s).long()),
             "the regions are [0, L - window), [L - window, L - shift) and [L - shift, L) along each axis: the "
             "wrapped-around tokens sit at the end of the shifted map."),
            (want.view(h // win, w // win, win * win, win * win).transpose(0, 1).reshape(n, win * win, win * win),
             "list the windows in reading order (row of windows by row of windows), as window_partition does."),
        ]
        _compare(got, want, call, ("window", "query token", "key token"), hints)
