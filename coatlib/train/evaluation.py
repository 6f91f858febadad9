"""Evaluation of a model on a data set, in one process or shared over several."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from coatlib.train.distributed import amp_dtype


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
    dtype = amp_dtype(amp, device)
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
