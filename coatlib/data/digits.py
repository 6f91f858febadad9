"""``digits``: scikit-learn's bundled handwritten digits, the small-data regime.

1,797 grey 8x8 images of the digits 0-9 (UCI "Optical Recognition of
Handwritten Digits", shipped inside scikit-learn, so no download). The split is
fixed and stratified: 1,437 training and 360 test images
(``train_test_split(test_size=360, stratify=labels, random_state=0)``).
Images are resized bilinearly to ``image_size`` (default 32, the smallest size
a CoAtNet takes); training images are shifted by up to ``image_size // 16``
pixels at random (digits are not flipped: a mirrored 2 is not a 2).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from coatlib.data.base import Augment, TensorImages, check_data_image_size, mean_std, resize

TEST_SIZE = 360


@lru_cache(maxsize=1)
def source_splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The fixed split of the 1,797 source digits: ``split -> (uint8 images (N, 1, 8, 8), labels (N,))``.

    Every data set built from these digits (``digits``, ``digit_pairs``) uses this split, so a
    test image never shows a digit drawn by a training image's source.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.from_numpy(bunch.images * (255 / 16)).round().to(torch.uint8)[:, None]  # values 0..16
    labels = torch.from_numpy(bunch.target).long()
    train, test = train_test_split(range(len(labels)), test_size=TEST_SIZE, stratify=labels, random_state=0)
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


@lru_cache(maxsize=4)
def _splits(image_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {split: (resize(images, image_size), labels) for split, (images, labels) in source_splits().items()}


def digits(split: str = "train", image_size: int = 32, channels: int = 3) -> TensorImages:
    """The ``split`` ("train": 1,437 images, "test": 360) of the digits, ``image_size`` square."""
    check_data_image_size("digits", image_size, 8)
    splits = _splits(image_size)
    mean, std = mean_std(splits["train"][0])
    augment = Augment(shift=image_size // 16) if split == "train" else None
    return TensorImages(*splits[split], [str(d) for d in range(10)], mean, std, channels, augment)
