"""Checks before a run: every input of ``fit`` (and of the command line) is checked before anything is
built or written, each refusal a ``ValueError`` that says what to change.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset

from coatlib.model_parts import TABLE_NAME, describe_model, has_trainable_tables


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Every hyperparameter of ``fit``: the test it must pass and the allowed values, as the error says them.
HYPERPARAMETERS: dict[str, tuple[Callable[[object], bool], str]] = {
    "epochs": (lambda v: _is_int(v) and v >= 1, "a positive int"),
    "batch_size": (lambda v: _is_int(v) and v >= 1, "a positive int (images per process)"),
    "lr": (lambda v: _is_number(v) and v > 0, "a finite number > 0 (the peak learning rate, e.g. 3e-3)"),
    "weight_decay": (lambda v: _is_number(v) and v >= 0, "a finite number >= 0 (0: no weight decay)"),
    "warmup_epochs": (lambda v: _is_number(v) and v >= 0, "a finite number of epochs >= 0 (0: no warm-up)"),
    "label_smoothing": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1) (0: no smoothing)"),
    "clip_grad": (
        lambda v: v is None or (_is_number(v) and v > 0),
        "None (no clipping) or a finite number > 0 (the largest gradient norm; the command line's 0 is None)",
    ),
    "num_workers": (lambda v: _is_int(v) and v >= 0, "an int >= 0 (0: load the data in the main process)"),
    "seed": (_is_int, "an int"),
}


def check_hyperparameters(**values) -> None:
    """Raise a ``ValueError`` naming the first value outside its allowed range (``HYPERPARAMETERS``)."""
    for name, value in values.items():
        test, allowed = HYPERPARAMETERS[name]
        if not test(value):
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{name} ({flag}) must be {allowed}, got {value!r}")


def check_writable(folder: Path, what: str) -> None:
    """Raise unless ``folder`` is (or can be made as) a folder this process may write into; creates nothing."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        problem = "is a file, not a folder" if not existing.is_dir() else "is not writable"
        raise ValueError(
            f"{what} {folder} cannot be written: {existing} {problem}. Choose another place (--out) "
            f"or fix its permissions"
        )


def _wrapped(data: Dataset):
    """``data`` and the data sets it wraps (``Subset`` and any wrapper keeping its data as ``.dataset``)."""
    while data is not None:
        yield data
        data = getattr(data, "dataset", None)


def _classes(data: Dataset) -> list | None:
    """The data set's class names, looking through wrappers such as ``Subset``; None when it has none."""
    classes = next((d.classes for d in _wrapped(data) if getattr(d, "classes", None) is not None), None)
    return list(classes) if classes is not None else None


def describe_data(data: Dataset | None) -> dict | None:
    """What a checkpoint records of a data set, to refuse a resume on other data: its size, image shape,
    classes and, for a ``Subset``, a digest of its indices (another subset of the same size differs)."""
    if data is None:
        return None
    description = {"images": len(data), "image_shape": list(data[0][0].shape), "classes": _classes(data)}
    subset = next((d for d in _wrapped(data) if isinstance(d, Subset)), None)
    if subset is not None:
        description["subset"] = hashlib.sha256(str(list(subset.indices)).encode()).hexdigest()[:16]
    return description


def check_test_data(test_data: Dataset, train_data: Dataset) -> None:
    """The test images must have the training images' shape and the test data the training data's classes."""
    train_shape, test_shape = tuple(train_data[0][0].shape), tuple(test_data[0][0].shape)
    if test_shape != train_shape:
        raise ValueError(
            f"the test images are {'x'.join(map(str, test_shape))} (channels x height x width) but the training "
            f"images {'x'.join(map(str, train_shape))}: load both splits with the same image_size and channels, "
            f"e.g. coatlib.data.load_splits(name, image_size, channels)"
        )
    train_classes, test_classes = _classes(train_data), _classes(test_data)
    if train_classes is not None and test_classes is not None and train_classes != test_classes:
        raise ValueError(
            f"the test data's classes {test_classes} are not the training data's {train_classes}: the test set "
            f"is of another task. Test on the test split of the data set the model learns"
        )


def steps_per_epoch(data: Dataset, batch_size: int, world: int) -> int:
    per_process = math.ceil(len(data) / world)
    if per_process < batch_size:
        raise ValueError(
            f"the training data has {len(data)} images, fewer than one batch of {batch_size}"
            + (f" for each of {world} processes" if world > 1 else "")
            + f": use batch_size <= {per_process}, or more data"
        )
    return per_process // batch_size


def check_model_takes(model: nn.Module, data: Dataset, device: torch.device) -> None:
    """Run the model once on one training image: clear errors before any training or writing."""
    x, y = data[0]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[None].to(device))
    except (RuntimeError, ValueError) as e:
        raise ValueError(
            f"the model cannot take the training images (one is {tuple(x.shape)}, channels x height x width): {e}"
        ) from e
    finally:
        model.train(was_training)
    classes = getattr(data, "classes", None)
    if out.ndim != 2 or (classes is not None and out.shape[1] != len(classes)):
        want = f"{len(classes)} (one per class)" if classes is not None else "(batch, classes)"
        raise ValueError(
            f"the model outputs shape {tuple(out.shape)} for one image; the data needs {want} logits: "
            f"build it with num_classes={len(classes) if classes is not None else '...'}"
        )


def check_table_lr_scale(scale, model: nn.Module) -> None:
    """``table_lr_scale`` must be a positive finite number, and other than 1 only for a model with tables."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(
            f"table_lr_scale must be a positive finite number (the factor on the bias tables' learning "
            f"rate; 1 leaves it alone), got {scale!r}"
        )
    if scale != 1 and not has_trainable_tables(model):
        raise ValueError(
            f"table_lr_scale={scale} but {describe_model(model)} has no trainable relative-bias tables "
            f"(parameters named *.{TABLE_NAME}): leave table_lr_scale at 1 for this model"
        )
