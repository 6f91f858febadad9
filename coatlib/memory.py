"""A memory plan for training: what one GPU holds under DDP, FSDP and FSDP with activation checkpointing.

Training with AdamW keeps, per parameter, the weight (4 bytes in float32), its
gradient (4) and the optimizer's two moving averages (8): 16 bytes, before any
activation. The activations are the tensors the forward pass saves for the
backward pass; they grow with the batch and the image. The planner counts all
of them for any registered model without computing anything: it builds the
model on PyTorch's ``meta`` device (shapes, no data) and runs one forward pass
that records, through ``torch.autograd.graph.saved_tensors_hooks``, every tensor
saved for the backward pass and the block that saved it.

Per GPU, with N GPUs and a batch of B images per GPU:

* **DDP**: every GPU holds everything: weights, gradients and optimizer states
  (16 bytes per parameter) and the activations of its B images.
* **FSDP**: weights, gradients and optimizer states are sharded, 16/N bytes per
  parameter, plus the working set: the parameters outside the blocks and two
  blocks' parameters (the one computing, the next one being gathered), in
  bfloat16 under ``bf16`` unless the model has BatchNorm (``coatlib.train``
  then gathers float32 weights and computes under autocast).
* **FSDP + activation checkpointing**: as FSDP, but only each block's input is
  kept; in the backward pass one block at a time is recomputed, so the
  activations are those outside the blocks, the blocks' inputs, and the largest
  block's own.

``bf16`` computes in bfloat16 (FSDP's ``MixedPrecisionPolicy``, or autocast with
DDP): the activations take 2 bytes per number; weights, gradients and optimizer
states stay float32. A plan *fits* when it needs at most 90% of the GPU's memory
(the rest goes to the CUDA context, library workspaces and fragmentation).
Temporaries of single operations are not counted.

Command line::

    python -m coatlib.memory coatnet_7 --image-size 512 --batch 4 --gpus 8 --gpu-memory 80
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn

from coatlib.factory import create_model
from coatlib.model_parts import blocks_of, has_batchnorm

GiB = 2**30
USABLE = 0.9  # of a GPU's memory; the rest is the CUDA context, workspaces and fragmentation
ADAMW_STATES = 2  # exp_avg and exp_avg_sq, float32
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
STRATEGIES = ("DDP", "FSDP", "FSDP+AC")


@dataclass(frozen=True)
class Activations:
    """Bytes the forward pass saves for the backward pass, split by where they are saved."""

    outside: int  # by the stem, the head and anything else outside the blocks
    blocks: list[int]  # inside each block
    block_inputs: list[int]  # each block's input, what activation checkpointing keeps

    @property
    def total(self) -> int:
        """All of them: training without activation checkpointing."""
        return self.outside + sum(self.blocks)

    @property
    def checkpointed(self) -> int:
        """With activation checkpointing per block: the blocks' inputs, and one block recomputed at a time."""
        return self.outside + sum(self.block_inputs) + max(self.blocks, default=0)


def activation_bytes(model: nn.Module, images: torch.Tensor) -> Activations:
    """Run ``model(images)`` once (on the meta device it computes nothing) and count the bytes of
    every tensor saved for the backward pass, once per storage, parameters excluded."""
    parameters = {p.untyped_storage()._cdata for p in model.parameters()}
    blocks = blocks_of(model)
    saved, inputs = [0] * (len(blocks) + 1), [0] * len(blocks)  # saved[-1]: outside the blocks
    seen: set[int] = set()
    current = [-1]  # index of the block running now, -1 outside

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in parameters and storage._cdata not in seen:
            seen.add(storage._cdata)
            saved[current[0]] += storage.nbytes()
        return tensor

    def enter(index):
        def hook(module, args):
            current[0] = index
            inputs[index] = sum(a.untyped_storage().nbytes() for a in args if isinstance(a, torch.Tensor))

        return hook

    def leave(module, args, output):
        current[0] = -1

    handles = [
        h for i, b in enumerate(blocks) for h in (b.register_forward_pre_hook(enter(i)), b.register_forward_hook(leave))
    ]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return Activations(saved[-1], saved[:-1], inputs)


@dataclass(frozen=True)
class Plan:
    """Bytes per GPU of one way to train; ``fits`` compares ``total`` with the usable memory."""

    strategy: str
    precision: str
    params: int
    grads: int
    optimizer: int
    activations: int
    gpu_memory: float  # GiB
    possible: bool = True  # False: coatlib.train cannot train this way (FSDP and AC need the model's blocks)

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations

    @property
    def fits(self) -> bool:
        return self.possible and self.total <= USABLE * self.gpu_memory * GiB


