"""Checks for the exercises of chapter 7: scaling up."""

from __future__ import annotations

import copy
import math
import numbers
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.data import DistributedSampler

import coatlib.memory
from coatlib.teaching.exercises.checking import (
    Forbidden,
    Wrong,
    call_reader,
    compare_number,
    compare_tensors,
    function_name,
    randn,
    register_check,
)


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


@register_check
def check_channels_last_strides(fn: Callable) -> None:
    """``fn(shape)``: the strides, in elements, of a tensor of ``shape = (N, C, H, W)`` stored contiguously
    in the channels-last layout (memory order N, H, W, C), listed in the order of the dimensions N, C, H, W,
    as ``x.contiguous(memory_format=torch.channels_last).stride()`` gives them."""
    for shape in [(2, 3, 4, 5), (1, 8, 7, 7), (4, 16, 2, 3), (3, 2, 5, 1)]:
        N, C, H, W = shape
        want = list(torch.empty(shape).contiguous(memory_format=torch.channels_last).stride())
        hints = [
            (
                [C * H * W, H * W, W, 1],
                "those are the strides of the usual (NCHW, contiguous) layout. In channels-last "
                "the channels of one pixel are neighbours in memory: the stride of C is 1.",
            ),
            (
                [H * W * C, W * C, C, 1],
                "those are the strides in memory order (N, H, W, C); list them in the order of "
                "the tensor's dimensions (N, C, H, W), as x.stride() does.",
            ),
            (
                [H * W * C, 1, W, C],
                "the stride of H is the number of elements in one row of pixels, W * C; the stride "
                "of W is C (the next pixel starts C elements later).",
            ),
        ]
        asking = Forbidden(torch.Tensor, "stride", "Tensor.stride (asking PyTorch)")
        _compare_sequence(call_reader(fn, shape, forbidden=[asking]), want, f"{function_name(fn)}({shape})", hints)


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


@register_check
def check_round_to_bf16(fn: Callable) -> None:
    """``fn(x)``: the float32 tensor ``x`` rounded to the nearest bfloat16 number (ties to the even one), as
    a float32 tensor, computed on the bits (``x.view(torch.int32)``) without bfloat16 tensors. For finite
    ``x`` this equals ``x.to(torch.bfloat16).float()``."""
    g = torch.Generator().manual_seed(8)
    x = randn(g, 4000) * 10.0 ** torch.randint(-30, 30, (4000,), generator=g)
    kept = torch.randint(-(2**15), 2**15, (64,), generator=g, dtype=torch.int32) * 2**16  # bf16 bit patterns ...
    ties = (kept + 2**15).view(torch.float32)  # ... and the float32 numbers exactly halfway between two of them
    x = torch.cat([x, ties[ties.isfinite()], torch.tensor([0.0, -0.0, 1.0, -1.5, 3.0e38, 1e-40])])
    want = x.to(torch.bfloat16).float()
    bits = x.view(torch.int32)
    hints = [
        (
            (bits & -(2**16)).view(torch.float32),
            "you cut off the low 16 bits, which rounds towards zero; round to the "
            "nearest: add 0x7FFF plus the lowest kept bit ((bits >> 16) & 1) before cutting.",
        ),
        (
            ((bits + 2**15) & -(2**16)).view(torch.float32),
            "right except exactly halfway between two bfloat16 numbers: "
            "ties go to the even one. Add 0x7FFF + ((bits >> 16) & 1) instead of 0x8000.",
        ),
        (
            x.half().float(),
            "that is float16 (5 exponent bits, 10 mantissa bits); bfloat16 keeps float32's 8 exponent "
            "bits and 7 mantissa bits: the upper 16 bits of the float32.",
        ),
    ]
    spy = _DtypeSpy(torch.bfloat16)
    with spy:
        got = call_reader(fn, x.clone())
    if spy.seen:
        raise Wrong(
            f"{function_name(fn)} made a bfloat16 tensor. Do the rounding yourself with integer operations on "
            f"x.view(torch.int32), then .view(torch.float32); the check compares with PyTorch's conversion."
        )
    if isinstance(got, torch.Tensor) and got.dtype != torch.float32:
        raise Wrong(
            f"{function_name(fn)} returned a {got.dtype} tensor; return float32 (use .view(torch.float32) on the bits)."
        )
    compare_tensors(got, want, f"{function_name(fn)}(x) for {len(x)} numbers", ("element",), hints, atol=0.0)


@register_check
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
                (
                    padded[rank * per : (rank + 1) * per],
                    "DistributedSampler deals the samples out like cards: every "
                    "world-th index starting at rank, not a consecutive block.",
                ),
                (
                    list(range(rank, n, world)),
                    f"every process must get the same number of samples, ceil(n / world) = "
                    f"{per}, or they would disagree on the number of steps: pad by repeating the first indices.",
                ),
                (
                    list(range(rank, n - n % world, world)),
                    "DistributedSampler (drop_last=False) pads rather than drops: "
                    "repeat the first indices until there are ceil(n / world) * world of them.",
                ),
            ]
            sampler = Forbidden(DistributedSampler, "__init__", "DistributedSampler")
            got = call_reader(fn, n, world, rank, forbidden=[sampler])
            _compare_sequence(got, want, f"{function_name(fn)}({n}, {world}, {rank})", hints)


