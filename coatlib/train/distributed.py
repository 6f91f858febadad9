"""Where a run computes: the process group under torchrun, the device, mixed precision, and the model
prepared for several processes (DDP copies it, FSDP2 shards it block by block) or for activation
checkpointing.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed._composable import checkpoint as checkpoint_activations
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from coatlib.model_parts import blocks_of

AMP_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}
NO_BLOCKS = (
    "{} has no blocks to shard or checkpoint: fsdp and activation_checkpointing work block by block and look "
    "for an nn.ModuleList or nn.Sequential named `blocks` (e.g. model.blocks or model.stages[i].blocks). Keep "
    "the model's repeated blocks in such a container, or train without fsdp and activation checkpointing"
)


def init_distributed() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)``; joins the process group when launched by torchrun.

    The backend is nccl when CUDA is available, gloo otherwise. Without a
    launcher this is ``(0, 1, 0)`` and nothing happens.
    """
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    if not dist.is_initialized():
        return 0, 1, 0
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def select_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    """``device``, or the GPU when there is one (this process's, ``local_rank``), or the CPU; a CUDA device
    this machine lacks is refused in one line."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build of PyTorch" if torch.version.cuda is None else "PyTorch without a visible GPU"
        raise ValueError(f"device {str(device)!r} needs a CUDA GPU, and this is {build}: use --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def supported_amp(device: str | torch.device) -> list[str | None]:
    """The values of ``amp`` that ``device`` can train with: None always, ``"bf16"`` on CPUs and on GPUs
    with bfloat16 arithmetic, ``"fp16"`` on CUDA GPUs."""
    device = torch.device(device)
    if device.type == "cuda":
        return [None, "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    return [None, "bf16"] if device.type == "cpu" else [None]


def amp_dtype(amp: str | None, device: torch.device) -> torch.dtype | None:
    """The dtype ``amp`` computes in (None: float32), refused with the device's choices where it cannot."""
    supported = supported_amp(device)
    if amp not in AMP_DTYPES:
        raise ValueError(
            f"amp must be None, 'bf16' or 'fp16', got {amp!r}; this device ({device}) supports "
            f"{', '.join(map(repr, supported))}"
        )
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp='fp16' needs a CUDA device (it trains with a GradScaler); on the CPU use amp='bf16'")
    if amp not in supported:
        raise ValueError(
            f"amp={amp!r} is not supported by this device ({device}), which supports "
            f"{', '.join(map(repr, supported))}: choose one of those"
        )
    return AMP_DTYPES[amp]


def distribute(
    model: nn.Module,
    device: torch.device,
    world: int,
    fsdp: bool,
    activation_checkpointing: bool,
    dtype: torch.dtype | None,
) -> nn.Module:
    """Prepare ``model`` in place for training and return the module to call: ``model`` itself (one
    process, or sharded by FSDP) or a ``DistributedDataParallel`` around it. ``dtype`` is the type
    FSDP gathers the weights in and computes with (None: float32)."""
    if activation_checkpointing:
        for block in blocks_of(model):
            checkpoint_activations(block)  # keeps the block's input, recomputes the rest in backward
    if fsdp:
        model.to(memory_format=torch.contiguous_format)  # FSDP shards contiguous parameters only
        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None)
        for block in blocks_of(model):
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)  # the stem, head and norms: whatever no block holds
        return model
    if world > 1:
        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    return model
