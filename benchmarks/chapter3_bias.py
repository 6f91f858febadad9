"""Chapter 3's bias experiment (no bias / pre-softmax / post-softmax) trained for 20 epochs instead of
6, built exactly as notebooks/03_relative_attention.ipynb builds it; writes a JSON.

Usage: OMP_NUM_THREADS=1 python benchmarks/chapter3_bias.py results/chapter3_bias_20_epochs.json
"""

import json
import sys

import torch
import torch.nn as nn

from coatlib.attention import RelativeAttention
from coatlib.data import load

try:
    from coatlib.blocks import TransformerBlock
except ImportError:  # before the blocks module
    from coatlib.models.coatnet import TransformerBlock
from coatlib.train import fit


class TinyRelativeNet(nn.Module):
    def __init__(self, softmax="pre", dim=32, depth=2, patch=2, image_size=16, num_classes=10):
        super().__init__()
        side = image_size // patch
        self.stem = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.blocks = nn.Sequential(
            *[TransformerBlock(dim, dim, (side, side), head_dim=8, softmax=softmax) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images):
        x = self.blocks(self.stem(images).permute(0, 2, 3, 1))
        return self.head(self.norm(x.mean((1, 2))))


def tables(model):
    return [m.relative_bias_table for m in model.modules() if isinstance(m, RelativeAttention)]


torch.set_num_threads(1)
train, test = load("digits", "train", image_size=16), load("digits", "test", image_size=16)
out = {
    "what": "notebooks/03_relative_attention.ipynb bias experiment, epochs=20 instead of 6, same seed (0), "
    "batch 32, fit's defaults, 1 thread",
    "torch": torch.__version__,
    "runs": {},
}
for variant in ("no bias", "pre-softmax", "post-softmax"):
    torch.manual_seed(0)
    model = TinyRelativeNet(softmax="post" if variant == "post-softmax" else "pre")
    if variant == "no bias":
        for t in tables(model):
            t.data.zero_()
            t.requires_grad_(False)
    h = fit(model, train, test, epochs=20, batch_size=32, progress=False)
    out["runs"][variant] = {"test_acc": h["test_acc"], "train_loss": h["train_loss"], "seconds": sum(h["time"])}
    print(variant, [round(a, 3) for a in h["test_acc"]], flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