def plan(
    name: str,
    image_size: int = 224,
    batch: int = 1,
    gpus: int = 1,
    gpu_memory: float = 80.0,
    num_classes: int = 1000,
    **overrides,
) -> list[Plan]:
    """The six plans (DDP, FSDP, FSDP+AC, each at fp32 and bf16) for training the registered model
    ``name`` on ``image_size`` images, ``batch`` images per GPU, ``gpus`` GPUs of ``gpu_memory`` GiB
    (finite, > 0). A model without blocks (``coatlib.model_parts.blocks_of``: ResNet, MobileNet, EfficientNet)
    cannot be sharded or checkpointed by ``coatlib.train``: its FSDP plans are counted but marked impossible."""
    for label, value in (("batch", batch), ("gpus", gpus), ("image_size", image_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive int, got {value!r}")
    if isinstance(gpu_memory, bool) or not isinstance(gpu_memory, (int, float)) or not 0 < gpu_memory < math.inf:
        raise ValueError(f"gpu_memory (--gpu-memory) must be a finite number > 0 (GiB per GPU), got {gpu_memory!r}")
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, image_size=image_size, **overrides)
    blocks = blocks_of(model)
    n = sum(p.numel() for p in model.parameters())
    in_blocks = [sum(p.numel() for p in b.parameters()) for b in blocks]
    outside = n - sum(in_blocks)
    largest_two = sum(sorted(in_blocks)[-2:])
    plans = []
    for precision, dtype in PRECISIONS.items():
        model.to(dtype)
        images = torch.zeros(batch, getattr(model, "in_chans", 3), image_size, image_size, device="meta", dtype=dtype)
        acts = activation_bytes(model, images)
        gathered = torch.float32 if has_batchnorm(model) else dtype  # as coatlib.train gathers them
        working_set = (outside + largest_two) * gathered.itemsize
        sharded = math.ceil(n / gpus)
        plans += [
            Plan("DDP", precision, 4 * n, 4 * n, 4 * ADAMW_STATES * n, acts.total, gpu_memory),
            Plan(
                "FSDP",
                precision,
                4 * sharded + working_set,
                4 * sharded,
                4 * ADAMW_STATES * sharded,
                acts.total,
                gpu_memory,
                possible=bool(blocks),
            ),
            Plan(
                "FSDP+AC",
                precision,
                4 * sharded + working_set,
                4 * sharded,
                4 * ADAMW_STATES * sharded,
                acts.checkpointed,
                gpu_memory,
                possible=bool(blocks),
            ),
        ]
    return plans


def advice(name: str, plans: list[Plan], batch: int, gpus: int) -> str:
    """What to change when no plan fits: by how much the smallest one is too large, how many GPUs or
    how small a batch per GPU would make it fit. Empty when some plan fits."""
    if any(p.fits for p in plans):
        return ""
    if not any(p.possible for p in plans if p.strategy != "DDP"):
        return _ddp_advice(name, plans)
    best = min((p for p in plans if p.strategy != "DDP"), key=lambda p: p.total)
    usable = USABLE * best.gpu_memory * GiB
    n = next(p.params for p in plans if p.strategy == "DDP") // 4  # DDP holds every float32 weight
    sharded_state = 4 * (1 + 1 + ADAMW_STATES) * math.ceil(n / gpus)  # shrinks with more GPUs
    working_set = best.params - 4 * math.ceil(n / gpus)  # does not
    state = sharded_state + working_set
    lines = [
        f"{name} does not fit: the smallest plan, {best.strategy} in {best.precision}, needs "
        f"{best.total / GiB:.1f} GiB per GPU, {(best.total - usable) / GiB:.1f} GiB more than the "
        f"{usable / GiB:.1f} GiB usable ({USABLE:.0%} of {best.gpu_memory:g} GiB)."
    ]
    room = usable - working_set - best.activations
    if room > 0:
        need = math.ceil(sharded_state * gpus / room)
        lines.append(f"With the same batch it needs at least {need} GPUs of this size (--gpus {need}).")
    else:
        lines.append("More GPUs alone cannot help: the activations and the working set fill a GPU by themselves.")
    per_image = best.activations / batch
    fitting_batch = math.floor((usable - state) / per_image) if usable > state else 0
    if fitting_batch >= 1:
        lines.append(
            f"On {gpus} GPUs it fits with --batch {fitting_batch} per GPU (accumulate gradients over "
            f"{math.ceil(batch / fitting_batch)} steps to keep the batch), or with a smaller --image-size."
        )
    else:
        lines.append(
            f"On {gpus} GPU{'s' if gpus > 1 else ''} not even one image per GPU fits: use more GPUs, GPUs with more memory or "
            f"a smaller image size."
        )
    return " ".join(lines)


def _ddp_advice(name: str, plans: list[Plan]) -> str:
    """``advice`` for a model only DDP can train: more GPUs do not help, a smaller batch or image does."""
    best = min(plans, key=lambda p: p.total)
    usable = USABLE * best.gpu_memory * GiB
    return (
        f"{name} does not fit: it has no blocks, so coatlib.train can train it with DDP only (a whole copy "
        f"per GPU, which more GPUs do not shrink); in {best.precision} it needs {best.total / GiB:.1f} GiB per "
        f"GPU, {(best.total - usable) / GiB:.1f} GiB more than the {usable / GiB:.1f} GiB usable. Use a smaller "
        f"--batch or --image-size, or GPUs with more memory."
    )


NO_BLOCKS_NOTE = (
    "{} has no blocks (coatlib.model_parts.blocks_of finds none): coatlib.train cannot shard it (FSDP) or "
    "checkpoint its activations, so those plans are counted but cannot run ('cannot')."
)


def measure(model: nn.Module, images: torch.Tensor) -> tuple[int, int]:
    """Measured bytes of one training step ``model(images).sum().backward()`` on a real device (the CPU
    here), beyond the parameters and buffers: ``(after the forward pass, peak of the whole step)``.

    The first is the activations kept for the backward pass (and the output); the second adds the
    gradients and the recomputation of activation checkpointing. PyTorch's ``MemTracker`` follows
    every tensor's storage as it is allocated and freed.
    """
    from torch.distributed._tools.mem_tracker import MemTracker

    model.zero_grad(set_to_none=True)
    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        output = model(images)
        after_forward = tracker.get_tracker_snapshot("current")
        output.float().sum().backward()
    peak = tracker.get_tracker_snapshot("peak")

    def beyond_weights(snapshot) -> int:
        (by_kind,) = snapshot.values()  # one device
        named = {getattr(kind, "name", kind): value for kind, value in by_kind.items()}
        return named["Total"] - named["PARAM"] - named["BUFFER"]

    return beyond_weights(after_forward), beyond_weights(peak)


def table(plans: list[Plan]) -> str:
    """The plans as a text table, GiB per GPU."""
    rows = [
        f"{'strategy':8s} {'precision':9s} {'params':>8s} {'grads':>8s} {'AdamW':>8s} {'activ.':>8s} "
        f"{'total':>8s}  fits"
    ]
    for p in plans:
        gib = [v / GiB for v in (p.params, p.grads, p.optimizer, p.activations, p.total)]
        rows.append(
            f"{p.strategy:8s} {p.precision:9s} "
            + " ".join(f"{v:8.2f}" for v in gib)
            + f"  {'yes' if p.fits else 'no' if p.possible else 'cannot'}"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> list[Plan]:
    p = argparse.ArgumentParser(
        prog="python -m coatlib.memory",
        description="Memory per GPU of training a registered model with DDP, FSDP and FSDP with activation "
        "checkpointing, at fp32 and bf16 (counted on the meta device: nothing is computed).",
    )
    p.add_argument("model", help="registered name, see coatlib.list_models()")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1, help="images per GPU")
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU")
    p.add_argument("--num-classes", type=int, default=1000)
    args = p.parse_args(argv)
    plans = plan(args.model, args.image_size, args.batch, args.gpus, args.gpu_memory, args.num_classes)
    gpus = f"{args.gpus} GPU{'s' if args.gpus > 1 else ''}"
    print(
        f"{args.model}, {args.image_size}x{args.image_size}, batch {args.batch} per GPU, {gpus} of "
        f"{args.gpu_memory:g} GiB (usable {USABLE:.0%}); GiB per GPU:"
    )
    print(table(plans))
    if not all(p.possible for p in plans):
        print(NO_BLOCKS_NOTE.format(args.model))
    message = advice(args.model, plans, args.batch, args.gpus)
    if message:
        print(message)
    return plans


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:  # bad input: the message says what to change
        sys.exit(f"error: {error}")
