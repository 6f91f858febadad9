"""The book's experiments, runnable from a notebook or the command line.

``coatlib.studies.layouts`` is the paper's layout study (section 2.2) in two
regimes, a fixed data set against fresh data; see its docstring.

Command line (each writes a JSON file with the command, the settings and the
library versions)::

    python -m coatlib.experiments layouts --workers 2   # the CPU default, about 75 minutes on 2 cores
    python -m coatlib.experiments layouts --quick       # the whole path at toy size, seconds
    python -m coatlib.experiments layouts --full --device cuda --workers 8   # the GPU preset
    python -m coatlib.experiments inside                # ~20 minutes on 2 CPU cores

The layout study writes ``OUT/layout_study_PRESET.json`` (``--out``, default
``coatlib-results`` under the current directory), never into the installed
package; ``--update-artefact`` (in a source checkout) then copies the finished
record to ``coatlib/artefacts/``, where the chapter reads it. The study is
resumable: its file is rewritten after every finished run and a study started
again skips what it holds.

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
import json
import shlex
import shutil
import sys
from pathlib import Path

import torch
from torch.utils.data import Subset

import coatlib
import coatlib.data
from coatlib.flops import count_params
from coatlib.studies import layouts
from coatlib.studies.records import save
from coatlib.train import fit

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


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m coatlib.experiments", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="experiment", required=True)
    q = sub.add_parser("layouts", help="the layout study of the paper's section 2.2, real world against ideal world")
    size = q.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the whole path at toy size, seconds")
    size.add_argument("--full", action="store_true", help="the GPU preset: wider models, longer runs")
    q.add_argument("--workers", type=int, default=1, help="processes training at once (2 on a 2-core CPU)")
    q.add_argument("--device", default=None, help="cpu or cuda (default: the GPU when there is one)")
    q.add_argument("--out", type=Path, default=Path("coatlib-results"), help="folder for the record and images")
    q.add_argument(
        "--update-artefact",
        action="store_true",
        help="copy the finished record into coatlib/artefacts/ (a source checkout), where the chapter reads it",
    )
    q.add_argument(
        "--earlier",
        type=Path,
        action="append",
        default=[],
        help="the record of an abandoned attempt, kept in the new record's earlier_pilots (repeatable)",
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
    try:
        record = layouts.layout_study(
            preset,
            args.out,
            workers=args.workers,
            device=args.device,
            progress=not args.quiet,
            command=command,
            earlier=args.earlier,
        )
    except layouts.GateFailed as e:
        raise SystemExit(f"the pilot gate did not pass ({e}); the pilots are in {args.out}") from None
    path = args.out / f"layout_study_{preset}.json"
    print(f"wrote {path}")
    if args.update_artefact:
        target = layouts.ARTEFACTS / path.name
        shutil.copyfile(path, target)
        print(f"copied to {target}")
    return record


if __name__ == "__main__":
    main()
