"""``textures``: crops of real texture photos bundled with scikit-image, a task local filters solve.

Six classes, each cut from one grey photo in ``skimage.data`` (no download):
brick, grass, gravel (Brodatz-like textures), stars (``hubble_deep_field``),
tissue (``immunohistochemistry``) and text (``page``, a scanned book page).
A crop is ``crop x crop`` source pixels (default 64), resized to
``image_size`` (default 32). Training crops come from the left three quarters
of each photo and test crops from the right quarter, so no test pixel is ever
seen in training. Crop positions are drawn once from a fixed seed: 400
training and 100 test crops per class, 2,400 and 600 in all. Training crops
are augmented with the eight flips/rotations of the square and brightness and
contrast jitter of up to 20 %.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from coatlib.data.base import Augment, TensorImages, check_data_image_size, mean_std, resize

# class name -> skimage.data function
SOURCES = {
    "brick": "brick",
    "grass": "grass",
    "gravel": "gravel",
    "stars": "hubble_deep_field",
    "tissue": "immunohistochemistry",
    "text": "page",
}
PER_CLASS = {"train": 400, "test": 100}
TRAIN_FRACTION = 0.75  # of each photo's width


def _grey(name: str) -> np.ndarray:
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.util import img_as_ubyte

    image = getattr(skimage.data, name)()
    return img_as_ubyte(rgb2gray(image)) if image.ndim == 3 else image


@lru_cache(maxsize=4)
def _splits(image_size: int, crop: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(0)
    out = {}
    for split, n in PER_CLASS.items():
        crops, labels = [], []
        for label, source in enumerate(SOURCES.values()):
            image = _grey(source)
            height, width = image.shape
            cut = int(width * TRAIN_FRACTION)
            lo, hi = (0, cut - crop) if split == "train" else (cut, width - crop)
            if hi < lo or height < crop:
                raise ValueError(f"textures: crop={crop} is too large for the {width}x{height} photo {source!r}")
            ys = rng.integers(0, height - crop + 1, n)
            xs = rng.integers(lo, hi + 1, n)
            crops += [image[y : y + crop, x : x + crop] for y, x in zip(ys, xs)]
            labels += [label] * n
        images = torch.from_numpy(np.stack(crops))[:, None]
        out[split] = (resize(images, image_size), torch.tensor(labels))
    return out


def textures(split: str = "train", image_size: int = 32, channels: int = 3, crop: int = 64) -> TensorImages:
    """The ``split`` ("train": 2,400 crops, "test": 600) of the texture crops, ``image_size`` square."""
    check_data_image_size("textures", image_size, 8)
    splits = _splits(image_size, crop)
    mean, std = mean_std(splits["train"][0])
    augment = Augment(rot90=True, jitter=0.2) if split == "train" else None
    return TensorImages(*splits[split], list(SOURCES), mean, std, channels, augment)
