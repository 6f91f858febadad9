"""Swin's windows (the family tree's chapter): the regular windows, the shifted windows and the
rolled map, as label maps and as a figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

from coatlib.viz.style import COLUMN_WIDTH, DPI


def swin_window_labels(height: int = 8, width: int = 8, window: int = 4, shift: int = 2) -> dict[str, np.ndarray]:
    """Three ``(height, width)`` label maps of Swin's windows (chapter 6):

    * ``"regular"``: the window of each token in the regular grid (W-MSA);
    * ``"shifted"``: the piece of each token when the window grid itself moves by ``shift``
      (without wrapping around): windows cut at the border, ``((H - shift) / window + 1) *
      ((W - shift) / window + 1)`` pieces, 9 for an 8 x 8 map with 4 x 4 windows;
    * ``"rolled"``: after rolling the map by ``-shift`` (``torch.roll``), the region each token
      comes from; the regular grid of windows then holds these regions, and tokens of different
      regions in one window must not attend to each other.
    """
    if height % window or width % window or not 0 < shift < window:
        raise ValueError("height and width must be multiples of window, and 0 < shift < window")
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    regular = rows // window * (width // window) + cols // window
    pieces_per_row = (width - shift + window - 1) // window + 1
    shifted = (rows + window - shift) // window * pieces_per_row + (cols + window - shift) // window

    def region(p, length):
        return (p >= length - window).astype(int) + (p >= length - shift).astype(int)

    rolled = region(rows, height) * 3 + region(cols, width)
    return {"regular": regular, "shifted": shifted, "rolled": rolled}


def swin_windows_figure(height: int = 8, width: int = 8, window: int = 4, shift: int = 2):
    """The three label maps of :func:`swin_window_labels`, numbered, with the window borders drawn."""
    labels = swin_window_labels(height, width, window, shift)
    n_regular = len(np.unique(labels["regular"]))
    n_shifted = len(np.unique(labels["shifted"]))
    n_rolled = len(np.unique(labels["rolled"]))
    titles = {
        "regular": f"W-MSA:\n{n_regular} regular windows",
        "shifted": f"grid shifted by {shift}:\n{n_shifted} unequal pieces",
        "rolled": f"map rolled by {shift}:\n{n_rolled} regions in {n_regular} windows",
    }
    light = plt.get_cmap("tab20").colors[1::2] + plt.get_cmap("Pastel2").colors  # light: the numbers stay legible
    palette = ListedColormap(light[: max(n_shifted, n_rolled, n_regular)])
    fig, axes = plt.subplots(1, 3, figsize=(COLUMN_WIDTH, 3.2), dpi=DPI, layout="constrained")
    for ax, (key, values) in zip(axes, labels.items()):
        ax.imshow(values, cmap=palette, vmin=-0.5, vmax=palette.N - 0.5)  # colour = label, nothing else
        for r in range(height):
            for c in range(width):
                ax.text(c, r, int(values[r, c]), ha="center", va="center", fontsize=10)
        borders = (
            range(shift, max(height, width), window) if key == "shifted" else range(window, max(height, width), window)
        )
        for b in borders:
            if b < height:
                ax.axhline(b - 0.5, color="black", lw=3)
            if b < width:
                ax.axvline(b - 0.5, color="black", lw=3)
        ax.set_title(titles[key], fontsize=10, gid=f"title-{key}")
        ax.set(xlabel="column", ylabel="row")
    return fig
