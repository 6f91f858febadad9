"""The book's experiments, runnable from a notebook or the command line.

``layout_sweep(...)`` is the paper's layout study (section 3.2, Figures 2 and
3) as a data-size sweep: ViT-Rel, C-C-C-C, C-C-C-T, C-C-T-T and C-T-T-T at
matched size (``matched_config``), each with its learning rate chosen on a
validation split, trained for three seeds at four training-set sizes of a
long-range task (``same_different`` with an alphabet of 8 glyphs) and on real
photos at the small-data end (``textures``), at 128 pixels so that S3 and
ViT-Rel see 8x8 maps. It records every run's final training loss (capacity)
and test accuracy (generalization); ``sweep_summary`` gives the mean and
standard error over seeds, ``coatlib.viz.plot_layout_sweep`` the figures.

Command line (each writes a JSON file with the command, the settings and the
library versions)::

    python -m coatlib.experiments layouts --workers 2   # the CPU default, about an hour on 2 cores
    python -m coatlib.experiments layouts --quick       # the whole path at toy size, seconds
    python -m coatlib.experiments layouts --full        # the same study at GPU size
    python -m coatlib.experiments inside                # ~20 minutes on 2 CPU cores

The sweep is resumable: its file is rewritten after every finished run and an
interrupted sweep started again skips what it holds. The CPU default's file,
``coatlib/artefacts/layout_sweep.json``, ships with the package (chapter 4
reads it with ``sweep_results``, also in Colab).

``inside(...)`` trains the models that the chapter "Inside a trained
CoAtNet" looks into: ``coatnet_pico`` as C-C-T-T and as C-C-C-C at 128 pixels
on ``textures``, for two seeds. It saves each model's state dict (in float16,
to keep the files small) and ``inside.json``, which the chapter reads back with
``inside_results`` and ``inside_model``. The committed results ship with the
package, in ``coatlib/artefacts/inside_coatnet/``, so the chapter runs in
Colab without the repository.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import multiprocessing
import shlex
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

import coatlib
import coatlib.data
from coatlib.flops import count_flops, count_params
from coatlib.models.coatnet import CONFIGS, CoAtNet, CoAtNetConfig
from coatlib.train import evaluate, fit, versions

PAPER_ORDER = ("ViT-Rel", "C-C-C-C", "C-C-C-T", "C-C-T-T", "C-T-T-T")
# The sweep's settings. SWEEP is the CPU default (about an hour on 2 cores with --workers 2), QUICK runs
# the whole path at toy size in seconds (tests), FULL is the same code at GPU size.
SWEEP = {
    "model": "coatnet_pico",  # the base config; every layout's last width is matched to C-C-T-T's size
    "image_size": 128,  # S3 sees 8x8 maps, ViT-Rel 8x8 tokens
    "batch_size": 16,  # small batches: more steps for the same compute
    "task": {"data": "same_different", "glyphs": 8},  # the long-range task of the data-size sweep
    "sizes": (128, 512, 2048, 4096),  # training images (32x from first to last)
    "epochs": (32, 16, 6, 4),  # per size (256, 512, 768, 1024 steps): the same steps for every layout at a size
    "real": {"data": "textures", "sizes": (600,), "epochs": (10,)},  # real photos at the small-data end
    "seeds": (0, 1, 2),
    "lr_grid": (5e-4, 1.5e-3, 4e-3),  # peak learning rates tried per layout ...
    "lr_size": 2048,  # ... on this many training images of the task (seed 0), scored on
    "val_size": 1000,  # a validation split: images of the training stream that no run trains on
    "test_size": 2000,
    "train_eval_size": 1024,  # training images on which the final training loss is measured
    "warmup": 0.1,  # fraction of the steps with linear warm-up, then cosine decay
    "weight_decay": 0.05,
}
QUICK = {
    **SWEEP,
    "image_size": 32,
    "sizes": (32, 64),
    "epochs": (1, 1),
    "real": {"data": "textures", "sizes": (32,), "epochs": (1,)},
    "seeds": (0, 1),
    "lr_grid": (1e-3, 3e-3),
    "lr_size": 32,
    "val_size": 32,
    "test_size": 32,
    "train_eval_size": 32,
}
FULL = {
    **SWEEP,
    "model": "coatnet_nano",
    "batch_size": 128,
    "sizes": (2048, 8192, 32768, 131072),
    "epochs": (400, 100, 25, 8),  # 6,400 to 8,192 steps
    "real": {"data": "textures", "sizes": (300, 2400), "epochs": (400, 60)},
    "lr_size": 32768,
    "val_size": 4000,
    "test_size": 10000,
    "train_eval_size": 8192,
}
PRESETS = {"quick": QUICK, "cpu": SWEEP, "full": FULL}
LAYOUT_SWEEP = Path(__file__).parent / "artefacts" / "layout_sweep.json"


def matched_config(base: CoAtNetConfig, layout: str, image_size: int) -> CoAtNetConfig:
    """``base`` with the width of its last stage chosen so that ``layout`` has about C-C-T-T's parameters.

    The paper compares the layouts "with similar model size" and does not say how; this is our
    choice: only the last width changes (S4's, or for ViT-Rel the width of its single stage,
    which ``CoAtNet`` takes from S3's), in steps of the head size (16 channels for an MBConv S4),
    to the value whose parameter count is closest to ``base`` in C-C-T-T. For ``coatnet_pico``
    only C-C-C-C changes (S4 128 -> 144).
    """
    target = count_params(CoAtNet(base, num_classes=2, image_size=image_size, layout="C-C-T-T"))
    last = 2 if layout == "ViT-Rel" else 3
    step = 16 if layout.endswith("C") else base.head_dim
    best = None
    for width in range(step, 4 * base.widths[last] + 1, step):
        widths = tuple(width if i == last else w for i, w in enumerate(base.widths))
        config = dataclasses.replace(base, widths=widths)
        gap = abs(count_params(CoAtNet(config, num_classes=2, image_size=image_size, layout=layout)) - target)
        if best is None or gap < best[0]:
            best = (gap, config)
    return best[1]


def sweep_models(settings: dict, num_classes: int = 2) -> dict[str, dict]:
    """Layout -> its matched config, parameters and multiply-accumulates at the sweep's image size."""
    base = CONFIGS[settings["model"]]
    models = {}
    for layout in PAPER_ORDER:
        config = matched_config(base, layout, settings["image_size"])
        model = CoAtNet(config, num_classes=num_classes, image_size=settings["image_size"], layout=layout)
        models[layout] = {
            "config": dataclasses.asdict(config),
            "params": count_params(model),
            "macs": count_flops(model, settings["image_size"]),
        }
    return models


def sweep_data(data: dict, size: int, settings: dict, split: str) -> tuple[Dataset, int]:
    """The images of one run and the number of classes.

    ``split`` is "train" (the first ``size`` images), "val" (``val_size`` images of the training
    stream after every training set, so no run trains on them), "test", or "train_eval"
    (the first ``min(size, train_eval_size)`` training images, without augmentation).
    Training sets are nested: a smaller set is the start of a larger one. The photos of
    ``textures`` are ordered by class, so their training sets follow a fixed random order.
    """
    image_size = settings["image_size"]
    if data["data"] in coatlib.data.GENERATED:
        options = {k: v for k, v in data.items() if k != "data"}
        if split == "test":
            d = coatlib.data.load(data["data"], "test", image_size, size=settings["test_size"], **options)
            return d, len(d.classes)
        largest = max([*settings["sizes"], settings["lr_size"]])
        d = coatlib.data.load(data["data"], "train", image_size, size=largest + settings["val_size"], **options)
        first = {"train": range(size), "train_eval": range(min(size, settings["train_eval_size"]))}
        return Subset(d, first.get(split, range(largest, largest + settings["val_size"]))), len(d.classes)
    d = coatlib.data.load(data["data"], "test" if split == "test" else "train", image_size)
    if split == "test":
        return d, len(d.classes)
    if size > len(d):
        raise ValueError(f"{data['data']} has {len(d)} training images; the sweep asks for {size}")
    if split == "train_eval":
        d.augment = None
        size = min(size, settings["train_eval_size"])
    order = torch.randperm(len(d), generator=torch.Generator().manual_seed(0))
    return Subset(d, order[:size].tolist()), len(d.classes)


def run_one(job: dict) -> dict:
    """Train one model of the sweep (``job``: layout, data, size, epochs, seed, lr, settings); return its row.

    The row holds the final training loss and accuracy measured in eval mode on the training
    images (the capacity the paper reads off its training curves), the test (or, for the
    learning-rate sweep, validation) loss and accuracy, the training loss of every epoch, the
    optimiser steps and the seconds.
    """
    settings = job["settings"]
    torch.set_num_threads(job.get("threads", torch.get_num_threads()))
    train, classes = sweep_data(job["data"], job["size"], settings, "train")
    score = "val" if job["kind"] == "lr" else "test"
    torch.manual_seed(job["seed"])
    model = CoAtNet(
        stored_config(job["config"]), num_classes=classes, image_size=settings["image_size"], layout=job["layout"]
    )
    history = fit(
        model,
        train,
        None,
        job["epochs"],
        batch_size=settings["batch_size"],
        lr=job["lr"],
        weight_decay=settings["weight_decay"],
        warmup_epochs=settings["warmup"] * job["epochs"],
        label_smoothing=0.0,
        seed=job["seed"],
        progress=False,
    )
    train_loss, train_acc = evaluate(model, sweep_data(job["data"], job["size"], settings, "train_eval")[0])
    loss, acc = evaluate(model, sweep_data(job["data"], job["size"], settings, score)[0])
    keys = ("kind", "layout", "size", "seed", "lr", "epochs")
    return {
        **{k: job[k] for k in keys},
        "data": job["data"]["data"],
        "steps": job["epochs"] * (job["size"] // settings["batch_size"]),
        "train_loss": train_loss,
        "train_acc": train_acc,
        f"{score}_loss": loss,
        f"{score}_acc": acc,
        "train_loss_curve": history["train_loss"],
        "seconds": sum(history["time"]),
    }


def layout_sweep(
    preset: str = "cpu", out: str | Path | None = None, workers: int = 1, progress: bool = False, command: str = ""
) -> dict:
    """The layout study of the paper's section 3.2 as a data-size sweep; returns the record it writes to ``out``.

    1. Every layout of ``PAPER_ORDER`` is built at matched size (``matched_config``).
    2. Learning-rate sweep: each layout is trained with each rate of ``lr_grid`` on ``lr_size``
       images of the task (seed 0) and scored on the validation split; ``chosen_lrs`` picks
       that layout's rate for everything after.
    3. Every layout, training-set size and seed, on the long-range task (``task``) and on real
       photos (``real``), trained with its rate for the epochs of that size.

    Resumable: ``out`` (default ``coatlib/artefacts/layout_sweep.json``, which ships with the
    package) is rewritten after every finished run, and runs already in it are skipped when the
    command starts again with the same settings. ``workers`` processes train at once, each
    with ``torch.get_num_threads() // workers`` threads (small models use two 1-thread workers
    better than one 2-thread process).
    """
    settings = json.loads(json.dumps(PRESETS[preset]))  # tuples -> lists, as the JSON file holds them
    check_sweep_settings(settings)
    out = sweep_path(preset, out)
    record = json.loads(out.read_text()) if out.is_file() else None
    if record is not None and record["settings"] != settings:
        raise ValueError(
            f"{out} holds a sweep with other settings (preset {record.get('preset')!r}): "
            "delete it, or pass another --out, to start this one"
        )
    if record is None:
        record = {"experiment": "layout_sweep", "preset": preset, "settings": settings, "runs": []}
        record["models"] = sweep_models(settings)
    threads = max(1, torch.get_num_threads() // workers)
    for kind in ("lr", "sweep"):
        if kind == "sweep":
            record["lr"] = chosen_lrs(record)
        jobs = [{**job, "threads": threads} for job in sweep_jobs(record, kind)]
        with _pool(workers) as imap:
            for row in imap(run_one, jobs):
                record["runs"].append(row)
                save(record, out, command)
                if progress:
                    score = "val" if row["kind"] == "lr" else "test"
                    print(
                        f"{row['kind']:5s} {row['layout']:7s} {row['data']:14s} n={row['size']:<5d} seed {row['seed']} "
                        f"lr {row['lr']:.0e}: train loss {row['train_loss']:.3f}, {score} acc "
                        f"{row[score + '_acc']:.3f} ({row['seconds']:.0f} s)",
                        flush=True,
                    )
    return json.loads(out.read_text())


def sweep_model(record: dict, layout: str, num_classes: int = 2) -> CoAtNet:
    """The untrained model of ``layout`` in ``record`` (from ``sweep_results``), built from the config it stores."""
    config = stored_config(record["models"][layout]["config"])
    return CoAtNet(config, num_classes=num_classes, image_size=record["settings"]["image_size"], layout=layout)


def stored_config(config: dict) -> CoAtNetConfig:
    """A ``CoAtNetConfig`` from its JSON form (lists back to tuples)."""
    return CoAtNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


def sweep_path(preset: str, out: str | Path | None = None) -> Path:
    """Where ``layout_sweep`` writes: ``out``, else the packaged file (cpu) or ``results/layout_sweep_PRESET.json``."""
    if out is not None:
        return Path(out)
    return LAYOUT_SWEEP if preset == "cpu" else Path("results") / f"layout_sweep_{preset}.json"


def sweep_jobs(record: dict, kind: str) -> list[dict]:
    """The runs of ``kind`` ("lr": the learning-rate sweep; "sweep": the study) not yet in ``record``."""
    settings = record["settings"]
    if kind == "lr":
        epochs = dict(zip(settings["sizes"], settings["epochs"])).get(settings["lr_size"], settings["epochs"][0])
        specs = [
            (layout, settings["task"], settings["lr_size"], 0, lr, epochs)
            for layout in PAPER_ORDER
            for lr in settings["lr_grid"]
        ]
    else:
        specs = [
            (layout, data, size, seed, record["lr"][layout], epochs)
            for seed in settings["seeds"]  # seed by seed, so that an interrupted sweep has whole seeds
            for data in (settings["task"], settings["real"])
            for size, epochs in zip(data.get("sizes", settings["sizes"]), data.get("epochs", settings["epochs"]))
            for layout in PAPER_ORDER
        ]
    done = {(r["kind"], r["layout"], r["data"], r["size"], r["seed"], r["lr"]) for r in record["runs"]}
    return [
        {
            "kind": kind,
            "layout": layout,
            "data": {k: v for k, v in data.items() if k not in ("sizes", "epochs")},
            "size": size,
            "seed": seed,
            "lr": lr,
            "epochs": epochs,
            "config": record["models"][layout]["config"],
            "settings": settings,
        }
        for layout, data, size, seed, lr, epochs in specs
        if (kind, layout, data["data"], size, seed, lr) not in done
    ]


def chosen_lrs(record: dict) -> dict[str, float]:
    """Layout -> its rate of ``lr_grid``: the one with the best validation accuracy (ties: the lower
    validation loss), if that accuracy is above chance by more than two binomial standard errors of
    the validation split. Otherwise the split cannot tell the rates apart, and the rate with the
    lowest final training loss is taken: the one that optimises best (our rule; chosen before the
    study ran, and reported in chapter 4)."""
    settings = record["settings"]
    chance, n = 0.5, settings["val_size"]  # the task has two balanced classes
    above_chance = chance + 2 * (chance * (1 - chance) / n) ** 0.5
    rows = [r for r in record["runs"] if r["kind"] == "lr"]
    chosen = {}
    for layout in PAPER_ORDER:
        tried = [r for r in rows if r["layout"] == layout]
        if len(tried) < len(settings["lr_grid"]):
            raise ValueError(f"the learning-rate sweep of {layout} is unfinished ({len(tried)} rates of the grid)")
        best = max(tried, key=lambda r: (r["val_acc"], -r["val_loss"]))
        chosen[layout] = (
            best["lr"] if best["val_acc"] > above_chance else min(tried, key=lambda r: r["train_loss"])["lr"]
        )
    return chosen


def check_sweep_settings(settings: dict) -> None:
    """Refuse settings that cannot run: sizes and epochs of different lengths, batches larger than a set."""
    for data in (settings, settings["real"]):
        if len(data["sizes"]) != len(data["epochs"]):
            raise ValueError(f"{len(data['sizes'])} sizes but {len(data['epochs'])} epoch counts: give one per size")
        if min(data["sizes"]) < settings["batch_size"]:
            raise ValueError(f"a training set of {min(data['sizes'])} images is smaller than one batch")


@contextlib.contextmanager
def _pool(workers: int):
    """``imap(fn, jobs)`` over ``workers`` processes (results in the order they finish), or in this process."""
    if workers <= 1:
        yield lambda fn, jobs: map(fn, jobs)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield lambda fn, jobs: pool.imap_unordered(fn, jobs)


def sweep_summary(record: dict) -> list[dict]:
    """One row per (data, size, layout) of the study: mean and standard error over seeds of the test
    accuracy and the final training loss, and the number of seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in record["runs"]:
        if r["kind"] == "sweep":
            groups[(r["data"], r["size"], r["layout"])].append(r)
    rows = []
    for (data, size, layout), runs in sorted(
        groups.items(), key=lambda g: (g[0][0], g[0][1], PAPER_ORDER.index(g[0][2]))
    ):
        row = {"data": data, "size": size, "layout": layout, "seeds": len(runs)}
        for key in ("test_acc", "train_loss"):
            mean, se = mean_and_se([r[key] for r in runs])
            row[key], row[key + "_se"] = mean, se
        rows.append(row)
    return rows


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n); 0 for one value)."""
    t = torch.tensor(values, dtype=torch.float64)
    se = t.std().item() / len(values) ** 0.5 if len(values) > 1 else 0.0
    return t.mean().item(), se


def sweep_results(path: str | Path | None = None) -> dict:
    """The record ``layout_sweep`` wrote (default: the one that ships with ``coatlib``)."""
    path = Path(path or LAYOUT_SWEEP)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: install coatlib from the book's repository (pip install "
            "'coatlib @ git+https://github.com/coatnet-from-scratch/coatnet-book@main'), which ships it, "
            "or make it with `python -m coatlib.experiments layouts --workers 2` (about an hour on 2 CPU cores)"
        )
    return json.loads(path.read_text())


INSIDE = {
    "data": "textures",
    "size": "pico",
    "layouts": ("C-C-T-T", "C-C-C-C"),
    "seeds": (0, 1),
    "epochs": 3,
    "image_size": 128,
    "batch_size": 64,
    "lr": 3e-3,
    "warmup_epochs": 0.5,
}
# --quick: the whole path at toy size (a few seconds), for the tests.
INSIDE_QUICK = {**INSIDE, "seeds": (0,), "epochs": 1, "image_size": 32, "batch_size": 16, "subset": 64}
INSIDE_DIR = Path(__file__).parent / "artefacts" / "inside_coatnet"


def inside(out: str | Path = INSIDE_DIR, quick: bool = False, progress: bool = False, command: str = "") -> dict:
    """Train ``coatnet_{size}`` in each layout of ``INSIDE`` for each seed; save the state dicts and ``inside.json``.

    Every model starts from ``torch.manual_seed(seed)`` (so the initial weights can be rebuilt) and is
    trained by ``coatlib.train.fit`` with the settings of ``INSIDE`` (``INSIDE_QUICK`` if ``quick``).
    ``inside.json`` is rewritten after every model, so an interrupted run keeps what it finished.
    """
    settings = dict(INSIDE_QUICK if quick else INSIDE)
    subset = settings.pop("subset", None)
    train_data, test_data = coatlib.data.load_splits(settings["data"], settings["image_size"])
    classes = len(train_data.classes)
    if subset:  # the first images of a fixed random order, every class in it
        order = torch.randperm(len(train_data), generator=torch.Generator().manual_seed(0))
        train_data = Subset(train_data, order[:subset].tolist())
        test_data = Subset(test_data, order[: subset // 2].remainder(len(test_data)).tolist())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "experiment": "inside",
        "settings": {**settings, "train_images": len(train_data), "test_images": len(test_data), "classes": classes},
        "results": [],
    }
    for seed in settings["seeds"]:
        for layout in settings["layouts"]:
            torch.manual_seed(seed)
            model = coatlib.create_model(
                f"coatnet_{settings['size']}", num_classes=classes, image_size=settings["image_size"], layout=layout
            )
            history = fit(
                model,
                train_data,
                test_data,
                settings["epochs"],
                batch_size=settings["batch_size"],
                lr=settings["lr"],
                warmup_epochs=settings["warmup_epochs"],
                seed=seed,
                progress=progress,
            )
            weights = f"{layout.replace('-', '').lower()}_seed{seed}.pt"
            state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
            torch.save(state, out / weights)
            result["results"].append(
                {
                    "layout": layout,
                    "seed": seed,
                    "params": count_params(model),
                    "weights": weights,
                    "test_acc": history["test_acc"][-1],
                    "train_loss": history["train_loss"][-1],
                    "time": sum(history["time"]),
                    "history": history,
                }
            )
            if progress:
                row = result["results"][-1]
                print(f"{layout} seed {seed}: test acc {row['test_acc']:.4f} ({row['time']:.0f} s)", flush=True)
            save(result, out / "inside.json", command)
    return result


def inside_results(folder: str | Path | None = None) -> dict:
    """The record ``inside`` wrote: command, settings, versions and one row per trained model.

    ``folder`` defaults to the results that ship with ``coatlib``; where they are missing (a
    copy of the package without its data files), the error says how to get them.
    """
    path = Path(folder or INSIDE_DIR) / "inside.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: install coatlib from the book's repository (pip install "
            "'coatlib @ git+https://github.com/coatnet-from-scratch/coatnet-book@main'), which ships it, "
            "or make it with `python -m coatlib.experiments inside` (about 20 minutes on 2 CPU cores)"
        )
    return json.loads(path.read_text())


def inside_model(record: dict, layout: str, seed: int = 0, folder: str | Path | None = None) -> torch.nn.Module:
    """The trained model of ``record`` (from ``inside_results``) with ``layout`` and ``seed``, in eval mode."""
    row = next((r for r in record["results"] if r["layout"] == layout and r["seed"] == seed), None)
    if row is None:
        raise ValueError(f"no {layout} model of seed {seed} in the record")
    model = initial_model(record, layout, seed)
    state = torch.load(Path(folder or INSIDE_DIR) / row["weights"], map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval()


def initial_model(record: dict, layout: str, seed: int = 0) -> torch.nn.Module:
    """The model of ``record`` with ``layout`` before training: rebuilt from its seed, in eval mode."""
    settings = record["settings"]
    torch.manual_seed(seed)
    model = coatlib.create_model(
        f"coatnet_{settings['size']}",
        num_classes=settings["classes"],
        image_size=settings["image_size"],
        layout=layout,
    )
    return model.eval()


def save(result: dict, path: str | Path, command: str) -> Path:
    """Write ``result`` as JSON with the command that made it, the library versions and the date."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": command,
        "versions": versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **result,
    }
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=1))
    partial.replace(path)  # atomic: an interrupted write never leaves a broken file behind
    return path


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m coatlib.experiments", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="experiment", required=True)
    q = sub.add_parser("layouts", help="the layout study of the paper's section 3.2, as a data-size sweep")
    size = q.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help=f"the whole path at toy size, seconds: {QUICK}")
    size.add_argument("--full", action="store_true", help=f"the same study at GPU size: {FULL}")
    q.add_argument("--workers", type=int, default=1, help="processes training at once (2 on a 2-core CPU)")
    q.add_argument(
        "--out", type=Path, default=None, help=f"JSON file (default {LAYOUT_SWEEP.name} in coatlib/artefacts)"
    )
    q.add_argument("--quiet", action="store_true")
    q = sub.add_parser("inside", help="the models of the chapter 'Inside a trained CoAtNet'")
    q.add_argument("--quick", action="store_true", help=f"toy size, seconds: {INSIDE_QUICK}")
    q.add_argument("--out", type=Path, default=INSIDE_DIR, help="folder for inside.json and the state dicts")
    q.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    q.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    command = "python -m coatlib.experiments " + shlex.join(argv)
    if args.experiment == "inside":
        torch.set_num_threads(args.threads)
        result = inside(args.out, quick=args.quick, progress=not args.quiet, command=command)
        print(f"wrote {args.out / 'inside.json'}")
        return result

    preset = "quick" if args.quick else "full" if args.full else "cpu"
    record = layout_sweep(preset, args.out, workers=args.workers, progress=not args.quiet, command=command)
    print(f"wrote {sweep_path(preset, args.out)}")
    return record


if __name__ == "__main__":
    main()
