"""Training: one loop for a notebook, the command line, a GPU and ``torchrun``.

``fit(model, train_data, test_data, epochs)`` trains with AdamW, a linear
warm-up then cosine decay of the learning rate (per step), label smoothing,
gradient clipping and optional mixed precision, shows a tqdm progress bar
and returns the history: per epoch, the training loss and accuracy (running
means over the augmented training batches, so with label smoothing and
stochastic depth), the test loss and accuracy, the learning rate at the
epoch's end, the seconds of training (evaluation excluded) and images/s.

Checkpoints hold the model, optimizer, scheduler, epoch, history and every
process's random-number state, are written to a temporary file and renamed (a crash
never leaves half a checkpoint), and are read with ``weights_only=True``.
A run resumed from the checkpoint of an interrupted run (same settings, same
number of processes) ends with the same weights as the uninterrupted run.

Scale: under ``torchrun --nproc_per_node=N`` (or any launcher that sets
``WORLD_SIZE``), ``fit`` joins the process group (gloo on CPU, nccl on CUDA),
wraps the model in ``DistributedDataParallel`` and gives each process its
share of every batch through a ``DistributedSampler``: N processes with batch
B take the same optimisation steps as one process with batch N*B, up to
BatchNorm, which normalises each process's share (``sync_bn=True`` converts
it to SyncBatchNorm, on CUDA only: PyTorch has no CPU SyncBatchNorm).

Models too large for one device: ``fsdp=True`` (``--fsdp``, under torchrun) shards
every block of the model (``blocks_of``), then the rest, over the processes with
PyTorch's FSDP2 (``fully_shard``): each process keeps 1/N of the weights, gradients
and optimizer states and gathers a block's weights only while it computes it. With
``amp="bf16"`` the blocks compute in bfloat16 (a ``MixedPrecisionPolicy``) and the
gradients are averaged in float32. Its checkpoints are folders written by
``torch.distributed.checkpoint`` (each process writes its shards); they resume
under the same number of processes and load into a model in one process
(``load_checkpoint``). ``activation_checkpointing=True`` keeps only each block's
input during the forward pass and recomputes the block in the backward pass;
``compile=True`` runs the model through ``torch.compile``.

Command line (``python -m coatlib.train --help``)::

    python -m coatlib.train --model coatnet_pico --data textures --epochs 5 --out runs/textures
    torchrun --nproc_per_node=2 -m coatlib.train --model coatnet_pico --data digits --out runs/ddp
    torchrun --standalone --nproc_per_node=2 -m coatlib.train --model coatnet_pico --fsdp --out runs/fsdp

It checks every argument and that ``--out`` is writable before building anything. An ``--out`` that holds
an earlier run (``history.json``, a checkpoint) is refused unless ``--resume`` continues that run (same
settings, checked against those the checkpoint records) or ``--force`` deletes its files and starts again.
Ctrl-C ends with "interrupted; resume with --resume", bad input with one line ``error: ...``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed._composable import checkpoint as checkpoint_activations
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

AMP_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}
HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "time", "images_per_s")


def fit(
    model: nn.Module,
    train_data: Dataset,
    test_data: Dataset | None = None,
    epochs: int = 10,
    *,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.05,
    warmup_epochs: float = 1.0,
    label_smoothing: float = 0.1,
    clip_grad: float | None = 1.0,
    amp: str | None = None,
    device: str | torch.device | None = None,
    channels_last: bool = False,
    sync_bn: bool = False,
    fsdp: bool = False,
    activation_checkpointing: bool = False,
    compile: bool = False,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    num_workers: int = 0,
    on_step: Callable[[float], None] | None = None,
    table_lr_scale: float = 1.0,
    run_info: dict | None = None,
) -> dict[str, list]:
    """Train ``model`` on ``train_data`` for ``epochs`` epochs; return the history.

    ``batch_size`` is per process. ``lr`` is the peak learning rate, reached
    after ``warmup_epochs`` of linear warm-up and then decayed to 0 along a
    cosine. AdamW decays only weights with two or more dimensions (not
    biases, norm scales, relative-bias tables or position embeddings). ``amp`` is None, ``"bf16"`` (CPU or
    CUDA) or ``"fp16"`` (CUDA, with a GradScaler). ``device`` defaults to the
    GPU when there is one. ``seed`` fixes the data order and augmentation
    (build the model after ``torch.manual_seed`` to fix its initial weights
    too): the same seed gives the same history on the same machine.

    ``fsdp=True`` (under torchrun only) shards the model with FSDP2 instead of
    copying it with DDP; with ``amp="bf16"`` it gathers the weights in bfloat16
    and computes there (a ``MixedPrecisionPolicy``), or, for models with
    BatchNorm, gathers float32 weights and computes under autocast
    (``amp="fp16"`` is refused).
    ``activation_checkpointing=True`` recomputes each block in the backward
    pass instead of storing its activations; ``compile=True`` trains through
    ``torch.compile``. The model keeps its parameter names under all three.

    Allowed values (``check_hyperparameters``): ``epochs`` and ``batch_size`` positive ints,
    ``lr`` finite and > 0, ``weight_decay`` and ``warmup_epochs`` finite and >= 0,
    ``label_smoothing`` in [0, 1), ``clip_grad`` None (no clipping) or finite and > 0,
    ``num_workers`` an int >= 0, ``seed`` an int.

    ``checkpoint``: written at the end of every epoch, a file (or, with
    ``fsdp=True``, a folder of ``torch.distributed.checkpoint`` shards); with
    ``resume=True`` training continues from it (the model's weights are
    replaced by the checkpoint's). The checkpoint records the run's whole configuration
    (schedule, every optimisation setting, seed, amp, the data, and ``run_info``: what the caller
    knows and ``fit`` cannot see, such as the model's name and options); a resume with any of it
    different is refused, naming each difference. An existing checkpoint is never
    overwritten by a new run (only continued with ``resume=True``). All inputs are checked before anything is
    written: bad hyperparameters, an unwritable checkpoint folder, a data set smaller than one batch,
    images the model cannot take, test data of another size, channel count or classes,
    a checkpoint of another model or other settings raise ``ValueError``. A loss that becomes NaN or
    infinite stops training at once (``NonFiniteLoss``, a ``ValueError``); the last checkpoint,
    written after the last good epoch, is kept.

    The history maps each of ``HISTORY_KEYS`` to a list with one entry per
    epoch; ``plot_history`` draws it. ``on_step(loss)``, if given, is called after every
    optimiser step with that batch's training loss (this process's share), for curves finer
    than an epoch: the online loss of a run on fresh data, say.

    ``table_lr_scale`` multiplies the learning rate of the relative-bias tables (the
    ``relative_bias_table`` parameters of ``RelativeAttention``) at every step, warm-up and decay
    included; nothing else changes (the tables have no weight decay, and the gradients and their
    clipping are those of the other parameters). AdamW moves a parameter by about its learning rate
    per step, so a table entry moves at most about ``table_lr_scale`` times the summed learning
    rates of the run, ``lr * (w / 2 + (T - w) / 2) = lr * T / 2`` for ``w`` steps of linear warm-up and
    ``T - w`` of cosine decay; a
    pre-softmax table needs entries several units apart to make attention local (the book's
    chapter 3). A scale other than 1 on a model without trainable tables is an error.
    """
    check_hyperparameters(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        label_smoothing=label_smoothing,
        clip_grad=clip_grad,
        num_workers=num_workers,
        seed=seed,
    )
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if checkpoint is not None:
        check_writable(checkpoint.parent, "the checkpoint's folder")
    rank, world, local_rank = init_distributed()
    if fsdp and world == 1:
        raise ValueError(
            "fsdp=True shards the model over several processes, and this is one process: start it with "
            "`torchrun --standalone --nproc_per_node=2 -m coatlib.train ... --fsdp` (N processes: "
            "--nproc_per_node=N), or train without fsdp"
        )
    device = _device(device, local_rank)
    dtype = _amp_dtype(amp, device)
    if fsdp and amp == "fp16":
        raise ValueError(
            "fsdp=True computes in bfloat16 through FSDP's MixedPrecisionPolicy, without a "
            "GradScaler: use amp='bf16' (or amp=None)"
        )
    if sync_bn and device.type != "cuda":
        raise ValueError(
            "sync_bn=True needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only); on the CPU each "
            "process normalises its own share of the batch"
        )
    _check_table_lr_scale(table_lr_scale, model)
    steps_per_epoch = _steps_per_epoch(train_data, batch_size, world)
    if checkpoint is not None and not resume:
        check_fresh_checkpoint(checkpoint)
    if (fsdp or activation_checkpointing) and not blocks_of(model):
        raise ValueError(_NO_BLOCKS.format(type(model).__name__))
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    model.to(device, memory_format=memory_format)
    _check_model_takes(model, train_data, device)
    if test_data is not None:
        _check_test_data(test_data, train_data)
    if sync_bn and world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # FSDP gathers the weights in bfloat16 (less memory and traffic), unless the model has BatchNorm,
    # whose CPU kernel wants float32 weights beside its float32 statistics: then autocast casts.
    cast_weights = fsdp and dtype is not None and not has_batchnorm(model)
    net = _distribute(model, device, world, fsdp, activation_checkpointing, dtype if cast_weights else None)
    if compile:
        net = torch.compile(net)

    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay, lr, table_lr_scale), lr=lr)
    warmup_steps, total_steps = round(warmup_epochs * steps_per_epoch), epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup_steps, total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    # The run's whole configuration: every checkpoint keeps it (as "schedule"), a resume must repeat it.
    schedule = {
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "world_size": world,
        "lr": lr,
        "warmup_steps": warmup_steps,
        "table_lr_scale": float(table_lr_scale),
        "batch_size": batch_size,
        "weight_decay": weight_decay,
        "warmup_epochs": warmup_epochs,
        "label_smoothing": label_smoothing,
        "clip_grad": clip_grad,
        "amp": amp,
        "seed": seed,
        "sync_bn": sync_bn,
        "fsdp": fsdp,
        "train_data": describe_data(train_data),
        "test_data": describe_data(test_data),
        **(run_info or {}),
    }
    history, start = {k: [] for k in HISTORY_KEYS}, 0
    torch.manual_seed(seed + rank)
    if resume:
        state = load_checkpoint(checkpoint, model, schedule, optimizer)
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, start = state["history"], state["epoch"]
        _set_rng_state(state["rng"][rank], device)

    sampler = DistributedSampler(train_data, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    loader = DataLoader(
        train_data,
        batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    autocast_dtype = None if cast_weights else dtype  # or the MixedPrecisionPolicy casts
    step_options = dict(
        device=device, dtype=autocast_dtype, memory_format=memory_format, clip_grad=clip_grad, on_step=on_step
    )

    for epoch in range(start, epochs):
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        bar = _progress_bar(steps_per_epoch, f"epoch {epoch + 1}/{epochs}") if progress and rank == 0 else None
        sums = train_one_epoch(
            net,
            loader,
            criterion,
            optimizer,
            scheduler,
            scaler,
            bar=bar,
            first_step=epoch * steps_per_epoch,
            **step_options,
        )
        if world > 1:
            dist.all_reduce(sums)
        seconds = time.perf_counter() - t0
        test_loss, test_acc = (None, None)
        if test_data is not None:
            test_loss, test_acc = evaluate(
                model, test_data, batch_size, device, None if cast_weights else amp, channels_last
            )
        row = {
            "epoch": epoch + 1,
            "train_loss": (sums[0] / sums[2]).item(),
            "train_acc": (sums[1] / sums[2]).item(),
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": scheduler.get_last_lr()[0],
            "time": seconds,
            "images_per_s": sums[2].item() / seconds,
        }
        for k in HISTORY_KEYS:
            history[k].append(row[k])
        if progress and rank == 0:
            print(_epoch_line(row, epochs), flush=True)
        if checkpoint is not None:
            state = {
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch + 1,
                "history": history,
                "schedule": schedule,
                "rng": _gather_rng_state(device, world),
            }
            if fsdp:
                save_sharded_checkpoint(state, checkpoint, model, optimizer)
            else:
                state.update(
                    model=model.state_dict(), optimizer=optimizer.state_dict(), model_description=_describe(model)
                )
                if rank == 0:
                    save_checkpoint(state, checkpoint)
                if world > 1:
                    dist.barrier()
    return history


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The model's blocks, the units that FSDP shards and activation checkpointing recomputes.

    They are the children of every submodule whose name ends in ``blocks`` and
    that is an ``nn.ModuleList`` or ``nn.Sequential``: ``blocks.3`` in ViT,
    ``stages.2.blocks.3`` in ConvNeXt. Blocks inside a block already found are
    part of it. An empty list when the model has none.
    """
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        inside_a_block = any(name.startswith(outer + ".") for outer, _ in found)
        if (
            name.rsplit(".", 1)[-1] == "blocks"
            and isinstance(module, (nn.ModuleList, nn.Sequential))
            and not inside_a_block
        ):
            found += [(f"{name}.{child_name}", child) for child_name, child in module.named_children()]
    return [block for _, block in found]


_NO_BLOCKS = (
    "{} has no blocks to shard or checkpoint: fsdp and activation_checkpointing work block by block and look "
    "for an nn.ModuleList or nn.Sequential named `blocks` (e.g. model.blocks or model.stages[i].blocks). Keep "
    "the model's repeated blocks in such a container, or train without fsdp and activation checkpointing"
)


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has a BatchNorm layer (FSDP then gathers its weights in float32)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _distribute(
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


def train_one_epoch(
    net,
    loader,
    criterion,
    optimizer,
    scheduler,
    scaler,
    *,
    device,
    dtype,
    memory_format,
    clip_grad,
    bar=None,
    on_step=None,
    first_step: int = 0,
) -> torch.Tensor:
    """One pass over ``loader``: forward (under autocast when ``dtype`` is set), backward
    (through the GradScaler), clip, step, schedule, ``on_step(loss)``. Returns ``[summed loss, correct, images]``.

    A NaN or infinite loss raises ``NonFiniteLoss`` before its step changes the weights (``first_step``
    numbers the steps in its message)."""
    net.train()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for step, (x, y) in enumerate(loader):
        x = x.to(device, non_blocking=True, memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = net(x)
        loss = criterion(logits.float(), y)
        if not _finite_everywhere(loss):
            if bar is not None:
                bar.close()
            raise NonFiniteLoss(loss.item(), first_step + step + 1, scheduler.get_last_lr()[0])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip_grad is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(net.parameters(), clip_grad)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        sums += _batch_sums(loss.detach() * len(y), logits, y)
        if on_step is not None:
            on_step(loss.item())
        if bar is not None:
            bar.update()
            if step % 10 == 0:
                bar.set_postfix(loss=f"{sums[0].item() / sums[2].item():.4f}")
    if bar is not None:
        bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # so that the epoch's time covers all its kernels
    return sums


def _finite_everywhere(loss: torch.Tensor) -> bool:
    """Whether the loss is finite in every process (all stop together: one stopping alone would leave
    the others waiting for it in the next all-reduce)."""
    finite = torch.isfinite(loss.detach()).float()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite)


class NonFiniteLoss(ValueError):
    """The training loss became NaN or infinite: the run diverged (or overflowed in low precision)."""

    def __init__(self, loss: float, step: int, lr: float):
        value = "not finite in another process" if math.isfinite(loss) else loss
        super().__init__(
            f"the training loss is {value} at step {step} (learning rate {lr:.3g} there): training diverged and "
            f"was stopped before that step changed the weights; the checkpoint of the last finished epoch, if "
            f"any, is kept. Train with a lower learning rate (--lr, e.g. 10 times lower), gradient clipping "
            f"(--clip-grad 1) and without mixed precision (--amp none)"
        )


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor at ``step``: linear from 0 to 1 over the warm-up, then a cosine down to 0."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    amp: str | None = None,
    channels_last: bool = False,
) -> tuple[float, float]:
    """Mean cross-entropy (no label smoothing) and accuracy of ``model`` on ``data``.

    Under ``torch.distributed`` each process evaluates every ``world``-th
    image and the sums are added up, so the result covers each image once.
    Every process runs the same number of batches (the shorter shares are
    padded with images that are not counted), as FSDP's gathers need.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = _amp_dtype(amp, device)
    world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, n
    for x, y, counted in DataLoader(_EvalShare(data, rank, world), batch_size):
        x, y, counted = x.to(device, memory_format=memory_format), y.to(device), counted.to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x).float()
        losses = F.cross_entropy(logits, y, reduction="none")
        sums += torch.stack(
            [
                (losses * counted).sum().double(),
                ((logits.argmax(1) == y) & counted).sum().double(),
                counted.sum().double(),
            ]
        )
    model.train(was_training)
    if world > 1:
        dist.all_reduce(sums)
    return (sums[0] / sums[2]).item(), (sums[1] / sums[2]).item()


class _EvalShare(Dataset):
    """Process ``rank``'s share of ``data``: items ``rank, rank + world, ...``, padded to ``ceil(len / world)``
    items with repeats; each item is ``(image, label, counted)``, ``counted`` False for the padding."""

    def __init__(self, data: Dataset, rank: int, world: int):
        self.data, self.rank, self.world = data, rank, world
        self.length = math.ceil(len(data) / world)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        index = self.rank + i * self.world
        x, y = self.data[index % len(self.data)]
        return x, y, index < len(self.data)


def _batch_sums(loss_sum: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[summed loss, correct predictions, images]`` of one batch, in float64 on the batch's device."""
    correct = (logits.argmax(1) == y).sum()
    images = torch.tensor(len(y), dtype=torch.float64, device=y.device)
    return torch.stack([loss_sum.double(), correct.double(), images])


def plot_history(history: dict[str, list], axes=None):
    """Loss (left) and accuracy (right) per epoch, train and test; returns the figure.

    The training curves are ``fit``'s running means over each epoch's augmented
    batches, with label smoothing in the loss; the test curves are measured
    after each epoch, without either."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    loss_ax, acc_ax = axes
    epochs = history["epoch"]
    loss_ax.plot(epochs, history["train_loss"], "o-", label="train")
    acc_ax.plot(epochs, history["train_acc"], "o-", label="train")
    if history["test_acc"] and history["test_acc"][0] is not None:
        loss_ax.plot(epochs, history["test_loss"], "s-", label="test")
        acc_ax.plot(epochs, history["test_acc"], "s-", label="test")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig = loss_ax.figure
    fig.tight_layout()
    return fig


# --- checkpoints -----------------------------------------------------------------------------------


def save_checkpoint(state: dict, path: str | Path) -> None:
    """``torch.save`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def save_sharded_checkpoint(state: dict, path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write a checkpoint folder with ``torch.distributed.checkpoint``: every process writes its own
    shards of the model and the optimizer; process 0 adds the rest of ``state`` as ``train_state.pt``.

    Called by every process. The folder is written as ``PATH.tmp`` (complete once ``train_state.pt``
    is in it), the previous one renamed to ``PATH.old``, ``PATH.tmp`` to ``PATH``, and ``PATH.old``
    removed: killed at any point, a complete copy is left that ``load_checkpoint`` finds."""
    path = Path(path)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    _, tmp, old = _sharded_copies(path)
    if rank == 0 and tmp.exists():
        shutil.rmtree(tmp)  # left by a crash while writing; `path` is complete
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=tmp, no_dist=world == 1)
    if rank == 0:
        save_checkpoint({**state, "model_description": _describe(model)}, tmp / SHARDED_STATE)
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)  # left by a crash after the last rename
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    if world > 1:
        dist.barrier()


SHARDED_STATE = "train_state.pt"  # in a sharded checkpoint's folder: epoch, history, schedule, random states


def _sharded_copies(path: Path) -> tuple[Path, Path, Path]:
    """``(PATH, PATH.tmp, PATH.old)``: the places where a sharded save keeps its folders."""
    return path, path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")


def _complete_checkpoint(path: Path) -> Path | None:
    """The checkpoint to read for ``path``: the file, or the first complete folder of ``PATH``, ``PATH.tmp``
    (newer: killed between its two renames) and ``PATH.old``; None when there is none."""
    if path.is_file():
        return path
    return next((p for p in _sharded_copies(path) if (p / SHARDED_STATE).is_file()), None)


def load_checkpoint(
    path: str | Path | None,
    model: nn.Module,
    schedule: dict | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict:
    """Read a checkpoint, check it fits ``model`` (and the ``schedule`` of this run, if given: its whole
    configuration, as ``fit`` records it), load its
    weights into ``model`` (and its state into ``optimizer``, if given); return the rest of the state.

    ``path`` is a file written by ``fit`` (read with ``weights_only=True``) or the folder of a sharded
    run (``fsdp=True``), which loads into a sharded model under torchrun or into a whole model in one
    process: ``load_checkpoint("runs/fsdp/checkpoint", create_model(...))`` then evaluates it alone.
    When a sharded save was killed part-way and the folder is missing, its complete ``.tmp`` or
    ``.old`` copy is read.
    """
    found = _complete_checkpoint(Path(path)) if path is not None else None
    if found is None:
        raise ValueError(f"cannot resume: no checkpoint file at {path}; pass checkpoint=PATH of an earlier run")
    path = found
    sharded = path.is_dir()
    state = torch.load(path / SHARDED_STATE if sharded else path, map_location="cpu", weights_only=True)
    if sharded:
        saved = {
            k.removeprefix("model."): v.size
            for k, v in dcp.FileSystemReader(path).read_metadata().state_dict_metadata.items()
            if k.startswith("model.")
        }
    else:
        saved = {k: v.shape for k, v in state["model"].items()}
    current = {k: v.shape for k, v in model.state_dict().items()}
    _check_same_model(saved, current, path, state.get("model_description"), _describe(model))
    if schedule is not None:
        _check_same_schedule(state["schedule"], schedule, path)
    if sharded:
        # get_state_dict gives tensors shaped like this model's (shards under FSDP, whole tensors
        # otherwise); dcp.load fills them from whichever shards hold their parts.
        model_state, optimizer_state = get_state_dict(model, optimizer if optimizer is not None else [])
        target = {"model": model_state} | ({"optimizer": optimizer_state} if optimizer is not None else {})
        with warnings.catch_warnings():  # in one process, loading alone is the intent: no need to say so
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            dcp.load(target, checkpoint_id=path, no_dist=not dist.is_initialized())
        set_state_dict(
            model,
            optimizer if optimizer is not None else [],
            model_state_dict=target["model"],
            optim_state_dict=target.get("optimizer", {}),
        )
    else:
        model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
    return state


def _check_same_schedule(saved: dict, current: dict, path: Path) -> None:
    """Raise unless the run configuration a checkpoint recorded is this run's, naming every difference (a
    setting an older checkpoint did not record shows as None there)."""
    differ = [
        f"{k}: {saved.get(k)!r} in the checkpoint, {current.get(k)!r} now"
        for k in dict.fromkeys([*saved, *current])
        if saved.get(k) != current.get(k)
    ]
    if differ:
        raise ValueError(
            f"checkpoint {path} was written with other settings than this run's ({'; '.join(differ)}): resume "
            f"with the same settings (schedule, optimisation, seed, amp, model and data), or start a new run "
            f"in another place"
        )


def _describe(model: nn.Module) -> str:
    """``"a CoAtNet with 312,774 parameters"``: the model a checkpoint belongs to, for error messages."""
    return (
        f"a {type(model).__name__.removeprefix('FSDP')} with {sum(p.numel() for p in model.parameters()):,} parameters"
    )


def _check_same_model(
    saved: dict, current: dict, path, saved_model: str | None = None, current_model: str | None = None
) -> None:
    """Raise unless the tensor shapes ``saved`` (name: shape) are those of the model, ``current``."""
    missing = sorted(set(current) - set(saved))
    unexpected = sorted(set(saved) - set(current))
    differ = sorted(k for k in set(saved) & set(current) if tuple(saved[k]) != tuple(current[k]))
    if missing or unexpected or differ:
        examples = [f"missing {k}" for k in missing[:2]] + [f"unexpected {k}" for k in unexpected[:2]]
        examples += [f"{k}: {tuple(saved[k])} in the checkpoint, {tuple(current[k])} in the model" for k in differ[:2]]
        belongs = f" ({saved_model}; this one is {current_model})" if saved_model else ""
        raise ValueError(
            f"checkpoint {path} was written by a different model{belongs} ({len(missing)} tensors missing, "
            f"{len(unexpected)} unexpected, {len(differ)} of another shape; e.g. {'; '.join(examples)}). "
            f"Resume with the model (and image size) that wrote it, or start a new run in another place"
        )


def _gather_rng_state(device: torch.device, world: int) -> list[dict]:
    """Every process's generator states (CPU, and CUDA when used), ordered by rank."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).cpu()
    if world == 1:
        return [state]
    states = [None] * world
    dist.all_gather_object(states, state)
    return states


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


# --- checks and set-up -----------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Every hyperparameter of ``fit``: the test it must pass and the allowed values, as the error says them.
HYPERPARAMETERS: dict[str, tuple[Callable[[object], bool], str]] = {
    "epochs": (lambda v: _is_int(v) and v >= 1, "a positive int"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "a positive int (images per process)"),
    "lr": (lambda v: _is_number(v) and v > 0, "a finite number > 0 (the peak learning rate, e.g. 3e-3)"),
    "weight_decay": (lambda v: _is_number(v) and v >= 0, "a finite number >= 0 (0: no weight decay)"),
    "warmup_epochs": (lambda v: _is_number(v) and v >= 0, "a finite number of epochs >= 0 (0: no warm-up)"),
    "label_smoothing": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1) (0: no smoothing)"),
    "clip_grad": (
        lambda v: v is None or (_is_number(v) and v > 0),
        "None (no clipping) or a finite number > 0 (the largest gradient norm; the command line's 0 is None)",
    ),
    "num_workers": (lambda v: _is_int(v) and v >= 0, "an int >= 0 (0: load the data in the main process)"),
    "seed": (_is_int, "an int"),
}


def check_hyperparameters(**values) -> None:
    """Raise a ``ValueError`` naming the first value outside its allowed range (``HYPERPARAMETERS``)."""
    for name, value in values.items():
        test, allowed = HYPERPARAMETERS[name]
        if not test(value):
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{name} ({flag}) must be {allowed}, got {value!r}")


def check_writable(folder: Path, what: str) -> None:
    """Raise unless ``folder`` is (or can be made as) a folder this process may write into; creates nothing."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        problem = "is a file, not a folder" if not existing.is_dir() else "is not writable"
        raise ValueError(
            f"{what} {folder} cannot be written: {existing} {problem}. Choose another place (--out) "
            f"or fix its permissions"
        )


def check_fresh_checkpoint(path: Path) -> None:
    """Raise if a new run's checkpoint ``path`` would overwrite an earlier run's: the checkpoint itself, or
    the ``.tmp`` / ``.old`` folder a sharded save leaves when it is killed part-way."""
    if path.exists():
        raise ValueError(
            f"{path} already exists: pass resume=True (--resume) to continue that run, "
            f"or delete it or choose another path; it is not overwritten"
        )
    left = [p for p in _sharded_copies(path)[1:] if p.is_dir()]
    if left:
        resume = "pass resume=True (--resume) to continue that run from it, or " if _complete_checkpoint(path) else ""
        raise ValueError(
            f"{' and '.join(map(str, left))} {'is' if len(left) == 1 else 'are'} left by a sharded save that was "
            f"killed part-way: {resume}delete {'it' if len(left) == 1 else 'them'} to start a new run"
        )


def _wrapped(data: Dataset):
    """``data`` and the data sets it wraps (``Subset`` and any wrapper keeping its data as ``.dataset``)."""
    while data is not None:
        yield data
        data = getattr(data, "dataset", None)


def _classes(data: Dataset) -> list | None:
    """The data set's class names, looking through wrappers such as ``Subset``; None when it has none."""
    classes = next((d.classes for d in _wrapped(data) if getattr(d, "classes", None) is not None), None)
    return list(classes) if classes is not None else None


def describe_data(data: Dataset | None) -> dict | None:
    """What a checkpoint records of a data set, to refuse a resume on other data: its size, image shape,
    classes and, for a ``Subset``, a digest of its indices (another subset of the same size differs)."""
    if data is None:
        return None
    description = {"images": len(data), "image_shape": list(data[0][0].shape), "classes": _classes(data)}
    subset = next((d for d in _wrapped(data) if isinstance(d, Subset)), None)
    if subset is not None:
        description["subset"] = hashlib.sha256(str(list(subset.indices)).encode()).hexdigest()[:16]
    return description


def _check_test_data(test_data: Dataset, train_data: Dataset) -> None:
    """The test images must have the training images' shape and the test data the training data's classes."""
    train_shape, test_shape = tuple(train_data[0][0].shape), tuple(test_data[0][0].shape)
    if test_shape != train_shape:
        raise ValueError(
            f"the test images are {'x'.join(map(str, test_shape))} (channels x height x width) but the training "
            f"images {'x'.join(map(str, train_shape))}: load both splits with the same image_size and channels, "
            f"e.g. coatlib.data.load_splits(name, image_size, channels)"
        )
    train_classes, test_classes = _classes(train_data), _classes(test_data)
    if train_classes is not None and test_classes is not None and train_classes != test_classes:
        raise ValueError(
            f"the test data's classes {test_classes} are not the training data's {train_classes}: the test set "
            f"is of another task. Test on the test split of the data set the model learns"
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


def _device(device, local_rank: int) -> torch.device:
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


def _amp_dtype(amp: str | None, device: torch.device):
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


def _steps_per_epoch(data: Dataset, batch_size: int, world: int) -> int:
    per_process = math.ceil(len(data) / world)
    if per_process < batch_size:
        raise ValueError(
            f"the training data has {len(data)} images, fewer than one batch of {batch_size}"
            + (f" for each of {world} processes" if world > 1 else "")
            + f": use batch_size <= {per_process}, or more data"
        )
    return per_process // batch_size


def _check_model_takes(model: nn.Module, data: Dataset, device: torch.device) -> None:
    """Run the model once on one training image: clear errors before any training or writing."""
    x, y = data[0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[None].to(device))
    except (RuntimeError, ValueError) as e:
        raise ValueError(
            f"the model cannot take the training images (one is {tuple(x.shape)}, channels x height x width): {e}"
        ) from e
    finally:
        model.train(was_training)
    classes = getattr(data, "classes", None)
    if out.ndim != 2 or (classes is not None and out.shape[1] != len(classes)):
        want = f"{len(classes)} (one per class)" if classes is not None else "(batch, classes)"
        raise ValueError(
            f"the model outputs shape {tuple(out.shape)} for one image; the data needs {want} logits: "
            f"build it with num_classes={len(classes) if classes is not None else '...'}"
        )


# Position parameters are not weights to shrink: decaying a relative-bias table pulls every
# attention towards uniform (as timm and the Swin and ViT recipes, they are exempt).
NO_DECAY_NAMES = ("relative_bias_table", "pos_embed", "cls_token")


TABLE_NAME = "relative_bias_table"


def _param_groups(
    model: nn.Module, weight_decay: float, lr: float | None = None, table_lr_scale: float = 1.0
) -> list[dict]:
    """AdamW's parameter groups: the weights that decay, the rest; with ``table_lr_scale != 1`` the
    relative-bias tables leave the second group for a third with learning rate ``lr * table_lr_scale``
    (the scheduler's factor multiplies each group's own rate, so the ratio holds at every step)."""
    groups: dict[bool, list[nn.Parameter]] = {True: [], False: []}
    tables: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if table_lr_scale != 1 and name.endswith(TABLE_NAME):
            tables.append(p)
        else:
            groups[p.ndim >= 2 and not name.endswith(NO_DECAY_NAMES)].append(p)
    out = [{"params": groups[True], "weight_decay": weight_decay}, {"params": groups[False], "weight_decay": 0.0}]
    if tables:
        if lr is None:
            raise ValueError("a table learning-rate scale needs the base learning rate lr")
        out.append({"params": tables, "weight_decay": 0.0, "lr": lr * table_lr_scale})
    return out


def _check_table_lr_scale(scale, model: nn.Module) -> None:
    """``table_lr_scale`` must be a positive finite number, and other than 1 only for a model with tables."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(
            f"table_lr_scale must be a positive finite number (the factor on the bias tables' learning "
            f"rate; 1 leaves it alone), got {scale!r}"
        )
    if scale != 1 and not any(n.endswith(TABLE_NAME) and p.requires_grad for n, p in model.named_parameters()):
        raise ValueError(
            f"table_lr_scale={scale} but {_describe(model)} has no trainable relative-bias tables "
            f"(parameters named *.{TABLE_NAME}): leave table_lr_scale at 1 for this model"
        )


def _progress_bar(steps: int, desc: str):
    """A tqdm bar (a widget in notebooks) advanced by hand: it never touches the data loader, so
    showing it or not cannot change the run."""
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=desc, leave=False, dynamic_ncols=True)


def _epoch_line(row: dict, epochs: int) -> str:
    test = f", test loss {row['test_loss']:.4f}, test acc {row['test_acc']:.4f}" if row["test_acc"] is not None else ""
    return (
        f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}, train acc {row['train_acc']:.4f}{test} "
        f"({row['time']:.1f} s, {row['images_per_s']:.0f} images/s)"
    )


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries that decide a run's numbers, and the device, for result files."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("torch", "numpy", "sklearn", "skimage", "coatlib"):
        out[name] = importlib.import_module(name).__version__
    cpu = f"cpu, {torch.get_num_threads()} threads"
    out["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu
    return out


# --- command line ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, list]:
    import coatlib
    import coatlib.data

    p = argparse.ArgumentParser(
        prog="python -m coatlib.train",
        description="Train a coatlib model on a coatlib data set; works under torchrun --nproc_per_node=N.",
    )
    p.add_argument("--model", default="coatnet_pico", help="registered name, see coatlib.list_models()")
    p.add_argument("--data", default="digits", help=f"one of {', '.join(coatlib.data.DATASETS)}")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="folder for history.json and checkpoint.pt (with --fsdp: the folder checkpoint/)",
    )
    p.add_argument("--image-size", type=int, default=None, help="default: the data set's")
    p.add_argument("--channels", type=int, default=3, choices=(1, 3))
    p.add_argument("--data-size", type=int, default=None, help="training images of a generated data set")
    p.add_argument("--test-size", type=int, default=None, help="test images of a generated data set")
    p.add_argument("--download", action="store_true", help="allow torchvision to download cifar10 / imagenette")
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument(
        "--table-lr-scale",
        type=float,
        default=1.0,
        help="factor on the relative-bias tables' learning rate (1: the same as every other parameter)",
    )
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm; 0 turns clipping off")
    p.add_argument("--drop-path", type=float, default=None, help="stochastic depth rate (CoAtNet models)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes")
    p.add_argument(
        "--fsdp",
        action="store_true",
        help="shard the model over the processes (FSDP2; under torchrun); --amp bf16 computes in bf16",
    )
    p.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute each block in the backward pass instead of storing its activations",
    )
    p.add_argument("--compile", action="store_true", help="train through torch.compile")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT's checkpoint")
    p.add_argument(
        "--force",
        action="store_true",
        help="start a new run in an OUT that holds an earlier one (its history.json and checkpoint are deleted)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar and epoch lines, only the final line")
    args = p.parse_args(argv)
    _check_arguments(args)

    rank, world, _ = init_distributed()
    if args.fsdp and world == 1:  # before the data are built: say at once how to start it
        raise ValueError(
            "--fsdp shards the model over several processes: start it with `torchrun --standalone "
            "--nproc_per_node=N -m coatlib.train ... --fsdp` (N >= 2), or leave out --fsdp"
        )
    _device(args.device, 0)  # a device this machine lacks fails before the data are built
    options = {"download": True} if args.download else {}
    train_data, test_data = coatlib.data.load_splits(
        args.data, args.image_size, args.channels, args.data_size, args.test_size, **options
    )
    torch.manual_seed(args.seed)
    overrides = {"drop_path_rate": args.drop_path} if args.drop_path is not None else {}
    model = coatlib.create_model(
        args.model,
        num_classes=len(train_data.classes),
        image_size=train_data.image_size,
        in_chans=args.channels,
        **overrides,
    )
    if args.force and rank == 0:
        _delete_earlier_run(args.out)
    if world > 1:
        dist.barrier()
    checkpoint = args.out / ("checkpoint" if args.fsdp else "checkpoint.pt")
    resumed_from = _saved_epoch(checkpoint) if args.resume else None
    history = fit(
        model,
        train_data,
        test_data,
        args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        clip_grad=args.clip_grad or None,
        amp=None if args.amp == "none" else args.amp,
        device=args.device,
        channels_last=args.channels_last,
        sync_bn=args.sync_bn,
        fsdp=args.fsdp,
        activation_checkpointing=args.activation_checkpointing,
        compile=args.compile,
        seed=args.seed,
        checkpoint=checkpoint,
        resume=args.resume,
        progress=not args.quiet,
        num_workers=args.num_workers,
        table_lr_scale=args.table_lr_scale,
        run_info={k: getattr(args, k) for k in RUN_ARGUMENTS},
    )
    if rank == 0:
        record = {
            "command": "python -m coatlib.train " + shlex.join(sys.argv[1:] if argv is None else argv),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "world_size": world,
            "params": sum(p.numel() for p in model.parameters()),
            "versions": versions(),
            "history": history,
        }
        if resumed_from is not None:  # the epochs before it ran under an earlier command, with the same settings
            record["resumed_from_epoch"] = resumed_from
        (args.out / "history.json").write_text(json.dumps(record, indent=1))
        print(f"final test accuracy: {history['test_acc'][-1]:.4f}", flush=True)
    if world > 1:
        dist.destroy_process_group()
    return history


