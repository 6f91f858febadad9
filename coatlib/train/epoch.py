"""One epoch of training: forward, backward, clip, step, schedule, for every batch; a diverging loss stops it."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn


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


def _batch_sums(loss_sum: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[summed loss, correct predictions, images]`` of one batch, in float64 on the batch's device."""
    correct = (logits.argmax(1) == y).sum()
    images = torch.tensor(len(y), dtype=torch.float64, device=y.device)
    return torch.stack([loss_sum.double(), correct.double(), images])