def _shard_gradients(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    world: int,
    reduce: str = "mean",
    shards: int | None = None,
) -> list[torch.Tensor]:
    """Gradients of the mean cross-entropy on each of ``world`` consecutive shares of the batch, averaged
    (DDP's all-reduce), or summed, or of the first ``shards`` shares only."""
    params = list(model.parameters())
    pieces = list(zip(images.chunk(world), labels.chunk(world)))[:shards]
    grads = [torch.autograd.grad(F.cross_entropy(model(x), y), params) for x, y in pieces]
    total = [torch.stack(g).sum(0) for g in zip(*grads)]
    return [t / world for t in total] if reduce == "mean" else total


@register_check
def check_ddp_gradient(fn: Callable) -> None:
    """``fn(model, images, labels, world)``: the gradient every process holds after DDP's all-reduce when
    ``world`` processes each compute the mean cross-entropy of ``model`` on their share of the batch, the
    consecutive shares ``images.chunk(world)``: a list with one tensor per parameter, in the order of
    ``model.parameters()``. The model (in training mode) has BatchNorm, which normalises each share on its own."""
    g = torch.Generator().manual_seed(9)
    with torch.random.fork_rng():  # building the model must not move the reader's random numbers
        torch.manual_seed(9)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 5),
        ).train()
    names = [name for name, _ in model.named_parameters()]
    for world, batch in [(2, 8), (4, 8), (3, 12)]:
        images, labels = randn(g, batch, 3, 6, 6), torch.randint(0, 5, (batch,), generator=g)
        want = _shard_gradients(model, images, labels, world)
        full = _shard_gradients(model, images, labels, 1)
        summed = _shard_gradients(model, images, labels, world, reduce="sum")
        first = _shard_gradients(model, images, labels, world, reduce="sum", shards=1)
        call = f"{function_name(fn)}(model, {batch} images, labels, world={world})"
        got = call_reader(fn, copy.deepcopy(model), images.clone(), labels.clone(), world)
        if not isinstance(got, (list, tuple)) or len(got) != len(want):
            raise Wrong(
                f"{call} returned {type(got).__name__} of length {len(got) if hasattr(got, '__len__') else '-'}; "
                f"return a list of {len(want)} tensors, one per parameter ({', '.join(names)})."
            )
        for i, name in enumerate(names):
            hints = [
                (
                    full[i],
                    "that is the gradient of one process on the whole batch. BatchNorm normalises each "
                    "process's share with that share's statistics: compute the gradient on every share, then average.",
                ),
                (
                    summed[i],
                    f"DDP averages the processes' gradients (all-reduce sum, then / world): yours is "
                    f"world = {world} times too large.",
                ),
                (first[i], "that is the gradient of the first share only; average over all world shares."),
            ]
            axes = tuple(f"dim {d}" for d in range(want[i].ndim))
            compare_tensors(got[i], want[i], f"{call}, gradient of {name}", axes, hints)


@register_check
def check_fsdp_state_bytes(fn: Callable) -> None:
    """``fn(n_params, gpus)``: the bytes of float32 weights, gradients and AdamW states (its two moving
    averages) that one of ``gpus`` GPUs holds when FSDP shards a model of ``n_params`` parameters into
    equal shards of ``ceil(n_params / gpus)`` parameters: 16 bytes per parameter of the shard, as
    ``coatlib.memory.plan`` counts them (before the working set of gathered blocks)."""
    for n, gpus in [(312_774, 2), (2_444_188_024, 8), (1_000, 3), (10, 4), (75_000_000, 1)]:
        shard = math.ceil(n / gpus)
        hints = [
            (16 * n, "that is what every GPU holds under DDP, a whole copy; FSDP gives each GPU 1/gpus of it."),
            (
                12 * shard,
                "you left out one of the three: weights 4, gradients 4 and AdamW's two states 8 bytes per parameter.",
            ),
            (
                8 * shard,
                "weights and gradients take 4 bytes each, and AdamW keeps two float32 moving averages "
                "(8 bytes) besides.",
            ),
            (4 * shard, "that is the weights alone; the gradients (4) and AdamW's two states (8) are sharded too."),
            (
                16 * (n // gpus),
                f"round up: {n:,} parameters do not split evenly over {gpus} GPUs, and the shards "
                f"are equal (the last one padded), ceil(n_params / gpus).",
            ),
        ]
        planner = Forbidden(coatlib.memory, "plan", "coatlib.memory.plan")
        compare_number(
            call_reader(fn, n, gpus, forbidden=[planner]), 16 * shard, f"{function_name(fn)}({n:,}, {gpus})", hints
        )
