"""Model summaries (torchinfo), compute counts (``torch.utils.flop_counter``) and measured time."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from coatlib.layers import pair


def _example_input(model: nn.Module, image_size, batch_size: int = 1, in_chans: int | None = None) -> torch.Tensor:
    p = next(model.parameters())
    in_chans = in_chans or getattr(model, "in_chans", 3)
    return torch.zeros(batch_size, in_chans, *pair(image_size), device=p.device, dtype=p.dtype)


def _cpu_flash_attention(query, key, value, *args, **kwargs) -> int:  # arguments arrive as shapes
    return sdpa_flop_count(query, key, value)


def _cpu_flash_attention_backward(grad_out, query, key, value, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode knows the CUDA attention kernels; teach it the fused CPU kernel too.
_ATTENTION_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_attention_backward,
}


def count_macs(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward call ``module(*inputs)``, for any module and inputs.

    ``FlopCounterMode`` counts 2 FLOPs per multiply-add (matmuls, convolutions
    and fused attention), so the total is halved. Elementwise ops are not
    counted, as in the papers.
    """
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_ATTENTION_FORMULAS) as counter:
            module(*inputs)
    finally:
        module.train(was_training)
    return counter.get_total_flops() // 2


def count_flops(
    model: nn.Module, image_size: int | tuple[int, int] = 224, batch_size: int = 1, in_chans: int | None = None
) -> int:
    """Multiply-accumulates (MACs) of one forward pass on ``image_size`` images, the unit the
    CoAtNet and EfficientNet papers call "FLOPs" (see ``count_macs``).

    The input has ``in_chans`` channels (default: the model's ``in_chans``, else 3).
    Works on the ``meta`` device, so very large models cost no memory.
    """
    return count_macs(model, _example_input(model, image_size, batch_size, in_chans))


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def summary(model: nn.Module, image_size: int | tuple[int, int] = 224, depth: int = 2, **kwargs):
    """A layer-by-layer table (``torchinfo.summary``) for one image of ``image_size``."""
    from torchinfo import summary as _summary

    return _summary(model, input_data=_example_input(model, image_size), depth=depth, verbose=0, **kwargs)


def best_time(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Best wall-clock seconds of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed ones.

    The best, not the mean: other work on the machine can only add time to a call.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
