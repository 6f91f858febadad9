"""What every coatlib data set shares: images in memory, augmentation, normalisation.

A data set yields ``(image, label)`` pairs: ``image`` a float tensor
``(channels, H, W)`` normalised with the training split's mean and standard
deviation, ``label`` an int. Grey data sets store one channel and return it
repeated ``channels=3`` times by default, so that every model's default
``in_chans=3`` fits; ask for ``channels=1`` and build the model with
``in_chans=1`` to save the repetition.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


class ImageDataset(Dataset):
    """Base class: a subclass implements ``__len__`` and ``raw(i)``.

    ``raw(i)`` returns the ``i``-th image as floats in ``[0, 1]``, shape
    ``(c, H, W)`` with ``c`` the native channel count, and its label.
    ``__getitem__`` then applies the augmentation (training split only),
    normalises, and repeats a grey channel when ``channels=3``.
    """

    def __init__(self, classes, mean, std, channels: int, image_size: int, augment: "Augment | None" = None):
        native = len(mean)
        if channels not in (native, 3):
            allowed = "1 or 3 (grey images are repeated)" if native == 1 else "3 (colour images)"
            raise ValueError(f"channels={channels} is not available for this data set: use {allowed}")
        self.classes = list(classes)
        self.channels = channels
        self.image_size = image_size
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment = augment

    def raw(self, i: int) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.raw(i)
        if self.augment is not None:
            x = self.augment(x)
        x = (x - self.mean) / self.std
        return x.expand(self.channels, -1, -1), y

    def __repr__(self) -> str:
        s = self.image_size
        return (
            f"{type(self).__name__}({len(self)} images, {self.channels}x{s}x{s}, {len(self.classes)} classes, "
            f"augment={self.augment})"
        )


class TensorImages(ImageDataset):
    """Images held in memory as ``uint8`` ``(N, c, H, W)`` with ``int64`` labels ``(N,)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes, mean, std, channels=3, augment=None):
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError("images must be uint8 (N, c, H, W) with one label per image")
        super().__init__(classes, mean, std, channels, images.shape[-1], augment)
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def raw(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i].float() / 255, int(self.labels[i])


class Augment:
    """Random label-preserving changes of one training image (floats in ``[0, 1]``, ``(c, H, W)``).

    * ``shift``: translate by up to ``shift`` pixels each way, filling with 0
      (the "pad and random crop" of CIFAR training);
    * ``hflip``: mirror left-right with probability 1/2;
    * ``rot90``: rotate by a random multiple of 90 degrees and mirror with
      probability 1/2, the eight symmetries of the square (for textures);
    * ``jitter``: scale brightness and contrast by random factors in
      ``[1 - jitter, 1 + jitter]``.

    Random numbers come from torch's global generator, so ``torch.manual_seed``
    (which ``coatlib.train.fit`` calls) makes them reproducible.
    """

    def __init__(self, shift: int = 0, hflip: bool = False, rot90: bool = False, jitter: float = 0.0):
        self.shift, self.hflip, self.rot90, self.jitter = shift, hflip, rot90, jitter

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        r = torch.rand(6)
        if self.shift:
            s = self.shift
            dy, dx = (r[:2] * (2 * s + 1)).long().tolist()
            x = F.pad(x, (s, s, s, s))[:, dy : dy + x.shape[1], dx : dx + x.shape[2]]
        if (self.hflip or self.rot90) and r[2] < 0.5:
            x = x.flip(-1)
        if self.rot90:
            x = torch.rot90(x, int(r[3] * 4), (-2, -1))
        if self.jitter:
            brightness, contrast = 1 + self.jitter * (2 * r[4:6] - 1)
            m = x.mean()
            x = ((x - m) * contrast + m * brightness).clamp(0, 1)
        return x

    def __repr__(self) -> str:
        return f"Augment(shift={self.shift}, hflip={self.hflip}, rot90={self.rot90}, jitter={self.jitter})"


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinearly resize ``uint8`` images ``(N, c, h, w)`` to ``size x size`` (antialiased when shrinking)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)


def mean_std(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of ``uint8`` images, on the ``[0, 1]`` scale."""
    x = images.float().div(255).transpose(0, 1).flatten(1)
    return x.mean(1).tolist(), x.std(1).tolist()


def check_data_image_size(name: str, image_size: int, minimum: int) -> None:
    """Refuse an ``image_size`` the data set ``name`` cannot be made at: an int of at least ``minimum``
    pixels. (A model's own check of the sizes it takes is ``coatlib.layers.check_image_size``.)"""
    if not isinstance(image_size, int) or image_size < minimum:
        raise ValueError(f"{name}: image_size must be an int >= {minimum}, got {image_size!r}")
