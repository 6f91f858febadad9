"""The training loop: ``fit`` and the one epoch it repeats.

``fit(model, train_data, test_data, epochs)`` trains with AdamW, a linear
warm-up then cosine decay of the learning rate (per step), label smoothing,
gradient clipping and optional mixed precision, shows a tqdm progress bar
and returns the history: per epoch, the training loss and accuracy (running
means over the augmented training batches, so with label smoothing and
stochastic depth), the test loss and accuracy, the learning rate at the
epoch's end, the seconds of training (evaluation excluded) and images/s.

Its options come in two groups, each checked and used together: the ``Recipe`` (what is learnt and how:
the schedule and the optimisation, which a resumed run must repeat) and the ``Hardware`` (where and how
it computes). ``fit`` takes them as keywords, ``fit(model, data, epochs=5, lr=1e-3)``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from coatlib.model_parts import blocks_of, describe_model, has_batchnorm, param_groups
from coatlib.train.checks import (
    check_hyperparameters,
    check_model_takes,
    check_table_lr_scale,
    check_test_data,
    check_writable,
    describe_data,
    steps_per_epoch,
)
from coatlib.train.distributed import NO_BLOCKS, amp_dtype, distribute, init_distributed, select_device
from coatlib.train.epoch import train_one_epoch
from coatlib.train.evaluation import evaluate
from coatlib.train.resume import (
    check_fresh_checkpoint,
    gather_rng_state,
    load_training_checkpoint,
    save_checkpoint,
    save_sharded_checkpoint,
    set_rng_state,
)

HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "time", "images_per_s")


@dataclass(frozen=True)
class Recipe:
    """What ``fit`` learns and how: the schedule and the optimisation (see ``fit`` for each)."""

    epochs: int
    batch_size: int  # per process
    lr: float  # the peak learning rate
    weight_decay: float
    warmup_epochs: float
    label_smoothing: float
    clip_grad: float | None
    table_lr_scale: float
    seed: int


@dataclass(frozen=True)
class Hardware:
    """Where and how ``fit`` computes (see ``fit`` for each)."""

    device: str | torch.device | None
    amp: str | None
    channels_last: bool
    sync_bn: bool
    fsdp: bool
    activation_checkpointing: bool
    compile: bool
    num_workers: int


@dataclass(frozen=True)
class Placement:
    """This process's place in the run, worked out by ``_check_and_place``."""

    rank: int
    world: int
    device: torch.device
    dtype: torch.dtype | None  # amp's
    memory_format: torch.memory_format
    steps_per_epoch: int


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
    epoch; ``coatlib.viz.plot_history`` draws it. ``on_step(loss)``, if given, is called after every
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
    recipe = Recipe(
        epochs, batch_size, lr, weight_decay, warmup_epochs, label_smoothing, clip_grad, table_lr_scale, seed
    )
    hardware = Hardware(device, amp, channels_last, sync_bn, fsdp, activation_checkpointing, compile, num_workers)
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    place = _check_and_place(model, train_data, test_data, recipe, hardware, checkpoint, resume)
    if sync_bn and place.world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # FSDP gathers the weights in bfloat16 (less memory and traffic), unless the model has BatchNorm,
    # whose CPU kernel wants float32 weights beside its float32 statistics: then autocast casts.
    cast_weights = fsdp and place.dtype is not None and not has_batchnorm(model)
    net = distribute(
        model, place.device, place.world, fsdp, activation_checkpointing, place.dtype if cast_weights else None
    )
    if compile:
        net = torch.compile(net)
    optimizer, scheduler, scaler, warmup_steps = _optimisation(model, recipe, amp, place)
    # The run's whole configuration: every checkpoint keeps it (as "schedule"), a resume must repeat it.
    schedule = _run_configuration(recipe, hardware, place, warmup_steps, train_data, test_data)
    schedule |= run_info or {}
    history, start = {k: [] for k in HISTORY_KEYS}, 0
    torch.manual_seed(seed + place.rank)
    if resume:
        state = load_training_checkpoint(checkpoint, model, schedule, optimizer)
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, start = state["history"], state["epoch"]
        set_rng_state(state["rng"][place.rank], place.device)

    sampler, loader = _loader(train_data, recipe, hardware, place)
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    step_options = dict(
        device=place.device,
        dtype=None if cast_weights else place.dtype,  # or the MixedPrecisionPolicy casts
        memory_format=place.memory_format,
        clip_grad=clip_grad,
        on_step=on_step,
    )
    for epoch in range(start, epochs):
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        show = progress and place.rank == 0
        bar = _progress_bar(place.steps_per_epoch, f"epoch {epoch + 1}/{epochs}") if show else None
        first_step = epoch * place.steps_per_epoch
        sums = train_one_epoch(
            net, loader, criterion, optimizer, scheduler, scaler, bar=bar, first_step=first_step, **step_options
        )
        if place.world > 1:
            dist.all_reduce(sums)
        seconds = time.perf_counter() - t0
        test_loss, test_acc = (None, None)
        if test_data is not None:
            test_amp = None if cast_weights else amp
            test_loss, test_acc = evaluate(model, test_data, batch_size, place.device, test_amp, channels_last)
        row = _history_row(epoch, sums, seconds, test_loss, test_acc, scheduler.get_last_lr()[0])
        for k in HISTORY_KEYS:
            history[k].append(row[k])
        if show:
            print(_epoch_line(row, epochs), flush=True)
        if checkpoint is not None:
            state = {"scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1}
            state |= {"history": history, "schedule": schedule, "rng": gather_rng_state(place.device, place.world)}
            _save_epoch(state, checkpoint, model, optimizer, fsdp, place)
    return history


def _check_and_place(
    model: nn.Module,
    train_data: Dataset,
    test_data: Dataset | None,
    recipe: Recipe,
    hardware: Hardware,
    checkpoint: Path | None,
    resume: bool,
) -> Placement:
    """Check every input of ``fit`` before anything is written, join the process group (under torchrun)
    and move ``model`` to its device; return where this process computes."""
    check_hyperparameters(
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        warmup_epochs=recipe.warmup_epochs,
        label_smoothing=recipe.label_smoothing,
        clip_grad=recipe.clip_grad,
        num_workers=hardware.num_workers,
        seed=recipe.seed,
    )
    if checkpoint is not None:
        check_writable(checkpoint.parent, "the checkpoint's folder")
    rank, world, local_rank = init_distributed()
    if hardware.fsdp and world == 1:
        raise ValueError(
            "fsdp=True shards the model over several processes, and this is one process: start it with "
            "`torchrun --standalone --nproc_per_node=2 -m coatlib.train ... --fsdp` (N processes: "
            "--nproc_per_node=N), or train without fsdp"
        )
    device = select_device(hardware.device, local_rank)
    dtype = amp_dtype(hardware.amp, device)
    if hardware.fsdp and hardware.amp == "fp16":
        raise ValueError(
            "fsdp=True computes in bfloat16 through FSDP's MixedPrecisionPolicy, without a "
            "GradScaler: use amp='bf16' (or amp=None)"
        )
    if hardware.sync_bn and device.type != "cuda":
        raise ValueError(
            "sync_bn=True needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only); on the CPU each "
            "process normalises its own share of the batch"
        )
    check_table_lr_scale(recipe.table_lr_scale, model)
    steps = steps_per_epoch(train_data, recipe.batch_size, world)
    if checkpoint is not None and not resume:
        check_fresh_checkpoint(checkpoint)
    if (hardware.fsdp or hardware.activation_checkpointing) and not blocks_of(model):
        raise ValueError(NO_BLOCKS.format(type(model).__name__))
    memory_format = torch.channels_last if hardware.channels_last else torch.preserve_format
    model.to(device, memory_format=memory_format)
    check_model_takes(model, train_data, device)
    if test_data is not None:
        check_test_data(test_data, train_data)
    return Placement(rank, world, device, dtype, memory_format, steps)


def _optimisation(model: nn.Module, recipe: Recipe, amp: str | None, place: Placement) -> tuple:
    """``(optimizer, scheduler, scaler, warmup_steps)``: AdamW over ``param_groups``, its learning rate's
    linear warm-up then cosine decay, stepped once per optimisation step, and fp16's GradScaler (off otherwise)."""
    optimizer = torch.optim.AdamW(
        param_groups(model, recipe.weight_decay, recipe.lr, recipe.table_lr_scale), lr=recipe.lr
    )
    warmup_steps = round(recipe.warmup_epochs * place.steps_per_epoch)
    total_steps = recipe.epochs * place.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup_steps, total_steps))
    scaler = torch.amp.GradScaler(place.device.type, enabled=amp == "fp16")
    return optimizer, scheduler, scaler, warmup_steps


