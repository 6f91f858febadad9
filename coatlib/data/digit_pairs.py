"""``digit_pairs``: two handwritten digits among clutter, labelled by which is on the left.

A task that needs both what convolution gives (recognising a digit from its
strokes) and what attention gives (relating two places far apart). A black
``image_size`` canvas shows two digits of scikit-learn's set, each scaled to
a quarter of the canvas side, at random places, among ``clutter`` fragments
(quarter-size crops of other digits, each a stroke or two). The two digits are
of different classes and their boxes are at least an eighth of the canvas
apart horizontally, so "left" is never ambiguous.

``label="pair"`` (the default) is the ordered pair ``10 * left + right``: 90
classes (class ``"37"`` is a 3 left of a 7, ``"73"`` a 7 left of a 3; the 10 classes
of twice the same digit never occur, so chance is 1/90). Knowing *which* two digits are
present gives at most half of it: the order can only be read off from *where*
they are. A bag of local features (small patches, pooled over the whole image)
cannot see where, and is provably blind to the order: swapping the two digits'
places leaves the bag unchanged. ``label="digit"`` shows one digit among the
same clutter, labelled by its class (10 classes): a purely local task, where
convolution's bias should win.

Source digits: the training split draws its digits and its clutter only from
the 1,437 training digits of ``coatlib.data.digits``, the test split only from
its 360 test digits (the same fixed, stratified split), so every test image
shows handwriting that no training image contains.

Image ``i`` of a split is drawn from its own generator seeded with
``(seed, split, i)``, as in ``same_different``: any ``size`` can be asked for,
the images take no memory, and a data set of ``size`` images is the start of
every larger one (the nested training sets of the layout study).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from coatlib.data.base import ImageDataset, check_data_image_size, resize
from coatlib.data.digits import source_splits

LABELS = ("pair", "digit")
SIZES = {"train": 10_000, "test": 2_000}
# Pixel mean and standard deviation per label, measured on 2,000 training images at 128 px
# (clutter 8): two digits light about 5 % of the canvas, one digit 3 %.
MEAN_STD = {"pair": ([0.049], [0.172]), "digit": ([0.031], [0.138])}


class DigitPairs(ImageDataset):
    """``size`` generated images of ``split``; see the module docstring.

    ``clutter``: fragments per image (default 8). ``image_size`` must be a
    multiple of 16 (digits are a quarter of it, fragments a sixteenth), at least 64.
    """

    def __init__(
        self,
        split: str = "train",
        image_size: int = 128,
        channels: int = 3,
        size: int | None = None,
        seed: int = 0,
        label: str = "pair",
        clutter: int = 8,
    ):
        check_data_image_size("digit_pairs", image_size, 64)
        if image_size % 16:
            raise ValueError(f"digit_pairs: image_size must be a multiple of 16, got {image_size}")
        if label not in LABELS:
            raise ValueError(f"digit_pairs: label must be one of {LABELS}, got {label!r}")
        if not isinstance(clutter, int) or clutter < 0:
            raise ValueError(f"digit_pairs: clutter must be an int >= 0, got {clutter!r}")
        classes = [f"{a}{b}" for a in range(10) for b in range(10)] if label == "pair" else list("0123456789")
        super().__init__(classes, *MEAN_STD[label], channels, image_size)
        self.size = SIZES[split] if size is None else size
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"digit_pairs: size must be a positive int, got {size!r}")
        self.split, self.label, self.clutter = split, label, clutter
        self.stream = (seed, ("train", "test").index(split))
        self.sources, self.source_labels = _sources(split, image_size // 4)
        self.by_class = [np.flatnonzero(self.source_labels == c) for c in range(10)]

    def __len__(self) -> int:
        return self.size

    def scene(self, i: int) -> dict:
        """What image ``i`` shows: ``digits`` (source indices, left first), their ``corners`` (y, x),
        the ``fragments`` (source index, crop corner, canvas corner) and the ``label``."""
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for {self.size} images")
        rng = np.random.default_rng([*self.stream, i])
        s, g = self.image_size, self.image_size // 4
        f = g // 4
        fragments = [
            (int(rng.integers(len(self.sources))), rng.integers(0, g - f + 1, 2), rng.integers(0, s - f + 1, 2))
            for _ in range(self.clutter)
        ]
        if self.label == "digit":
            c = int(rng.integers(10))
            return {
                "digits": [int(rng.choice(self.by_class[c]))],
                "corners": [rng.integers(0, s - g + 1, 2)],
                "fragments": fragments,
                "label": c,
            }
        left = int(rng.integers(10))
        right = (left + 1 + int(rng.integers(9))) % 10  # any other class, uniformly
        while True:  # two x positions whose boxes are at least s / 8 apart
            xs = np.sort(rng.integers(0, s - g + 1, 2))
            if xs[1] - xs[0] >= g + s // 8:
                break
        ys = rng.integers(0, s - g + 1, 2)
        return {
            "digits": [int(rng.choice(self.by_class[left])), int(rng.choice(self.by_class[right]))],
            "corners": [np.array([ys[0], xs[0]]), np.array([ys[1], xs[1]])],
            "fragments": fragments,
            "label": 10 * left + right,
        }

    def raw(self, i: int) -> tuple[torch.Tensor, int]:
        scene = self.scene(i)
        s, g = self.image_size, self.image_size // 4
        f = g // 4
        canvas = np.zeros((s, s), np.float32)
        for source, (cy, cx), (y, x) in scene["fragments"]:
            patch = self.sources[source, cy : cy + f, cx : cx + f]
            np.maximum(canvas[y : y + f, x : x + f], patch, out=canvas[y : y + f, x : x + f])
        for source, (y, x) in zip(scene["digits"], scene["corners"]):
            np.maximum(canvas[y : y + g, x : x + g], self.sources[source], out=canvas[y : y + g, x : x + g])
        return torch.from_numpy(canvas)[None], scene["label"]


@lru_cache(maxsize=4)
def _sources(split: str, g: int) -> tuple[np.ndarray, np.ndarray]:
    """The split's source digits scaled to ``g x g``, floats in [0, 1], and their labels."""
    images, labels = source_splits()[split]
    return (resize(images, g)[:, 0].float() / 255).numpy(), labels.numpy()
