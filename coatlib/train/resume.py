"""The checkpoints of a training run: written at the end of every epoch, read to resume it.

A checkpoint holds the model, optimizer, scheduler, epoch, history, the run's configuration and
every process's random-number state; it is written to a temporary file and renamed (a crash never
leaves half a checkpoint) and read with ``weights_only=True``. A run resumed from the checkpoint of an
interrupted run (same settings, same number of processes) ends with the same weights as the
uninterrupted run. Under ``fsdp=True`` a checkpoint is a folder written by
``torch.distributed.checkpoint`` (each process writes its shards); it resumes under the same number of
processes and loads into a whole model in one process (``load_training_checkpoint``).
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from coatlib.model_parts import describe_model


def save_checkpoint(state: dict, path: str | Path) -> None:
    """``torch.save`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def save_sharded_checkpoint(state: dict, path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write a checkpoint folder with ``torch.distributed.checkpoint``: every process writes its own
    shards of the model and the optimizer; process 0 adds the rest of ``state`` as ``train_state.pt``.

    Called by every process. The folder is written as ``PATH.tmp`` (complete once ``train_state.pt``
    is in it), the previous one renamed to ``PATH.old``, ``PATH.tmp`` to ``PATH``, and ``PATH.old``
    removed: killed at any point, a complete copy is left that ``load_training_checkpoint`` finds."""
    path = Path(path)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    _, tmp, old = _sharded_copies(path)
    if rank == 0 and tmp.exists():
        shutil.rmtree(tmp)  # left by a crash while writing; `path` is complete
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=tmp, no_dist=world == 1)
    if rank == 0:
        save_checkpoint({**state, "model_description": describe_model(model)}, tmp / SHARDED_STATE)
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)  # left by a crash after the last rename
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    if world > 1:
        dist.barrier()


SHARDED_STATE = "train_state.pt"  # in a sharded checkpoint's folder: epoch, history, schedule, random states


def _sharded_copies(path: Path) -> tuple[Path, Path, Path]:
    """``(PATH, PATH.tmp, PATH.old)``: the places where a sharded save keeps its folders."""
    return path, path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")


def _complete_checkpoint(path: Path) -> Path | None:
    """The checkpoint to read for ``path``: the file, or the first complete folder of ``PATH``, ``PATH.tmp``
    (newer: killed between its two renames) and ``PATH.old``; None when there is none."""
    if path.is_file():
        return path
    return next((p for p in _sharded_copies(path) if (p / SHARDED_STATE).is_file()), None)


def load_training_checkpoint(
    path: str | Path | None,
    model: nn.Module,
    schedule: dict | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict:
    """Read a checkpoint, check it fits ``model`` (and the ``schedule`` of this run, if given: its whole
    configuration, as ``fit`` records it), load its
    weights into ``model`` (and its state into ``optimizer``, if given); return the rest of the state.

    ``path`` is a file written by ``fit`` (read with ``weights_only=True``) or the folder of a sharded
    run (``fsdp=True``), which loads into a sharded model under torchrun or into a whole model in one
    process: ``load_training_checkpoint("runs/fsdp/checkpoint", create_model(...))`` then evaluates it alone.
    When a sharded save was killed part-way and the folder is missing, its complete ``.tmp`` or
    ``.old`` copy is read.
    """
    found = _complete_checkpoint(Path(path)) if path is not None else None
    if found is None:
        raise ValueError(f"cannot resume: no checkpoint file at {path}; pass checkpoint=PATH of an earlier run")
    path = found
    sharded = path.is_dir()
    state = torch.load(path / SHARDED_STATE if sharded else path, map_location="cpu", weights_only=True)
    if sharded:
        saved = {
            k.removeprefix("model."): v.size
            for k, v in dcp.FileSystemReader(path).read_metadata().state_dict_metadata.items()
            if k.startswith("model.")
        }
    else:
        saved = {k: v.shape for k, v in state["model"].items()}
    current = {k: v.shape for k, v in model.state_dict().items()}
    _check_same_model(saved, current, path, state.get("model_description"), describe_model(model))
    if schedule is not None:
        _check_same_schedule(state["schedule"], schedule, path)
    if sharded:
        # get_state_dict gives tensors shaped like this model's (shards under FSDP, whole tensors
        # otherwise); dcp.load fills them from whichever shards hold their parts.
        model_state, optimizer_state = get_state_dict(model, optimizer if optimizer is not None else [])
        target = {"model": model_state} | ({"optimizer": optimizer_state} if optimizer is not None else {})
        with warnings.catch_warnings():  # in one process, loading alone is the intent: no need to say so
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            dcp.load(target, checkpoint_id=path, no_dist=not dist.is_initialized())
        set_state_dict(
            model,
            optimizer if optimizer is not None else [],
            model_state_dict=target["model"],
            optim_state_dict=target.get("optimizer", {}),
        )
    else:
        model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
    return state


def _check_same_schedule(saved: dict, current: dict, path: Path) -> None:
    """Raise unless the run configuration a checkpoint recorded is this run's, naming every difference (a
    setting an older checkpoint did not record shows as None there)."""
    differ = [
        f"{k}: {saved.get(k)!r} in the checkpoint, {current.get(k)!r} now"
        for k in dict.fromkeys([*saved, *current])
        if saved.get(k) != current.get(k)
    ]
    if differ:
        raise ValueError(
            f"checkpoint {path} was written with other settings than this run's ({'; '.join(differ)}): resume "
            f"with the same settings (schedule, optimisation, seed, amp, model and data), or start a new run "
            f"in another place"
        )


def _check_same_model(
    saved: dict, current: dict, path, saved_model: str | None = None, current_model: str | None = None
) -> None:
    """Raise unless the tensor shapes ``saved`` (name: shape) are those of the model, ``current``."""
    missing = sorted(set(current) - set(saved))
    unexpected = sorted(set(saved) - set(current))
    differ = sorted(k for k in set(saved) & set(current) if tuple(saved[k]) != tuple(current[k]))
    if missing or unexpected or differ:
        examples = [f"missing {k}" for k in missing[:2]] + [f"unexpected {k}" for k in unexpected[:2]]
        examples += [f"{k}: {tuple(saved[k])} in the checkpoint, {tuple(current[k])} in the model" for k in differ[:2]]
        belongs = f" ({saved_model}; this one is {current_model})" if saved_model else ""
        raise ValueError(
            f"checkpoint {path} was written by a different model{belongs} ({len(missing)} tensors missing, "
            f"{len(unexpected)} unexpected, {len(differ)} of another shape; e.g. {'; '.join(examples)}). "
            f"Resume with the model (and image size) that wrote it, or start a new run in another place"
        )


def gather_rng_state(device: torch.device, world: int) -> list[dict]:
    """Every process's generator states (CPU, and CUDA when used), ordered by rank."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).cpu()
    if world == 1:
        return [state]
    states = [None] * world
    dist.all_gather_object(states, state)
    return states


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore this process's generator states, as ``gather_rng_state`` recorded them."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def check_fresh_checkpoint(path: Path) -> None:
    """Raise if a new run's checkpoint ``path`` would overwrite an earlier run's: the checkpoint itself, or
    the ``.tmp`` / ``.old`` folder a sharded save leaves when it is killed part-way."""
    if path.exists():
        raise ValueError(
            f"{path} already exists: pass resume=True (--resume) to continue that run, "
            f"or delete it or choose another path; it is not overwritten"
        )
    left = [p for p in _sharded_copies(path)[1:] if p.is_dir()]
    if left:
        resume = "pass resume=True (--resume) to continue that run from it, or " if _complete_checkpoint(path) else ""
        raise ValueError(
            f"{' and '.join(map(str, left))} {'is' if len(left) == 1 else 'are'} left by a sharded save that was "
            f"killed part-way: {resume}delete {'it' if len(left) == 1 else 'them'} to start a new run"
        )


def saved_epoch(path: Path) -> int | None:
    """The epoch a checkpoint was written after (None without one; ``fit`` then says so). Memory-mapped:
    the weights are not read."""
    found = _complete_checkpoint(path)
    if found is None:
        return None
    file = found / SHARDED_STATE if found.is_dir() else found
    return torch.load(file, map_location="cpu", weights_only=True, mmap=True)["epoch"]
