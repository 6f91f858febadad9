"""The layout study of the paper's section 2.2 in two regimes: a fixed data set against fresh data.

The paper compares its five layouts (ViT-Rel, C-C-C-C, C-C-C-T, C-C-T-T,
C-T-T-T) twice: *generalization* on ImageNet-1K (test accuracy at equal
training loss) and *capacity* on JFT-300M (how well a layout fits data it
never runs out of). A generated task gives both regimes at once (Nakkiran,
Neyshabur, Sedghi, "The Deep Bootstrap Framework", ICLR 2021):

* **real world**: a fixed training set of N images, seen again and again, at
  three sizes N spanning 16x. Generalization is the test accuracy, also read
  against the final training loss.
* **ideal world**: the same number of steps, every batch fresh images. The
  training loss is then a test loss; capacity is the *online* loss, the mean
  training loss over the last 10% of the steps.

The task is ``digit_pairs`` (two digits among clutter, labelled by the ordered
pair): recognising a digit is local, putting two in order is a relation
across the image, and a bag of local features is blind to the order
(``coatlib.studies.bag_of_features``, run and recorded here). A purely local
task (``label="digit"``, one digit among clutter) is trained beside it, at the
smallest size.

The layouts are matched in parameters (``matched_config``). Each layout's
learning rate is chosen from ``lr_grid`` by its online loss in an ideal-world
pilot of the study's length (seed ``lr_seed``, which the study then leaves
out), never by a test or validation accuracy, and used in every regime. The
study's first seed in the ideal world then gates the rest: the layouts'
ideal-world losses must separate by more than their seed spread (``gate``),
or the study stops and says so. Every pilot is recorded, and records of
earlier, abandoned pilots can be carried into the record (``earlier``).

This module holds the study's design (the presets, the matched models) and reads its record;
``coatlib.studies.layouts_run.layout_study(preset, out)`` runs everything, resumable: the record
is rewritten atomically after every run and a restarted study skips what it holds.
``study_table`` and ``study_verdicts`` (through ``coatlib.studies.stats``)
turn the record into intervals and verdicts on the paper's orderings.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from coatlib.flops import count_flops, count_params
from coatlib.models.coatnet import CONFIGS, LAYOUTS, CoAtNet, CoAtNetConfig, stage_plan
from coatlib.studies import stats
from coatlib.studies.records import read_record

# The paper's section 2.2, in its notation: generalization on ImageNet-1K, capacity on JFT-300M.
PAPER = {
    "generalization": "C-C-C-C ≈ C-C-C-T ≥ C-C-T-T > C-T-T-T ≫ ViT-Rel",
    "capacity": "C-C-T-T ≈ C-T-T-T > ViT-Rel > C-C-C-T > C-C-C-C",
}
# The CPU default: about 75 minutes on 2 cores (two 1-thread workers, bf16 autocast).
CPU = {
    "model": "coatnet_pico",
    "widths": None,  # the base config's widths (a list overrides them)
    "image_size": 128,  # S3 sees 8x8 maps, ViT-Rel 8x8 tokens
    "batch_size": 16,
    "amp": "bf16",  # autocast; the amp pilot compares it with float32 on one layout
    "task": {"data": "digit_pairs", "label": "pair", "clutter": 8},
    "local": {"data": "digit_pairs", "label": "digit", "clutter": 8},
    "steps": 1500,  # every run, both worlds: 24,000 images seen
    "sizes": (750, 3000, 12000),  # the real world's fixed training sets (32, 8 and 2 passes)
    "local_size": 750,
    "local_steps": 375,
    "seeds": (1, 2, 3),
    "lr_grid": (5e-4, 1e-3, 2e-3),
    "lr_seed": 0,  # the rate pilot's seed, left out of the study (no seed is both chosen on and measured)
    "warmup": 0.05,  # fraction of the steps with linear warm-up, then cosine decay to 0
    "weight_decay": 0.05,
    "test_size": 2000,
    "train_eval_size": 1000,  # training images on which the final training loss is measured
    "online_fraction": 0.1,  # the online loss: mean training loss over this last share of the steps
    "baseline": {"train": 4000, "test": 2000},
    "require_gate": True,  # stop before the study when the pilot's layouts do not separate
}
QUICK = {
    **CPU,
    "image_size": 64,
    "steps": 8,
    "sizes": (16, 32, 64),
    "local_size": 16,
    "local_steps": 4,
    "seeds": (1, 2),
    "lr_grid": (1e-3, 2e-3),
    "test_size": 32,
    "train_eval_size": 16,
    "baseline": {"train": 128, "test": 32},
    "require_gate": False,  # toy runs separate nothing: the gate is computed and recorded, not enforced
}
# The GPU preset: wider models (about 3.3M parameters), 16x the batch, 128,000 images seen per run
# (5.3x the CPU default's), sized to run in about 5 minutes on one H200 with 12 workers.
FULL = {
    **CPU,
    "model": "coatnet_nano",
    "widths": (48, 96, 192, 384),
    "batch_size": 256,
    "steps": 500,
    "sizes": (2000, 8000, 32000),  # 64, 16 and 4 passes
    "local_size": 2000,
    "local_steps": 125,
    "lr_grid": (1e-3, 2e-3, 4e-3),  # a larger batch: the grid moves up by 2x
    "test_size": 10000,
    "train_eval_size": 4000,
}
PRESETS = {"quick": QUICK, "cpu": CPU, "full": FULL}
ARTEFACTS = Path(__file__).resolve().parent.parent / "artefacts"


# ---------------------------------------------------------------------------------------------
# Models


def base_config(settings: dict) -> CoAtNetConfig:
    """The preset's base config: ``CONFIGS[model]``, with ``widths`` when the preset gives them."""
    config = CONFIGS[settings["model"]]
    return dataclasses.replace(config, widths=tuple(settings["widths"])) if settings["widths"] else config