def _run_configuration(
    recipe: Recipe,
    hardware: Hardware,
    place: Placement,
    warmup_steps: int,
    train_data: Dataset,
    test_data: Dataset | None,
) -> dict:
    """What a checkpoint records of the run (as ``"schedule"``) and a resume must repeat: the schedule, every
    optimisation setting, the seed, amp, and the data (``describe_data``)."""
    return {
        "epochs": recipe.epochs,
        "steps_per_epoch": place.steps_per_epoch,
        "world_size": place.world,
        "lr": recipe.lr,
        "warmup_steps": warmup_steps,
        "table_lr_scale": float(recipe.table_lr_scale),
        "batch_size": recipe.batch_size,
        "weight_decay": recipe.weight_decay,
        "warmup_epochs": recipe.warmup_epochs,
        "label_smoothing": recipe.label_smoothing,
        "clip_grad": recipe.clip_grad,
        "amp": hardware.amp,
        "seed": recipe.seed,
        "sync_bn": hardware.sync_bn,
        "fsdp": hardware.fsdp,
        "train_data": describe_data(train_data),
        "test_data": describe_data(test_data),
    }


def _loader(
    train_data: Dataset, recipe: Recipe, hardware: Hardware, place: Placement
) -> tuple[DistributedSampler, DataLoader]:
    """This process's share of every epoch's shuffled batches (the whole data set in one process)."""
    sampler = DistributedSampler(train_data, num_replicas=place.world, rank=place.rank, shuffle=True, seed=recipe.seed)
    loader = DataLoader(
        train_data,
        recipe.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=hardware.num_workers,
        pin_memory=place.device.type == "cuda",
        persistent_workers=hardware.num_workers > 0,
    )
    return sampler, loader


def _history_row(
    epoch: int, sums: torch.Tensor, seconds: float, test_loss: float | None, test_acc: float | None, lr: float
) -> dict:
    """One epoch of the history (``HISTORY_KEYS``) from ``train_one_epoch``'s sums over every process."""
    return {
        "epoch": epoch + 1,
        "train_loss": (sums[0] / sums[2]).item(),
        "train_acc": (sums[1] / sums[2]).item(),
        "test_loss": test_loss,
        "test_acc": test_acc,
        "lr": lr,
        "time": seconds,
        "images_per_s": sums[2].item() / seconds,
    }


def _save_epoch(
    state: dict, checkpoint: Path, model: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool, place: Placement
) -> None:
    """Write the checkpoint of a finished epoch: shards from every process (FSDP), or one file from process 0."""
    if fsdp:
        save_sharded_checkpoint(state, checkpoint, model, optimizer)
        return
    state.update(model=model.state_dict(), optimizer=optimizer.state_dict(), model_description=describe_model(model))
    if place.rank == 0:
        save_checkpoint(state, checkpoint)
    if place.world > 1:
        dist.barrier()


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor at ``step``: linear from 0 to 1 over the warm-up, then a cosine down to 0."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


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
