"""``cifar10`` and ``imagenette``: real photo benchmarks, downloaded through torchvision on request.

Nothing is downloaded unless the caller passes ``download=True`` (on Colab,
say). Without torchvision, or offline without the files, loading fails with a
message that names the data sets bundled with coatlib's dependencies.

* ``cifar10``: 50,000 training and 10,000 test colour images of 32x32 in 10
  classes (Krizhevsky 2009), about 170 MB. Training images are flipped and
  shifted by up to ``image_size // 8`` pixels (the usual pad-4 random crop).
* ``imagenette``: 9,469 training and 3,925 validation ("test") images of 10
  easy ImageNet classes (fast.ai), the 160-pixel version (about 100 MB),
  centre-cropped to a square and resized to ``image_size`` (default 128).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from coatlib.data.base import Augment, ImageDataset, check_data_image_size

DEFAULT_ROOT = Path("~/.cache/coatlib/data").expanduser()
CIFAR10_MEAN, CIFAR10_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class TorchvisionImages(ImageDataset):
    """A torchvision data set of PIL images, centre-cropped to a square and resized to ``image_size``."""

    def __init__(self, dataset, classes, mean, std, channels: int, image_size: int, augment: Augment | None):
        super().__init__(classes, mean, std, channels, image_size, augment)
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def raw(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[i]
        if hasattr(image, "convert"):  # a PIL image
            image = image.convert("RGB")
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
        h, w = x.shape[-2:]
        side = min(h, w)
        x = x[:, (h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
        x = x.float()[None] / 255
        if side != self.image_size:
            x = torch.nn.functional.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            )
        return x[0].clamp(0, 1), int(label)


def cifar10(split="train", image_size=32, channels=3, download=False, root=None) -> TorchvisionImages:
    """The ``split`` of CIFAR-10 ("train": 50,000 images, "test": 10,000)."""

    def make(datasets, root, download):
        return datasets.CIFAR10(root, train=split == "train", download=download)

    return _photos("cifar10", make, split, image_size, channels, download, root, CIFAR10_MEAN, CIFAR10_STD)


def imagenette(split="train", image_size=128, channels=3, download=False, root=None) -> TorchvisionImages:
    """The ``split`` of Imagenette, 160-pixel version ("train": 9,469 images, "test": the 3,925 "val" images)."""

    def make(datasets, root, download):
        return datasets.Imagenette(root, split="train" if split == "train" else "val", size="160px", download=download)

    return _photos("imagenette", make, split, image_size, channels, download, root, IMAGENET_MEAN, IMAGENET_STD)


def mismatched_torchvision(error: BaseException) -> str:
    """The message for a torchvision that is installed but fails to import: a build for another torch."""
    import torch

    try:
        from importlib.metadata import version

        tv = version("torchvision")
    except Exception:
        tv = "?"
    return (
        f"torchvision {tv} is installed but cannot be imported ({type(error).__name__}: {error}): it was built "
        f"for a different PyTorch than the installed torch {torch.__version__} (mismatched builds, e.g. a CUDA "
        f"torchvision wheel beside a CPU-only torch). Install the torchvision build that matches this torch, "
        f"from the same package index and of the same variant (CPU or CUDA), or reinstall both together."
    )


def _photos(name, make, split, image_size, channels, download, root, mean, std) -> TorchvisionImages:
    """``make(torchvision.datasets, root, download)`` from the files in ``root``, downloading them only if allowed;
    training images are flipped and shifted by up to 1/8 of their size."""
    from coatlib.data import OFFLINE

    check_data_image_size(name, image_size, 8)
    root = str(Path(root or DEFAULT_ROOT))
    offline = f"The offline data sets are {', '.join(OFFLINE)} (coatlib.data.load(name, ...))."
    try:
        from torchvision import datasets
    except ModuleNotFoundError as e:
        if e.name != "torchvision":
            raise
        raise RuntimeError(
            f"{name} is read through torchvision, which is not installed here. "
            f"Install torchvision (pip install torchvision) on a machine with network access and pass download=True. "
            f"{offline}"
        ) from e
    except Exception as e:  # installed, but built for another torch: it fails while importing
        raise RuntimeError(mismatched_torchvision(e) + f" {offline}") from e
    try:
        data = make(datasets, root, False)
    except RuntimeError as e:
        if not download:
            raise RuntimeError(
                f"{name} is not on this machine (looked in {root}). Pass download=True to download it "
                f"with torchvision (needs network access, e.g. on Colab). {offline}"
            ) from e
        data = make(datasets, root, True)
    classes = [c[0] if isinstance(c, (tuple, list)) else c for c in data.classes]  # ("tench", "Tinca tinca")
    augment = Augment(shift=image_size // 8, hflip=True) if split == "train" else None
    return TorchvisionImages(data, classes, mean, std, channels, image_size, augment)