def matched_config(base: CoAtNetConfig, layout: str, image_size: int, num_classes: int = 100) -> CoAtNetConfig:
    """``base`` with the width of its last stage chosen so that ``layout`` has about C-C-T-T's parameters.

    The paper compares the layouts "with similar model size" and does not say how; this is our
    choice: only the last width changes (S4's, or for ViT-Rel the width of its single stage,
    which ``CoAtNet`` takes from S3's), in steps of the head size (16 channels for an MBConv S4),
    to the value whose parameter count is closest to ``base`` in C-C-T-T.
    """

    def params(config: CoAtNetConfig, layout: str = layout) -> int:
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            return count_params(CoAtNet(config, num_classes=num_classes, image_size=image_size, layout=layout))

    target = params(base, "C-C-T-T")
    last = 2 if layout == "ViT-Rel" else 3  # the config width that the plan's last run takes
    step = base.head_dim if stage_plan(base, layout, image_size)[-1].kind == "T" else 16
    widths = [
        tuple(w if i == last else width for i, width in enumerate(base.widths))
        for w in range(step, 4 * base.widths[last] + 1, step)
    ]
    return min((dataclasses.replace(base, widths=w) for w in widths), key=lambda c: abs(params(c) - target))


def study_models(settings: dict, num_classes: int = 100) -> dict[str, dict]:
    """Layout -> its matched config, parameters and multiply-accumulates at the study's image size."""
    models = {}
    for layout in LAYOUTS:
        config = matched_config(base_config(settings), layout, settings["image_size"], num_classes)
        model = CoAtNet(config, num_classes=num_classes, image_size=settings["image_size"], layout=layout)
        models[layout] = {
            "config": dataclasses.asdict(config),
            "params": count_params(model),
            "macs": count_flops(model, settings["image_size"]),
        }
    return models


def stored_config(config: dict) -> CoAtNetConfig:
    """A ``CoAtNetConfig`` from its JSON form (lists back to tuples)."""
    return CoAtNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


def study_model(record: dict, layout: str) -> CoAtNet:
    """The untrained model of ``layout`` in ``record``, built from the config it stores."""
    return CoAtNet(
        stored_config(record["models"][layout]["config"]),
        num_classes=100,
        image_size=record["settings"]["image_size"],
        layout=layout,
    )


# ---------------------------------------------------------------------------------------------
# Reading the record


def study_results(path: str | Path | None = None, preset: str = "cpu") -> dict:
    """The record ``layout_study`` wrote: ``path``, else the copy of ``preset`` that ships with coatlib."""
    path = Path(path) if path is not None else ARTEFACTS / f"layout_study_{preset}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: install coatlib from the book's repository, which ships it, or make it "
            f"with `python -m coatlib.studies layouts --workers 2` (about 75 minutes on 2 CPU cores)"
        )
    return read_record(path)


def study_runs(record: dict, task: str = "task", world: str = "real", size: int | None = None) -> dict[str, list]:
    """Layout -> the study's runs of that task, world and size, ordered by seed."""
    runs = {layout: [] for layout in LAYOUTS}
    for r in sorted(record["runs"], key=lambda r: r["seed"]):
        if r["kind"] == "study" and r["task"] == task and r["world"] == world and (size is None or r["size"] == size):
            runs[r["layout"]].append(r)
    return runs


def study_table(record: dict) -> list[dict]:
    """One row per (task, world, size, layout): 95% intervals over seeds of the test accuracy (with
    the test set's binomial noise), the final training loss, and the online loss (with its sampling noise)."""
    rows = []
    s = record["settings"]
    groups = [("task", "ideal", s["steps"] * s["batch_size"])]
    groups += [("task", "real", n) for n in s["sizes"]] + [("local", "real", s["local_size"])]
    for task, world, size in groups:
        for layout, runs in study_runs(record, task, world, size).items():
            if len(runs) < 2:
                continue
            acc = [r["test_acc"] for r in runs]
            rows.append(
                {
                    "task": task,
                    "world": world,
                    "size": size,
                    "layout": layout,
                    "seeds": len(runs),
                    "test_acc": stats.interval(
                        acc, [stats.binomial_var(a, r["test_images"]) for a, r in zip(acc, runs)]
                    ),
                    "train_loss": stats.interval([r["train_loss"] for r in runs]),
                    "online_loss": stats.interval(
                        [r["online_loss"] for r in runs], [r["online_loss_var"] for r in runs]
                    ),
                }
            )
    return rows


def study_verdicts(record: dict) -> dict[str, list[stats.Verdict]]:
    """The paper's two orderings against the record: generalization (test accuracy, real world) at
    each size and on the local task; capacity (online loss, ideal world, lower is better)."""
    s = record["settings"]
    out = {}
    for task, size in [("task", n) for n in s["sizes"]] + [("local", s["local_size"])]:
        runs = study_runs(record, task, "real", size)
        values = {name: [r["test_acc"] for r in rs] for name, rs in runs.items()}
        noise = {
            name: float(np.mean([stats.binomial_var(r["test_acc"], r["test_images"]) for r in rs]))
            for name, rs in runs.items()
        }
        out[f"generalization {task} {size}"] = stats.verdicts(values, PAPER["generalization"], noise)
    runs = study_runs(record, "task", "ideal")
    values = {name: [r["online_loss"] for r in rs] for name, rs in runs.items()}
    noise = {name: float(np.mean([r["online_loss_var"] for r in rs])) for name, rs in runs.items()}
    out["capacity"] = stats.verdicts(values, PAPER["capacity"], noise, larger_is_better=False)
    return out
