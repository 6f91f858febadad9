"""Data sets for the book's experiments, offline unless a download is asked for.

``load(name, split, image_size, ...)`` is the one entry point; every data set
is a ``torch.utils.data.Dataset`` of ``(image, label)`` pairs with a fixed
train/test split, a ``classes`` list and, for the training split, augmentation.

==================  ====================================================  ====================  =======  ====
name                what                                                  train / test          classes  size
==================  ====================================================  ====================  =======  ====
``digits``          handwritten digits, scikit-learn, 8x8 grey            1,437 / 360           10       32
``textures``        crops of texture photos, scikit-image, grey           2,400 / 600           6        32
``same_different``  two far-apart glyphs: same? (generated, ``glyphs=``)  any (10,000 / 2,000)  2        32
``digit_pairs``     two digits in clutter, their order (generated)        any (10,000 / 2,000)  90       128
``cifar10``         CIFAR-10 through torchvision, download=True           50,000 / 10,000       10       32
``imagenette``      Imagenette 160 px through torchvision, download=True  9,469 / 3,925         10       128
==================  ====================================================  ====================  =======  ====

``size`` is the default ``image_size`` in pixels. The first four ship
inside scikit-learn and scikit-image or are generated, so they need no
network. Grey images come with ``channels=3`` (the channel repeated, which
every model's default ``in_chans=3`` takes) or ``channels=1`` (then build the
model with ``in_chans=1``).

>>> import coatlib.data
>>> train = coatlib.data.load("digits", "train", image_size=32)
>>> len(train), train[0][0].shape, train.classes[:3]
(1437, torch.Size([3, 32, 32]), ['0', '1', '2'])
"""

from __future__ import annotations

import difflib

from torch.utils.data import Dataset

from coatlib.data import digits, textures, torchvision_sets
from coatlib.data.base import Augment, ImageDataset, TensorImages
from coatlib.data.digit_pairs import DigitPairs
from coatlib.data.same_different import SameDifferent

# name -> (builder, one-line description)
DATASETS = {
    "digits": (digits.digits, "scikit-learn handwritten digits, 1,437 train / 360 test, 10 classes"),
    "textures": (textures.textures, "crops of scikit-image texture photos, 2,400 train / 600 test, 6 classes"),
    "same_different": (SameDifferent, "generated: two far-apart glyphs, same or different; any size, 2 classes"),
    "digit_pairs": (
        DigitPairs,
        "generated: two digits among clutter, labelled by the ordered pair (left, right); any size, 90 classes",
    ),
    "cifar10": (torchvision_sets.cifar10, "CIFAR-10 through torchvision (download=True), 50,000 / 10,000, 10 classes"),
    "imagenette": (
        torchvision_sets.imagenette,
        "Imagenette 160 px through torchvision (download=True), 9,469 / 3,925, 10 classes",
    ),
}
OFFLINE = ("digits", "textures", "same_different", "digit_pairs")
GENERATED = ("same_different", "digit_pairs")  # take size= and seed=
SPLITS = ("train", "test")

__all__ = [
    "load",
    "load_splits",
    "available",
    "DATASETS",
    "OFFLINE",
    "GENERATED",
    "Augment",
    "ImageDataset",
    "TensorImages",
    "SameDifferent",
    "DigitPairs",
]


def available() -> dict[str, str]:
    """Name -> description of every data set ``load`` knows."""
    return {name: description for name, (_, description) in DATASETS.items()}


def load(name: str, split: str = "train", image_size: int | None = None, channels: int = 3, **options) -> Dataset:
    """The ``split`` ("train" or "test") of data set ``name`` at ``image_size`` (None: its default).

    ``options`` go to the data set: ``size=``, ``seed=`` and ``glyphs=`` for ``same_different``,
    ``size=``, ``seed=``, ``label=`` and ``clutter=`` for ``digit_pairs``,
    ``crop=`` for ``textures``, ``download=`` and ``root=`` for ``cifar10`` and
    ``imagenette``.
    """
    if name not in DATASETS:
        close = difflib.get_close_matches(str(name), DATASETS, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown data set {name!r}.{hint} Available: {', '.join(DATASETS)}.")
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    builder = DATASETS[name][0]
    if image_size is not None:
        options["image_size"] = image_size
    try:
        return builder(split, channels=channels, **options)
    except TypeError as e:
        if "unexpected keyword" not in str(e):
            raise
        raise TypeError(f"{name}: {e}. See help(coatlib.data.load) for the options of each data set.") from e


def load_splits(
    name: str,
    image_size: int | None = None,
    channels: int = 3,
    train_size: int | None = None,
    test_size: int | None = None,
    **options,
) -> tuple[Dataset, Dataset]:
    """``(train, test)`` of data set ``name``; ``train_size``/``test_size`` size a generated data set."""
    sizes = {"train": train_size, "test": test_size}
    return tuple(
        load(name, split, image_size, channels, **options, **({} if sizes[split] is None else {"size": sizes[split]}))
        for split in SPLITS
    )