# The command-line arguments that define a run beyond what ``fit`` sees: a checkpoint records them, a resume
# must repeat them.
RUN_ARGUMENTS = ("model", "data", "image_size", "channels", "data_size", "test_size", "drop_path")
# What a run writes into --out: a new run refuses an --out that holds any of them (unless --force).
RUN_FILES = ("history.json", "checkpoint.pt", "checkpoint.pt.tmp", "checkpoint", "checkpoint.tmp", "checkpoint.old")


def _check_arguments(args: argparse.Namespace) -> None:
    """Every argument's range (as ``fit`` checks them, plus the command line's own), and that ``--out`` can
    be written and holds no earlier run unless ``--resume`` or ``--force``: before any data are built."""
    check_hyperparameters(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        num_workers=args.num_workers,
    )
    if not math.isfinite(args.clip_grad) or args.clip_grad < 0:
        raise ValueError(f"--clip-grad must be a finite number >= 0 (0: no clipping), got {args.clip_grad}")
    if args.drop_path is not None and not 0 <= args.drop_path < 1:
        raise ValueError(f"--drop-path must be in [0, 1) (the deepest block's drop probability), got {args.drop_path}")
    for flag in ("image_size", "data_size", "test_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive int, got {value}")
    check_writable(args.out, "--out")
    if args.resume and args.force:
        raise ValueError("--resume continues the run in --out and --force replaces it: pass one of them")
    earlier = [name for name in RUN_FILES if (args.out / name).exists()]
    if earlier and not (args.resume or args.force):
        raise ValueError(
            f"{args.out} holds an earlier run ({', '.join(earlier)}): pass --resume to continue it, --force to "
            f"replace it, or choose another --out"
        )


def _delete_earlier_run(out: Path) -> None:
    """``--force``: remove what an earlier run wrote into ``out`` (``RUN_FILES``), nothing else."""
    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _saved_epoch(path: Path) -> int | None:
    """The epoch a checkpoint was written after (None without one; ``fit`` then says so). Memory-mapped:
    the weights are not read."""
    found = _complete_checkpoint(path)
    if found is None:
        return None
    file = found / SHARDED_STATE if found.is_dir() else found
    return torch.load(file, map_location="cpu", weights_only=True, mmap=True)["epoch"]


def cli(argv: list[str] | None = None) -> None:
    """``python -m coatlib.train``: ``main``, with bad input and Ctrl-C ending in one line, not a traceback."""
    try:
        main(argv)
    except ValueError as error:  # bad input: the message says what to change, a traceback would hide it
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        print(
            "interrupted; resume with --resume (the same command plus --resume continues from the checkpoint "
            "of the last finished epoch)",
            file=sys.stderr,
        )
        sys.exit(130)


if __name__ == "__main__":
    cli()
