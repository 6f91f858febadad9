"""Run by ``tests/test_fsdp.py`` under ``torchrun --standalone --nproc_per_node=2``: FSDP training runs.

In the folder ``sys.argv[1]`` it trains ViT-Rel pico with ``fit(fsdp=True)``
(1) for 2 epochs, (2) crashing in epoch 2 and then resumed, (3) with activation
checkpointing, and (4) CoAtNet pico (with BatchNorm) in bfloat16 with activation
checkpointing, and writes each run's history and the logits of its final
model on 8 test images to ``results.pt`` (process 0).
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

import coatlib
from coatlib.data import load_splits
from coatlib.train import fit, init_distributed

SETTINGS = dict(epochs=2, batch_size=8, lr=3e-3, progress=False)


class Interrupted(Exception):
    pass


class CrashAfter(torch.utils.data.Dataset):
    """The wrapped data set, until ``n`` images have been read: then the run 'crashes'."""

    def __init__(self, data, n):
        self.data, self.n, self.reads = data, n, 0
        self.dataset = data  # as torch's wrappers keep it: fit describes the data it wraps

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.reads += 1
        if self.reads > self.n:
            raise Interrupted
        return self.data[i]


def model(seed=0):
    torch.manual_seed(seed)
    return coatlib.create_model("coatnet_pico_vitrel", num_classes=2, image_size=32)


def logits(net, images):
    net.eval()
    with torch.no_grad():
        return net(images).float()


def main(folder: Path):
    rank, _, _ = init_distributed()
    train, test = load_splits("same_different", 32, 3, 64, 16)
    images = torch.stack([test[i][0] for i in range(8)])
    results = {}

    net = model()
    results["history"] = fit(net, train, test, checkpoint=folder / "through", fsdp=True, **SETTINGS)
    results["logits"] = logits(net, images)

    try:  # each process has read 1 + 1.5 epochs' images of its share: the crash comes in epoch 2
        fit(
            model(),
            CrashAfter(train, 1 + len(train) * 3 // 4),
            test,
            checkpoint=folder / "crashed",
            fsdp=True,
            **SETTINGS,
        )
    except Interrupted:
        results["crashed_epoch"] = torch.load(folder / "crashed" / "train_state.pt", weights_only=True)["epoch"]
    resumed = model(seed=123)  # other initial weights: resuming replaces them
    results["resumed_history"] = fit(
        resumed, train, test, checkpoint=folder / "crashed", resume=True, fsdp=True, **SETTINGS
    )
    results["resumed_logits"] = logits(resumed, images)

    recomputed = model()
    results["checkpointed_history"] = fit(recomputed, train, test, fsdp=True, activation_checkpointing=True, **SETTINGS)
    torch.manual_seed(0)  # CoAtNet with BatchNorm, bfloat16 and activation checkpointing
    coatnet = coatlib.create_model("coatnet_pico", num_classes=2, image_size=32)
    results["bf16_history"] = fit(
        coatnet, train, test, fsdp=True, amp="bf16", activation_checkpointing=True, **SETTINGS
    )
    results["images"] = images
    if rank == 0:
        torch.save(results, folder / "results.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
