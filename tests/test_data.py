"""coatlib.data: sizes, splits, determinism, augmentation, and clear errors."""

import sys
import types

import numpy as np
import pytest
import torch

import coatlib.data
from coatlib.data import Augment, load
from coatlib.data.same_different import GLYPH_CELLS, SameDifferent


@pytest.mark.parametrize(
    "name, n_train, n_test, n_classes",
    [("digits", 1437, 360, 10), ("textures", 2400, 600, 6), ("same_different", 10_000, 2_000, 2)],
)
def test_documented_sizes_and_shapes(name, n_train, n_test, n_classes):
    train, test = load(name, "train"), load(name, "test")
    assert (len(train), len(test), len(train.classes)) == (n_train, n_test, n_classes)
    x, y = test[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert isinstance(y, int) and 0 <= y < n_classes


@pytest.mark.parametrize("name", ["digits", "textures"])
def test_classes_are_balanced_and_test_split_fixed(name):
    first, second = load(name, "test", image_size=16), load(name, "test", image_size=16)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    counts = torch.bincount(first.labels)
    assert counts.max() - counts.min() <= 2  # stratified (digits) / equal per class (textures)
    train = load(name, "train", image_size=16)
    xs = torch.stack([train[i][0] for i in range(0, len(train), 7)])
    assert abs(xs.mean()) < 0.3 and 0.7 < xs.std() < 1.3  # normalised with the training statistics


def test_textures_train_and_test_crops_do_not_share_pixels():
    from coatlib.data import textures as tex

    train, test = tex._splits(64, 64)["train"][0], tex._splits(64, 64)["test"][0]
    # at the native crop size no test crop equals any training crop
    flat_train = {bytes(c.numpy()) for c in train}
    assert not any(bytes(c.numpy()) in flat_train for c in test)


def test_grey_images_come_with_one_or_three_channels():
    three, one = load("digits", "test", channels=3), load("digits", "test", channels=1)
    x3, x1 = three[5][0], one[5][0]
    assert x1.shape == (1, 32, 32) and x3.shape == (3, 32, 32)
    assert all(torch.equal(x3[c], x1[0]) for c in range(3))


def test_image_size_resizes():
    assert load("digits", "test", image_size=64)[0][0].shape == (3, 64, 64)
    assert load("textures", "test", image_size=48)[0][0].shape == (3, 48, 48)


def test_training_split_is_augmented_reproducibly():
    train = load("textures", "train")
    torch.manual_seed(0)
    a = torch.stack([train[i][0] for i in range(20)])
    torch.manual_seed(0)
    b = torch.stack([train[i][0] for i in range(20)])
    torch.manual_seed(1)
    c = torch.stack([train[i][0] for i in range(20)])
    assert torch.equal(a, b) and not torch.equal(a, c)
    test = load("textures", "test")
    assert torch.equal(test[3][0], test[3][0])  # the test split is never augmented


def test_augment_rot90_gives_a_symmetry_of_the_square():
    x = torch.rand(1, 8, 8)
    symmetries = [torch.rot90(x.flip(-1) if f else x, k, (-2, -1)) for f in (0, 1) for k in range(4)]
    torch.manual_seed(0)
    seen = set()
    for _ in range(40):
        y = Augment(rot90=True)(x)
        matches = [i for i, s in enumerate(symmetries) if torch.equal(y, s)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == 8


def test_augment_shift_translates_with_zero_fill():
    x = torch.zeros(1, 16, 16)
    x[0, 6:10, 6:10] = torch.rand(4, 4) + 0.1
    torch.manual_seed(0)
    for _ in range(20):
        y = Augment(shift=2)(x)
        assert torch.allclose(y.sum(), x.sum())  # content inside the margin moves, nothing is lost
        (r, c) = torch.nonzero(y[0])[0].tolist()
        assert abs(r - 6) <= 2 and abs(c - 6) <= 2
        assert torch.equal(y[0, r : r + 4, c : c + 4], x[0, 6:10, 6:10])


def test_augment_jitter_stays_in_range():
    torch.manual_seed(0)
    y = Augment(jitter=0.5)(torch.rand(1, 8, 8))
    assert y.min() >= 0 and y.max() <= 1


def test_same_different_is_deterministic_and_any_size():
    a, b = SameDifferent("train", size=50, seed=3), SameDifferent("train", size=50, seed=3)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(0, 50, 7))
    assert not torch.equal(SameDifferent("train", seed=4)[0][0], a[0][0])
    assert not torch.equal(SameDifferent("test", seed=3)[0][0], a[0][0])
    assert len(load("same_different", size=123_456)) == 123_456
    with pytest.raises(IndexError):
        a.raw(50)


def test_same_different_label_is_the_relation_between_two_far_glyphs():
    data = SameDifferent("train", image_size=64, size=300)
    labels = []
    for i in range(300):
        corners, (g1, g2), same = data.scene(i)
        image, label = data.raw(i)
        labels.append(label)
        assert label == int(same) == int(np.array_equal(g1, g2))
        centres = corners + GLYPH_CELLS * data.cell / 2
        assert np.linalg.norm(centres[0] - centres[1]) >= 32
        for glyph in (g1, g2):  # a lit cell on every border: no glyph is a shifted copy of another
            assert glyph[0].any() and glyph[-1].any() and glyph[:, 0].any() and glyph[:, -1].any()
        g = GLYPH_CELLS * data.cell
        (y, x) = corners[0]
        assert torch.equal(image[0, y : y + g : data.cell, x : x + g : data.cell], torch.from_numpy(g1))
        assert image.sum() == data.cell**2 * (g1.sum() + g2.sum())  # nothing else on the canvas
    assert 0.4 < np.mean(labels) < 0.6


def test_same_different_streams_stay_those_the_committed_results_were_made_with():
    """Chapter 7's outputs and the layout sweep's JSON were made from these images: a change to the
    order of the random draws would silently change them."""
    fresh = SameDifferent("train", 32, size=24, seed=0)
    alphabet = SameDifferent("train", 32, size=24, seed=0, glyphs=8)
    assert [fresh.raw(i)[1] for i in range(24)] == [
        1,
        1,
        1,
        0,
        1,
        0,
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        0,
        1,
        0,
        1,
        0,
        1,
        1,
        0,
        1,
        0,
        1,
    ]
    assert [alphabet.raw(i)[1] for i in range(24)] == [
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        1,
        1,
        0,
        1,
        0,
        0,
        1,
        1,
        0,
        1,
        1,
        0,
        0,
        0,
        0,
        1,
        1,
    ]


def test_same_different_with_an_alphabet_draws_every_glyph_from_it_in_both_splits():
    train = SameDifferent("train", image_size=32, size=400, glyphs=8, seed=5)
    test = SameDifferent("test", image_size=32, size=200, glyphs=8, seed=5)
    alphabet = {g.tobytes() for g in train.alphabet}
    assert len(alphabet) == 8 and {g.tobytes() for g in test.alphabet} == alphabet  # one alphabet per seed
    pairs, labels = set(), []
    for data in (train, test):
        for i in range(len(data)):
            _, (g1, g2), same = data.scene(i)
            assert {g1.tobytes(), g2.tobytes()} <= alphabet and same == np.array_equal(g1, g2)
            pairs.add((g1.tobytes(), g2.tobytes()))
            labels.append(same)
    assert len(pairs) > 40 and 0.4 < np.mean(labels) < 0.6  # of 8 + 56 possible ordered pairs
    other = SameDifferent("train", size=10, glyphs=8, seed=6).alphabet
    assert {g.tobytes() for g in other} != alphabet
    for bad in (1, 2.5, "8"):
        with pytest.raises(ValueError, match="glyphs must be an int >= 2"):
            SameDifferent(glyphs=bad)


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(
        ValueError, match="Did you mean 'digits'.*Available: digits, textures, same_different, digit_pairs, cifar10"
    ):
        load("digit")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"split": "val"}, "split must be 'train' or 'test'"),
        ({"channels": 2}, "channels=2 is not available"),
        ({"image_size": 4}, "image_size must be an int >= 8"),
        ({"size": 10}, "unexpected keyword"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        load("digits", **kwargs)


def _fake_torchvision(monkeypatch, present: bool):
    """A stand-in torchvision whose CIFAR10 holds 6 random images, 'on disk' only if ``present``."""
    calls = []

    class CIFAR10:
        classes = [f"class{i}" for i in range(10)]

        def __init__(self, root, train, download):
            calls.append(download)
            if not (present or download):
                raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
            self.images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.images[i], i % 10

    class Imagenette:  # non-square photos, class names as tuples of synonyms
        classes = [(f"name{i}", f"synonym{i}") for i in range(10)]

        def __init__(self, root, split, size, download):
            calls.append(download)
            self.images = np.random.default_rng(1).integers(0, 256, (4, 40, 60, 3), dtype=np.uint8)

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.images[i], i

    fake = types.ModuleType("torchvision")
    fake.datasets = types.SimpleNamespace(CIFAR10=CIFAR10, Imagenette=Imagenette)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    return calls


def test_cifar10_offline_names_the_offline_data_sets(monkeypatch, tmp_path):
    calls = _fake_torchvision(monkeypatch, present=False)
    with pytest.raises(RuntimeError, match="download=True.*offline data sets are digits, textures, same_different"):
        load("cifar10", root=tmp_path)
    assert calls == [False]  # nothing was downloaded


def test_cifar10_downloads_only_when_asked(monkeypatch, tmp_path):
    calls = _fake_torchvision(monkeypatch, present=False)
    data = load("cifar10", "test", root=tmp_path, download=True)
    assert calls == [False, True]
    x, y = data[1]
    assert x.shape == (3, 32, 32) and y == 1 and len(data.classes) == 10
    assert load("cifar10", "test", image_size=64, root=tmp_path, download=True)[0][0].shape == (3, 64, 64)


def test_imagenette_is_centre_cropped_and_resized(monkeypatch, tmp_path):
    _fake_torchvision(monkeypatch, present=True)
    data = load("imagenette", "test", image_size=32, root=tmp_path)
    x, y = data[2]
    assert x.shape == (3, 32, 32) and y == 2 and data.classes[:2] == ["name0", "name1"]
    square = torch.from_numpy(data.dataset.images[2][:, 10:50]).permute(2, 0, 1).float()[None] / 255
    expected = torch.nn.functional.interpolate(square, size=(32, 32), mode="bilinear", antialias=True)[0]
    assert torch.allclose(x * data.std + data.mean, expected, atol=1e-5)


def test_cifar10_without_torchvision(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes "import torchvision" fail
    with pytest.raises(RuntimeError, match="pip install torchvision.*offline data sets are digits"):
        load("cifar10", download=True)


def test_cifar10_with_a_mismatched_torchvision_says_so(monkeypatch):
    import types

    broken = types.ModuleType("torchvision")

    def fail(name):
        raise RuntimeError("operator torchvision::nms does not exist")

    broken.__getattr__ = fail  # what a CUDA torchvision does beside a CPU-only torch
    monkeypatch.setitem(sys.modules, "torchvision", broken)
    with pytest.raises(RuntimeError, match="mismatched builds.*offline data sets are digits") as info:
        load("cifar10", download=True)
    assert "pip install torchvision" not in str(info.value)


def test_available_describes_every_data_set():
    assert set(coatlib.data.available()) == set(coatlib.data.DATASETS)
    assert set(coatlib.data.OFFLINE) < set(coatlib.data.DATASETS)
