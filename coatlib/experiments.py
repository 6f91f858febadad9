"""The book's experiments, runnable from a notebook or the command line.

``layouts(...)`` is the paper's layout study (section 3.2, Figures 2 and 3):
ViT-Rel, C-C-C-C, C-C-C-T, C-C-T-T and C-T-T-T, of similar size, trained the
same way on one data set; for each it returns the final training loss, the
test accuracy and the parameter count. On small real data (``digits``) it
shows generalization, the gap between training loss and test accuracy; on a
large generated set (``same_different`` with many images) it shows capacity,
how low the training loss goes.

Command line (writes a JSON file with the command, the settings and the
library versions)::

    python -m coatlib.experiments layouts                        # ~3 minutes on 2 CPU cores
    python -m coatlib.experiments layouts --data same_different  # the capacity regime, small
    python -m coatlib.experiments layouts --full                 # bigger models and data, for a GPU
    python -m coatlib.experiments inside                         # ~20 minutes on 2 CPU cores

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
import datetime
import json
import shlex
import sys
from pathlib import Path

import torch
from torch.utils.data import Subset

import coatlib
import coatlib.data
from coatlib.flops import count_params
from coatlib.models.coatnet import LAYOUTS
from coatlib.train import fit, versions

PAPER_ORDER = ("ViT-Rel", "C-C-C-C", "C-C-C-T", "C-C-T-T", "C-T-T-T")
# Settings of the small default (2 CPU cores, ~3 minutes for the five models on digits) and of --full (a GPU).
SMALL = {"size": "pico", "epochs": 15, "image_size": 32, "batch_size": 64, "train_size": 10_000}
FULL = {"size": "nano", "epochs": 100, "image_size": 64, "batch_size": 128, "train_size": 200_000}


def layouts(
    data: str = "digits",
    size: str = SMALL["size"],
    epochs: int = SMALL["epochs"],
    image_size: int = SMALL["image_size"],
    batch_size: int = SMALL["batch_size"],
    train_size: int | None = None,
    test_size: int | None = None,
    candidates: tuple[str, ...] = PAPER_ORDER,
    seed: int = 0,
    progress: bool = False,
    **fit_options,
) -> dict:
    """Train ``coatnet_{size}`` in each layout of ``candidates`` on ``data``; return the settings and one row per model.

    Every model starts from ``torch.manual_seed(seed)`` and is trained by
    ``coatlib.train.fit`` with the same settings; ``label_smoothing`` defaults
    to 0 here, so the training loss is the plain cross-entropy the paper
    plots. ``train_size`` and ``test_size`` set the number of images of a
    generated data set (``same_different``). A row holds the layout, model name,
    parameters, final training loss and accuracy (running means over the last
    epoch), final test loss and accuracy, training seconds and the history.
    """
    unknown = [layout for layout in candidates if layout not in LAYOUTS]
    if unknown:
        raise ValueError(f"unknown layouts {unknown}: choose from {', '.join(PAPER_ORDER)}")
    fit_options.setdefault("label_smoothing", 0.0)
    train_data, test_data = coatlib.data.load_splits(data, image_size, train_size=train_size, test_size=test_size)
    rows = []
    for layout in candidates:
        torch.manual_seed(seed)
        model = coatlib.create_model(
            f"coatnet_{size}", num_classes=len(train_data.classes), image_size=image_size, layout=layout
        )
        history = fit(
            model, train_data, test_data, epochs, batch_size=batch_size, seed=seed, progress=progress, **fit_options
        )
        rows.append(
            {
                "layout": layout,
                "model": f"coatnet_{size}",
                "params": count_params(model),
                "train_loss": history["train_loss"][-1],
                "train_acc": history["train_acc"][-1],
                "test_loss": history["test_loss"][-1],
                "test_acc": history["test_acc"][-1],
                "time": sum(history["time"]),
                "history": history,
            }
        )
        if progress:
            print(
                f"{layout:8s} params {rows[-1]['params']:,}  train loss {rows[-1]['train_loss']:.4f}  "
                f"test acc {rows[-1]['test_acc']:.4f}  ({rows[-1]['time']:.0f} s)",
                flush=True,
            )
    settings = {
        "data": data,
        "train_images": len(train_data),
        "test_images": len(test_data),
        "size": size,
        "epochs": epochs,
        "image_size": image_size,
        "batch_size": batch_size,
        "seed": seed,
        **fit_options,
    }
    return {"experiment": "layouts", "settings": settings, "results": rows}


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
    path.write_text(json.dumps(record, indent=1))
    return path


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m coatlib.experiments", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="experiment", required=True)
    q = sub.add_parser("layouts", help="the layout study of the paper's section 3.2")
    q.add_argument("--data", default="digits", help=f"one of {', '.join(coatlib.data.DATASETS)}")
    q.add_argument("--full", action="store_true", help=f"bigger run for a GPU: {FULL}")
    q.add_argument("--epochs", type=int, default=None)
    q.add_argument("--train-size", type=int, default=None, help="training images of a generated data set")
    q.add_argument("--test-size", type=int, default=None, help="test images of a generated data set")
    q.add_argument("--device", default=None)
    q.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", type=Path, default=None, help="JSON file (default results/layouts_DATA[_full].json)")
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

    preset = FULL if args.full else SMALL
    generated = args.data in coatlib.data.GENERATED
    result = layouts(
        data=args.data,
        size=preset["size"],
        epochs=args.epochs or preset["epochs"],
        image_size=preset["image_size"],
        batch_size=preset["batch_size"],
        train_size=args.train_size or (preset["train_size"] if generated else None),
        test_size=args.test_size,
        seed=args.seed,
        progress=not args.quiet,
        device=args.device,
        amp=None if args.amp == "none" else args.amp,
    )
    out = args.out or Path("results") / f"layouts_{args.data}{'_full' if args.full else ''}.json"
    save(result, out, command)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
