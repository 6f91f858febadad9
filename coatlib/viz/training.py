"""A training history (``coatlib.train.fit``'s), drawn."""

from __future__ import annotations

import matplotlib.pyplot as plt

from coatlib.viz.style import COLUMN_WIDTH


def plot_history(history: dict[str, list], axes=None):
    """Loss (left) and accuracy (right) per epoch, train and test; returns the figure.

    The training curves are ``fit``'s running means over each epoch's augmented
    batches, with label smoothing in the loss; the test curves are measured
    after each epoch, without either."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(COLUMN_WIDTH, 3.2))
    loss_ax, acc_ax = axes
    epochs = history["epoch"]
    loss_ax.plot(epochs, history["train_loss"], "o-", label="train")
    acc_ax.plot(epochs, history["train_acc"], "o-", label="train")
    if history["test_acc"] and history["test_acc"][0] is not None:
        loss_ax.plot(epochs, history["test_loss"], "s-", label="test")
        acc_ax.plot(epochs, history["test_acc"], "s-", label="test")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig = loss_ax.figure
    fig.tight_layout()
    return fig
