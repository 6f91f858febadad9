"""The command line of the book's studies, ``python -m coatlib.studies``.

Each writes a JSON file with the command, the settings and the library versions::

    python -m coatlib.studies layouts --workers 2   # the CPU default, about 75 minutes on 2 cores
    python -m coatlib.studies layouts --quick       # the whole path at toy size, seconds
    python -m coatlib.studies layouts --full --device cuda --workers 8   # the GPU preset
    python -m coatlib.studies inside --workers 2    # about 40 minutes on 2 CPU cores
    python -m coatlib.studies inside --quick        # the whole path at toy size, a minute

The layout study (``coatlib.studies.layouts``) writes ``OUT/layout_study_PRESET.json`` (``--out``, default
``coatlib-results`` under the current directory), the inside study (``coatlib.studies.inside``)
``OUT/inside.json`` and its weights (default ``coatlib-results/inside``); neither ever writes into the
installed package, except that ``--update-artefact`` (in a source checkout) then copies the finished
record to ``coatlib/artefacts/``, where the chapter reads it.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path

from coatlib.studies import inside as inside_study
from coatlib.studies import layouts, layouts_run
from coatlib.studies.inside_record import update_inside_artefact
from coatlib.studies.records import check_workers, results_folder


def _workers(text: str) -> int:
    """``--workers``: an int >= 1 (argparse reports the error with the option's name)."""
    try:
        return check_workers(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= 1 (processes training at once), got {text!r}") from None


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m coatlib.studies", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="experiment", required=True)
    q = sub.add_parser("layouts", help="the layout study of the paper's section 2.2, real world against ideal world")
    size = q.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the whole path at toy size, seconds")
    size.add_argument("--full", action="store_true", help="the GPU preset: wider models, longer runs")
    q.add_argument("--workers", type=_workers, default=1, help="processes training at once, >= 1 (2 on a 2-core CPU)")
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
    q.add_argument("--quick", action="store_true", help="the whole path at toy size, seconds a run")
    q.add_argument("--workers", type=_workers, default=1, help="processes training at once, >= 1 (2 on a 2-core CPU)")
    q.add_argument("--out", type=Path, default=inside_study.INSIDE_OUT, help="folder for inside.json and the weights")
    q.add_argument(
        "--update-artefact",
        action="store_true",
        help="copy the finished record (and the weights the chapter loads) into coatlib/artefacts/inside_coatnet/",
    )
    q.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    command = "python -m coatlib.studies " + shlex.join(argv)
    if args.experiment == "inside":
        try:
            result = inside_study.inside(
                args.out, quick=args.quick, workers=args.workers, progress=not args.quiet, command=command
            )
            print(f"wrote {args.out / 'inside.json'}")
            if args.update_artefact:
                print(f"copied to {update_inside_artefact(args.out)}")
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        return result

    preset = "quick" if args.quick else "full" if args.full else "cpu"
    try:
        results_folder(args.out)
        record = layouts_run.layout_study(
            preset,
            args.out,
            workers=args.workers,
            device=args.device,
            progress=not args.quiet,
            command=command,
            earlier=args.earlier,
        )
    except layouts_run.GateFailed as e:
        raise SystemExit(f"the pilot gate did not pass ({e}); the pilots are in {args.out}") from None
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    path = args.out / f"layout_study_{preset}.json"
    print(f"wrote {path}")
    if args.update_artefact:
        target = layouts.ARTEFACTS / path.name
        shutil.copyfile(path, target)
        print(f"copied to {target}")
    return record
