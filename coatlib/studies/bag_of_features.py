"""A bag-of-local-features baseline: what a model that can see *what* but not *where* achieves.

The control of the layout study's task (``coatlib.data.digit_pairs``): if a
classifier that only knows which local patterns occur, and how often, solved
the relational label, the task would not need relations. The baseline:

1. **Local features**: every 8x8 patch (stride 2) of the image at half
   resolution, a quarter of a digit's side, encoded by its "triangle" distances to
   ``k`` centroids learned by k-means on training patches (Coates, Lee, Ng,
   "An Analysis of Single-Layer Networks in Unsupervised Feature Learning",
   AISTATS 2011). Patches are taken without padding, so no feature knows
   where it is.
2. **Pooled globally**: the mean and the maximum of each feature over the
   image: a bag, which counts and compares what is present.
3. **A nonlinear classifier**: a small MLP (scikit-learn's ``MLPClassifier``)
   on the pooled features.

``bag_of_features(train, test)`` scores it on the ordered pair and on the
unordered pair (which digits are present): the baseline recognises the digits,
yet its ordered-pair accuracy is about half its unordered one, and given that
it found the right two digits it puts them in the right order half the time:
chance.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

PATCH, STRIDE = 8, 2


def pooled_features(images: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)`` images -> ``(N, 2k)``: mean and max over all patches of the triangle encoding."""
    x = F.avg_pool2d(images, 2)
    patches = F.unfold(x, PATCH, stride=STRIDE).transpose(1, 2)  # (N, patches, 64)
    patches = _normalise(patches)
    distances = torch.cdist(patches, centroids[None].expand(len(patches), -1, -1))  # (N, patches, k)
    code = (distances.mean(-1, keepdim=True) - distances).clamp(min=0)  # "triangle" activation
    return torch.cat([code.mean(1), code.amax(1)], 1)


def bag_of_features(
    train: Dataset, test: Dataset, k: int = 64, hidden: int = 256, seed: int = 0
) -> dict[str, float | int]:
    """Train the baseline on ``train`` (a ``digit_pairs`` split with ``label="pair"``), score it on ``test``.

    Returns the accuracy on the ordered pair (90 classes), on the unordered pair (45 classes),
    and ``order_acc``: among the test images whose unordered pair it predicted right, the share
    whose order it also got right (chance: 0.5).
    """
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    x_train, y_train = _grey(train)
    x_test, y_test = _grey(test)
    sample = _normalise(F.unfold(F.avg_pool2d(x_train[:500], 2), PATCH, stride=STRIDE).transpose(1, 2))
    sample = sample.reshape(-1, PATCH * PATCH)
    sample = sample[sample.std(1) > 0.05]  # patches with something in them
    kmeans = MiniBatchKMeans(k, random_state=seed, n_init=3).fit(sample.numpy())
    centroids = torch.from_numpy(kmeans.cluster_centers_).float()
    f_train, f_test = (torch.cat([pooled_features(c, centroids) for c in x.split(256)]) for x in (x_train, x_test))
    scaler = StandardScaler().fit(f_train.numpy())
    result: dict[str, float | int] = {"train_images": len(y_train), "test_images": len(y_test), "k": k}
    predictions = {}
    for target, y_fit in (("pair", y_train), ("unordered", _unordered(y_train))):
        mlp = MLPClassifier((hidden,), alpha=1e-3, max_iter=200, early_stopping=True, random_state=seed)
        mlp.fit(scaler.transform(f_train.numpy()), y_fit)
        predictions[target] = mlp.predict(scaler.transform(f_test.numpy()))
    right_pair = predictions["unordered"] == _unordered(y_test)
    result["pair_acc"] = float((predictions["pair"] == y_test).mean())
    result["unordered_acc"] = float(right_pair.mean())
    # the order, where the ordered-pair classifier names the right two digits
    named = _unordered(predictions["pair"]) == _unordered(y_test)
    result["order_acc"] = float((predictions["pair"][named] == y_test[named]).mean()) if named.any() else None
    result["order_n"] = int(named.sum())
    return result


def _grey(data: Dataset) -> tuple[torch.Tensor, np.ndarray]:
    images, labels = zip(*(data.raw(i) if hasattr(data, "raw") else data[i] for i in range(len(data))))
    return torch.stack(images)[:, :1], np.asarray(labels)


def _unordered(pairs: np.ndarray) -> np.ndarray:
    """Ordered pair ``10 a + b`` -> the same number for ``(a, b)`` and ``(b, a)``."""
    a, b = pairs // 10, pairs % 10
    return 10 * np.minimum(a, b) + np.maximum(a, b)


def _normalise(patches: torch.Tensor) -> torch.Tensor:
    """Each patch minus its mean, over its norm (contrast normalisation)."""
    patches = patches - patches.mean(-1, keepdim=True)
    return patches / (patches.norm(dim=-1, keepdim=True) + 0.1)
