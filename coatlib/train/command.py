"""The command line: ``python -m coatlib.train`` (``--help`` lists every option).

::

    python -m coatlib.train --model coatnet_pico --data textures --epochs 5 --out runs/textures
    torchrun --nproc_per_node=2 -m coatlib.train --model coatnet_pico --data digits --out runs/ddp
    torchrun --standalone --nproc_per_node=2 -m coatlib.train --model coatnet_pico --fsdp --out runs/fsdp

It checks every argument and that ``--out`` is writable before building anything. An ``--out`` that holds
an earlier run (``history.json``, a checkpoint) is refused unless ``--resume`` continues that run (same
settings, checked against those the checkpoint records) or ``--force`` deletes its files and starts again.
Ctrl-C ends with "interrupted; resume with --resume", bad input with one line ``error: ...``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import coatlib.data
from coatlib.factory import create_model
from coatlib.train.checks import check_hyperparameters, check_writable
from coatlib.train.distributed import init_distributed, select_device
from coatlib.train.loop import fit
from coatlib.train.records import versions
from coatlib.train.resume import saved_epoch


def main(argv: list[str] | None = None) -> dict[str, list]:
    p = argparse.ArgumentParser(
        prog="python -m coatlib.train",
        description="Train a coatlib model on a coatlib data set; works under torchrun --nproc_per_node=N.",
    )
    p.add_argument("--model", default="coatnet_pico", help="registered name, see coatlib.list_models()")
    p.add_argument("--data", default="digits", help=f"one of {', '.join(coatlib.data.DATASETS)}")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="folder for history.json and checkpoint.pt (with --fsdp: the folder checkpoint/)",
    )
    p.add_argument("--image-size", type=int, default=None, help="default: the data set's")
    p.add_argument("--channels", type=int, default=3, choices=(1, 3))
    p.add_argument("--data-size", type=int, default=None, help="training images of a generated data set")
    p.add_argument("--test-size", type=int, default=None, help="test images of a generated data set")
    p.add_argument("--download", action="store_true", help="allow torchvision to download cifar10 / imagenette")
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument(
        "--table-lr-scale",
        type=float,
        default=1.0,
        help="factor on the relative-bias tables' learning rate (1: the same as every other parameter)",
    )
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm; 0 turns clipping off")
    p.add_argument("--drop-path", type=float, default=None, help="stochastic depth rate (CoAtNet models)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes")
    p.add_argument(
        "--fsdp",
        action="store_true",
        help="shard the model over the processes (FSDP2; under torchrun); --amp bf16 computes in bf16",
    )
    p.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute each block in the backward pass instead of storing its activations",
    )
    p.add_argument("--compile", action="store_true", help="train through torch.compile")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT's checkpoint")
    p.add_argument(
        "--force",
        action="store_true",
        help="start a new run in an OUT that holds an earlier one (its history.json and checkpoint are deleted)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar and epoch lines, only the final line")
    args = p.parse_args(argv)
    _check_arguments(args)

    rank, world, _ = init_distributed()
    if args.fsdp and world == 1:  # before the data are built: say at once how to start it
        raise ValueError(
            "--fsdp shards the model over several processes: start it with `torchrun --standalone "
            "--nproc_per_node=N -m coatlib.train ... --fsdp` (N >= 2), or leave out --fsdp"
        )
    select_device(args.device, 0)  # a device this machine lacks fails before the data are built
    options = {"download": True} if args.download else {}
    train_data, test_data = coatlib.data.load_splits(
        args.data, args.image_size, args.channels, args.data_size, args.test_size, **options
    )
    torch.manual_seed(args.seed)
    overrides = {"drop_path_rate": args.drop_path} if args.drop_path is not None else {}
    model = create_model(
        args.model,
        num_classes=len(train_data.classes),
        image_size=train_data.image_size,
        in_chans=args.channels,
        **overrides,
    )
    if args.force and rank == 0:
        _delete_earlier_run(args.out)
    if world > 1:
        dist.barrier()
    checkpoint = args.out / ("checkpoint" if args.fsdp else "checkpoint.pt")
    resumed_from = saved_epoch(checkpoint) if args.resume else None
    history = fit(
        model,
        train_data,
        test_data,
        args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        clip_grad=args.clip_grad or None,
        amp=None if args.amp == "none" else args.amp,
        device=args.device,
        channels_last=args.channels_last,
        sync_bn=args.sync_bn,
        fsdp=args.fsdp,
        activation_checkpointing=args.activation_checkpointing,
        compile=args.compile,
        seed=args.seed,
        checkpoint=checkpoint,
        resume=args.resume,
        progress=not args.quiet,
        num_workers=args.num_workers,
        table_lr_scale=args.table_lr_scale,
        run_info={k: getattr(args, k) for k in RUN_ARGUMENTS},
    )
    if rank == 0:
        record = {
            "command": "python -m coatlib.train " + shlex.join(sys.argv[1:] if argv is None else argv),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "world_size": world,
            "params": sum(p.numel() for p in model.parameters()),
            "versions": versions(),
            "history": history,
        }
        if resumed_from is not None:  # the epochs before it ran under an earlier command, with the same settings
            record["resumed_from_epoch"] = resumed_from
        (args.out / "history.json").write_text(json.dumps(record, indent=1))
        print(f"final test accuracy: {history['test_acc'][-1]:.4f}", flush=True)
    if world > 1:
        dist.destroy_process_group()
    return history


# The command-line arguments that define a run beyond what ``fit`` sees: a checkpoint records them, a resume
# must repeat them.
RUN_ARGUMENTS = ("model", "data", "image_size", "channels", "data_size", "test_size", "drop_path")
# What a run writes into --out: a new run refuses an --out that holds any of them (unless --force).
RUN_FILES = ("history.json", "checkpoint.pt", "checkpoint.pt.tmp", "checkpoint", "checkpoint.tmp", "checkpoint.old")


def _check_arguments(args: argparse.Namespace) -> None:
    """Every argument's range (as ``fit`` checks them, plus the command line's own), and that ``--out`` can
    be written and holds no earlier run unless ``--resume`` or ``--force``: before any data are built."""
    check_hyperparameters(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        num_workers=args.num_workers,
    )
    if not math.isfinite(args.clip_grad) or args.clip_grad < 0:
        raise ValueError(f"--clip-grad must be a finite number >= 0 (0: no clipping), got {args.clip_grad}")
    if args.drop_path is not None and not 0 <= args.drop_path < 1:
        raise ValueError(f"--drop-path must be in [0, 1) (the deepest block's drop probability), got {args.drop_path}")
    for flag in ("image_size", "data_size", "test_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive int, got {value}")
    check_writable(args.out, "--out")
    if args.resume and args.force:
        raise ValueError("--resume continues the run in --out and --force replaces it: pass one of them")
    earlier = [name for name in RUN_FILES if (args.out / name).exists()]
    if earlier and not (args.resume or args.force):
        raise ValueError(
            f"{args.out} holds an earlier run ({', '.join(earlier)}): pass --resume to continue it, --force to "
            f"replace it, or choose another --out"
        )


def _delete_earlier_run(out: Path) -> None:
    """``--force``: remove what an earlier run wrote into ``out`` (``RUN_FILES``), nothing else."""
    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def cli(argv: list[str] | None = None) -> None:
    """``python -m coatlib.train``: ``main``, with bad input and Ctrl-C ending in one line, not a traceback."""
    try:
        main(argv)
    except ValueError as error:  # bad input: the message says what to change, a traceback would hide it
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        print(
            "interrupted; resume with --resume (the same command plus --resume continues from the checkpoint "
            "of the last finished epoch)",
            file=sys.stderr,
        )
        sys.exit(130)
