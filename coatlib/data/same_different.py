"""``same_different``: two glyphs far apart, the same or not. Generated, any size.

The label depends on a relation between distant parts of the image, the
"same-different" problem of the Synthetic Visual Reasoning Test (Fleuret et
al. 2011, problem 1): a black canvas shows two glyphs, random 4x4 bit
patterns drawn with cells of ``image_size // 16`` pixels, whose centres are at
least half the image apart; label 1 when the two glyphs are identical, 0 when
they differ. Every glyph has a lit cell on each of its four borders, so two
different glyphs never look alike by being shifted copies of each other. A
fresh pair of glyphs is drawn for every image, so nothing can be memorised:
the network must compare the two places, which needs a receptive field
spanning the image (attention has one from the start, convolutions only
after several stages).

``glyphs=n`` draws the glyphs from a fixed alphabet of ``n`` patterns instead
(drawn once from ``seed``, the same in both splits): the relation is the same,
but a network has only ``n`` shapes to tell apart, so it learns the task from
far fewer images. The layout study of chapter 4 uses ``glyphs=8``: in our
pilot runs with fresh glyphs, ``coatnet_pico`` stayed at chance within the
study's CPU budget of a few hundred steps.

Image ``i`` of a split is drawn from its own generator seeded with
``(seed, split, i)``: the data set takes no memory, any ``size`` can be asked
for (default 10,000 training and 2,000 test images), and the training and
test images come from separate random streams.
"""

from __future__ import annotations

import numpy as np
import torch

from coatlib.data.base import ImageDataset, check_data_image_size

GLYPH_CELLS = 4
SIZES = {"train": 10_000, "test": 2_000}
# Pixel mean and standard deviation, measured on 3,000 training images: two glyphs of 4x4 cells,
# a little over half of them lit, on a canvas of 16x16 cells light about 6.6 % of the pixels.
MEAN, STD = [0.066], [0.248]


class SameDifferent(ImageDataset):
    """``size`` generated images of the ``split``; see the module docstring."""

    def __init__(
        self,
        split: str = "train",
        image_size: int = 32,
        channels: int = 3,
        size: int | None = None,
        seed: int = 0,
        glyphs: int | None = None,
    ):
        check_data_image_size("same_different", image_size, 16)
        super().__init__(["different", "same"], MEAN, STD, channels, image_size)
        self.size = SIZES[split] if size is None else size
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"same_different: size must be a positive int, got {size!r}")
        self.stream = (seed, ("train", "test").index(split))
        if glyphs is not None and (not isinstance(glyphs, int) or glyphs < 2):
            raise ValueError(f"same_different: glyphs must be an int >= 2 (or None for fresh glyphs), got {glyphs!r}")
        self.alphabet = None if glyphs is None else _alphabet(np.random.default_rng([seed, 2]), glyphs)

    def __len__(self) -> int:
        return self.size

    def scene(self, i: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], bool]:
        """What image ``i`` shows: the glyphs' top-left corners ``(2, 2)``, the two glyphs, and whether they match."""
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for {self.size} images")
        rng = np.random.default_rng([*self.stream, i])
        if self.alphabet is None:
            first = _glyph(rng)
            same = bool(rng.random() < 0.5)
            second = first if same else _glyph(rng, unlike=first)
        else:
            same = bool(rng.random() < 0.5)
            a, b = rng.choice(len(self.alphabet), 2, replace=False)
            first, second = self.alphabet[a], self.alphabet[a if same else b]
        return _far_apart(rng, self.image_size, GLYPH_CELLS * self.cell), (first, second), same

    @property
    def cell(self) -> int:
        """Side of a glyph cell in pixels."""
        return self.image_size // 16

    def raw(self, i: int) -> tuple[torch.Tensor, int]:
        corners, glyphs, same = self.scene(i)
        canvas = np.zeros((self.image_size, self.image_size), np.float32)
        g = GLYPH_CELLS * self.cell
        for (y, x), glyph in zip(corners, glyphs):
            canvas[y : y + g, x : x + g] = np.kron(glyph, np.ones((self.cell, self.cell), np.float32))
        return torch.from_numpy(canvas)[None], int(same)


def _glyph(rng: np.random.Generator, unlike: np.ndarray | None = None) -> np.ndarray:
    """A random 4x4 bit pattern with a lit cell on each border, different from ``unlike``."""
    while True:
        glyph = (rng.random((GLYPH_CELLS, GLYPH_CELLS)) < 0.5).astype(np.float32)
        spans = glyph[0].any() and glyph[-1].any() and glyph[:, 0].any() and glyph[:, -1].any()
        if spans and (unlike is None or not np.array_equal(glyph, unlike)):
            return glyph


def _alphabet(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """``n`` different glyphs, drawn once: the fixed alphabet of ``glyphs=n``."""
    alphabet: list[np.ndarray] = []
    while len(alphabet) < n:
        glyph = _glyph(rng)
        if not any(np.array_equal(glyph, g) for g in alphabet):
            alphabet.append(glyph)
    return alphabet


def _far_apart(rng: np.random.Generator, size: int, g: int) -> np.ndarray:
    """Top-left corners of two ``g x g`` glyphs whose centres are at least ``size / 2`` apart."""
    while True:
        corners = rng.integers(0, size - g + 1, (2, 2))
        if np.linalg.norm(corners[0] - corners[1]) >= size / 2:
            return corners
