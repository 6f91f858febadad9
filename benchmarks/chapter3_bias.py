"""Chapter 3's bias experiment, with several seeds: no bias, pre-softmax, post-softmax, and pre-softmax
with its bias tables' learning rate multiplied by 10.

The network is notebooks/03_relative_attention.ipynb's TinyRelativeNet (patch stem, two relative-attention
Transformer blocks of width 32 on an 8 x 8 map, average pool, linear head), trained on scikit-learn's digits
at 16 x 16 with coatlib.train.fit (batch 32, fit's other defaults: AdamW, peak lr 3e-3, one epoch of warm-up,
cosine decay). Every variant is trained once per seed; the seed sets the initial weights (torch.manual_seed
before the model is built) and fit's seed (data order). The no-bias, pre- and post-softmax networks of one
seed start from the same weights.

The fourth variant tests the chapter's explanation of why pre-softmax learns more slowly here: AdamW moves a
table entry by at most about the learning rate per step, and a pre-softmax table needs differences of several
units between its entries to shape attention. If that is the reason, a pre-softmax table that moves 10 times
as fast should close the gap. "Learning rate x 10" is done exactly: after every AdamW step the tables' change
is multiplied by 10 (the tables have no weight decay), and nothing else changes, not even gradient clipping.

The result is one JSON file (the chapter reads it): command, settings, seeds, library versions, date, and
per variant and seed the curves of training loss and test accuracy, the seconds, and a summary of the
trained tables. The default run takes about 5 minutes on one CPU thread:

    OMP_NUM_THREADS=1 python benchmarks/chapter3_bias.py            # -> coatlib/artefacts/chapter3_bias.json
    OMP_NUM_THREADS=1 python benchmarks/chapter3_bias.py --quick --out /tmp/bias.json   # seconds, a test
"""

import argparse
import contextlib
import datetime
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from coatlib.attention import RelativeAttention
from coatlib.blocks import TransformerBlock
from coatlib.data import load
from coatlib.train import fit, versions

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "coatlib" / "artefacts" / "chapter3_bias.json"
TABLE_LR_FACTOR = 10
VARIANTS = {  # name: (softmax form, bias table trained?, factor on the tables' learning rate)
    "no bias": ("pre", False, 1),
    "pre-softmax": ("pre", True, 1),
    "post-softmax": ("post", True, 1),
    f"pre-softmax, table lr x {TABLE_LR_FACTOR}": ("pre", True, TABLE_LR_FACTOR),
}


class TinyRelativeNet(nn.Module):
    """Patch stem -> relative-attention Transformer blocks on an 8 x 8 map -> average pool -> classifier
    (the chapter's network)."""

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
        x = self.blocks(self.stem(images))  # (B, dim, 8, 8)
        return self.head(self.norm(x.mean((2, 3))))


def tables(model):
    return [m.relative_bias_table for m in model.modules() if isinstance(m, RelativeAttention)]


@contextlib.contextmanager
def tables_learning_rate_times(model, factor):
    """Inside the block, every optimizer step moves the model's bias tables ``factor`` times as far as the
    optimizer would: their learning rate times ``factor``, everything else (gradients, clipping, the other
    parameters) unchanged. The tables are not weight-decayed, so this is exact for AdamW."""
    if factor == 1:
        yield
        return
    before = []

    def remember(optimizer, args, kwargs):
        before[:] = [t.detach().clone() for t in tables(model)]

    def stretch(optimizer, args, kwargs):
        with torch.no_grad():
            for table, old in zip(tables(model), before):
                table.copy_(old + factor * (table - old))

    handles = [register_optimizer_step_pre_hook(remember), register_optimizer_step_post_hook(stretch)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def table_summary(model):
    """How far the tables have shaped attention: per block, the spread of each head's entries."""
    out = []
    for table in tables(model):
        t = table.detach()
        flat = t.flatten(1)
        out.append(
            {
                "std": flat.std(1).tolist(),  # per head
                "range": (flat.max(1).values - flat.min(1).values).tolist(),  # max - min per head
            }
        )
    return out


def run(variant, seed, train, test, epochs, settings, width):
    softmax, trained, factor = VARIANTS[variant]
    torch.manual_seed(seed)
    model = TinyRelativeNet(softmax=softmax, dim=width, image_size=settings["image_size"])
    if not trained:
        for table in tables(model):
            table.data.zero_()
            table.requires_grad_(False)
    start = time.perf_counter()
    with tables_learning_rate_times(model, factor):
        history = fit(model, train, test, epochs=epochs, batch_size=settings["batch_size"], seed=seed, progress=False)
    result = {
        "train_loss": history["train_loss"],
        "test_acc": history["test_acc"],
        "seconds": time.perf_counter() - start,
        "tables": table_summary(model),
    }
    if seed == settings["seeds"][0] and trained:  # the chapter draws the first seed's first-block tables
        result["first_block_table"] = [
            [[round(v, 4) for v in row] for row in head] for head in tables(model)[0].tolist()
        ]
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON file to write (default: {DEFAULT_OUT})")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default: 0 1 2")
    p.add_argument("--epochs", type=int, default=20, help="default: 20")
    p.add_argument(
        "--quick",
        action="store_true",
        help="toy size for a test: 2 epochs on 96 training and 64 test images, width 8, seeds 0 1 2",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # a network this small trains fastest on one thread

    epochs, width = (2, 8) if args.quick else (args.epochs, 32)
    settings = {
        "data": "digits",
        "image_size": 16,
        "batch_size": 32,
        "epochs": epochs,
        "seeds": args.seeds,
        "width": width,
        "depth": 2,
        "head_dim": 8,
        "table_lr_factor": TABLE_LR_FACTOR,
        "fit": "coatlib.train.fit defaults otherwise: AdamW lr 3e-3, weight decay 0.05 (not on the tables), "
        "1 warm-up epoch, cosine decay, label smoothing 0.1, gradient clipping at norm 1",
        "threads": torch.get_num_threads(),
        "quick": args.quick,
    }
    train, test = load("digits", "train", image_size=16), load("digits", "test", image_size=16)
    if args.quick:
        train = torch.utils.data.Subset(train, range(96))
        test = torch.utils.data.Subset(test, range(64))
    out = {
        "what": "Chapter 3 (notebooks/03_relative_attention.ipynb): no bias vs pre-softmax vs post-softmax "
        f"relative bias, and pre-softmax with the tables' learning rate x {TABLE_LR_FACTOR}, on digits",
        "command": " ".join(["python benchmarks/chapter3_bias.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "settings": settings,
        "variants": list(VARIANTS),
        "runs": {variant: {} for variant in VARIANTS},
    }
    for seed in args.seeds:
        for variant in VARIANTS:
            result = run(variant, seed, train, test, epochs, settings, width)
            out["runs"][variant][str(seed)] = result
            print(
                f"seed {seed} {variant:28s} final test accuracy {result['test_acc'][-1]:.3f} "
                f"({result['seconds']:.0f} s)",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
