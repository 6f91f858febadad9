"""coatlib.data.digit_pairs: the layout study's task, and the bag-of-features control it must defeat."""

import numpy as np
import pytest
import torch

from coatlib.data import load
from coatlib.data.digit_pairs import DigitPairs
from coatlib.data.digits import source_splits
from coatlib.studies.bag_of_features import _unordered, bag_of_features


def test_label_is_the_ordered_pair_of_the_two_digits_read_left_to_right():
    d = DigitPairs("train", 128, size=200)
    images, labels = source_splits()["train"]
    for i in range(200):
        scene = d.scene(i)
        (left, right), (c0, c1) = scene["digits"], scene["corners"]
        assert c0[1] < c1[1]  # the first digit is the left one
        assert c1[1] - c0[1] >= 32 + 16  # boxes at least an eighth of the canvas apart
        assert scene["label"] == 10 * labels[left] + labels[right] and labels[left] != labels[right]
        x, y = d[i]
        assert y == scene["label"] and x.shape == (3, 128, 128)
    # every ordered pair of two different digits occurs, and no pair of twins
    many = DigitPairs("train", 64, size=3000)
    assert {many.scene(i)["label"] for i in range(3000)} == {10 * a + b for a in range(10) for b in range(10) if a != b}


def test_the_digits_are_drawn_where_the_scene_says_and_fragments_are_small():
    d = DigitPairs("test", 64, size=5, clutter=0)
    x, _ = d.raw(0)
    scene = d.scene(0)
    lit = torch.zeros(64, 64, dtype=torch.bool)
    for y0, x0 in scene["corners"]:
        lit[y0 : y0 + 16, x0 : x0 + 16] = True
    assert x[0][~lit].abs().max() == 0 and x[0][lit].max() > 0.5  # nothing outside the two boxes
    with_clutter = DigitPairs("test", 64, size=5, clutter=8)
    assert (with_clutter.raw(0)[0][0][~lit] > 0).any()  # clutter lies outside them too
    assert all(len(f) == 3 for f in with_clutter.scene(0)["fragments"])


def test_train_and_test_draw_on_disjoint_source_digits():
    train, test = DigitPairs("train", 64, size=300), DigitPairs("test", 64, size=300)
    src = source_splits()
    train_images = {bytes(im.numpy()) for im in src["train"][0]}
    test_images = {bytes(im.numpy()) for im in src["test"][0]}
    used_train = {bytes(src["train"][0][i].numpy()) for k in range(300) for i in train.scene(k)["digits"]}
    used_test = {bytes(src["test"][0][i].numpy()) for k in range(300) for i in test.scene(k)["digits"]}
    assert used_train <= train_images and used_test <= test_images
    # the two splits' sources share no image (a few of the 1,797 digits are pixel-identical
    # duplicates in scikit-learn's set; none of them crosses the split used here)
    assert not used_train & used_test
    assert train.sources.shape[0] == 1437 and test.sources.shape[0] == 360


def test_deterministic_nested_and_seeded():
    a, b = DigitPairs(size=50), DigitPairs(size=5000)
    assert all(torch.equal(a.raw(i)[0], b.raw(i)[0]) for i in range(50))  # a small set starts a large one
    assert not torch.equal(a.raw(0)[0], DigitPairs(seed=1, size=50).raw(0)[0])
    assert not torch.equal(a.raw(0)[0], DigitPairs("test", size=50).raw(0)[0])
    with pytest.raises(IndexError, match="out of range"):
        a.raw(50)


def test_the_local_task_is_one_digit_and_its_class():
    d = load("digit_pairs", "train", 64, size=100, label="digit")
    images, labels = source_splits()["train"]
    assert len(d.classes) == 10
    for i in range(100):
        scene = d.scene(i)
        assert len(scene["digits"]) == 1 and scene["label"] == labels[scene["digits"][0]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 48}, "image_size must be an int >= 64"),
        ({"image_size": 72}, "multiple of 16"),
        ({"label": "left"}, "label must be one of"),
        ({"clutter": -1}, "clutter must be an int >= 0"),
        ({"size": 0}, "size must be a positive int"),
    ],
)
def test_bad_arguments_name_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DigitPairs(**kwargs)


def test_a_bag_of_local_features_sees_which_digits_but_not_their_order():
    """The control the task must pass: pooled local features (which know *what*, not *where*) find the
    two digits well above chance but put them in order only at chance, so the ordered pair needs
    relations across the image. Chance: 1/45 for the unordered pair, 1/2 for the order."""
    train = DigitPairs("train", 128, size=2000)
    test = DigitPairs("test", 128, size=1000)
    r = bag_of_features(train, test, k=48)
    assert r["unordered_acc"] > 0.15  # it recognises the digits (chance 0.022)
    assert r["pair_acc"] < 0.5 * r["unordered_acc"] + 0.05  # the order is worth nothing to it
    n = r["order_n"]
    assert n > 100 and abs(r["order_acc"] - 0.5) < 2.6 * (0.25 / n) ** 0.5  # at chance within 99%


def test_unordered_pair_forgets_the_order():
    pairs = np.array([37, 73, 12, 21, 90])
    assert list(_unordered(pairs)) == [37, 37, 12, 12, 9]
