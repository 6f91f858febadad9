"""The book's figure style: the column's width, a colour-blind-safe palette with a marker per colour,
text of at least 10 pt, and an opaque white background that reads the same in light and dark themes."""

from __future__ import annotations

import matplotlib.pyplot as plt

COLUMN_WIDTH = 7.5  # inches: the book's text column
DPI = 150  # 7.5 in at 150 dpi: 1,125 pixels for a column of about 780 CSS px

# The Okabe-Ito palette (colour-blind safe), each colour paired with its own marker, so that a line
# reads without its colour too.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
BOOK_STYLE = {
    "figure.figsize": (COLUMN_WIDTH, 3.6),
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "figure.constrained_layout.use": True,
    "font.size": 11,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "lines.markersize": 5,
    "axes.prop_cycle": plt.cycler(color=PALETTE, marker=MARKERS),
}


def use_book_style() -> None:
    """Draw every later figure for the book's column: 7.5 in wide at 150 dpi, text of at least 10 pt,
    the colour-blind-safe :data:`PALETTE` with one marker per colour, an opaque white background.

    Each chapter calls it once in its import cell; it only sets ``matplotlib.rcParams``."""
    plt.rcParams.update(BOOK_STYLE)


def opaque(fig: plt.Figure, *axes: plt.Axes) -> None:
    """Give ``fig`` and ``axes`` an opaque white background (the book has a dark theme too)."""
    fig.patch.set_facecolor("white")
    fig.patch.set_alpha(1.0)
    for ax in axes:
        ax.set_facecolor("white")
