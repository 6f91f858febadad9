"""The layout study of the paper's section 2.2 (``coatlib.studies.layouts``), drawn: test accuracy
against data size and against training loss, and the online loss of the ideal world."""

from __future__ import annotations

import matplotlib.pyplot as plt

from coatlib.viz.style import COLUMN_WIDTH, opaque

# The five layouts in the Okabe-Ito colour-blind-safe palette, each with its own marker: five hues
# that stay apart (blue, green, orange, black, pink; no two neighbours of the same family), so that
# C-C-T-T and C-T-T-T, which often lie close together, read apart by colour and by marker.
LAYOUT_STYLE = {
    "ViT-Rel": {"color": "#CC79A7", "marker": "D"},
    "C-C-C-C": {"color": "#0072B2", "marker": "o"},
    "C-C-C-T": {"color": "#009E73", "marker": "s"},
    "C-C-T-T": {"color": "#E69F00", "marker": "^"},
    "C-T-T-T": {"color": "#000000", "marker": "v"},
}


def plot_layout_study(record: dict, task: str = "task") -> plt.Figure:
    """The real world of a ``coatlib.studies.layouts`` record in two panels, each point the mean over
    seeds with its 95% interval (``coatlib.studies.stats``; test accuracy with the test set's own noise):

    1. test accuracy against the number of training images (generalization at each data size);
    2. test accuracy against the final training loss, one line per layout through its sizes
       (the paper's criterion: at equal training loss, the higher point generalizes better).
    """
    from coatlib.models.coatnet import LAYOUTS
    from coatlib.studies.layouts import study_table

    rows = [r for r in study_table(_check_study(record)) if r["task"] == task and r["world"] == "real"]
    if not rows:
        raise ValueError(f"the record has no finished real-world runs of {task!r}")
    fig, (acc_ax, fit_ax) = plt.subplots(1, 2, figsize=(COLUMN_WIDTH, 4.0), layout="constrained")
    opaque(fig, acc_ax, fit_ax)
    for layout in LAYOUTS:
        mine = [r for r in rows if r["layout"] == layout]
        if not mine:
            continue
        style = {**LAYOUT_STYLE[layout], "markersize": 7, "capsize": 3, "label": layout, "linewidth": 1.5}
        sizes = [r["size"] for r in mine]
        acc = [r["test_acc"] for r in mine]
        loss = [r["train_loss"] for r in mine]
        drawn = [
            acc_ax.errorbar(sizes, [a.mean for a in acc], yerr=_bars(acc), **style),
            # through the sizes in order, thin, so that the crossing error bars stay readable
            fit_ax.errorbar(
                [x.mean for x in loss],
                [a.mean for a in acc],
                xerr=_bars(loss),
                yerr=_bars(acc),
                **{**style, "linewidth": 0.8, "linestyle": ":"},
            ),
        ]
        for container in drawn:  # error bars lighter than the points they belong to
            for bar in container.lines[2]:
                bar.set_alpha(0.45)
    sizes = sorted({r["size"] for r in rows})
    acc_ax.set_xscale("log")
    acc_ax.set_xticks(sizes, [f"{n:,}" for n in sizes], minor=False)
    acc_ax.set_xticks([], minor=True)
    acc_ax.set(xlabel="training images (log scale)", ylabel="test accuracy")
    fit_ax.set(xlabel="final training loss (lower: fits better)", ylabel="test accuracy")
    fit_ax.invert_xaxis()
    for ax in (acc_ax, fit_ax):
        ax.grid(alpha=0.3)
    # one legend for both panels, under them, where it hides no point
    fig.legend(
        *acc_ax.get_legend_handles_labels(),
        loc="outside lower center",
        ncols=5,
        fontsize=10,
        title=f"mean of {rows[0]['seeds']} seeds with its 95% interval",
        title_fontsize=10,
        handletextpad=0.3,
        columnspacing=1.0,
    )
    return fig


def plot_ideal_world(record: dict) -> plt.Figure:
    """Online training loss against steps in the ideal world (fresh images at every step), one line per
    layout (the mean over seeds; the band is the seeds' range), with chance, ``ln(90)``, dashed."""
    import math

    from coatlib.models.coatnet import LAYOUTS
    from coatlib.studies.layouts import study_runs

    runs = study_runs(_check_study(record), "task", "ideal")
    if not any(runs.values()):
        raise ValueError("the record has no finished ideal-world runs")
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 3.4), layout="constrained")
    opaque(fig, ax)
    for layout in LAYOUTS:
        curves = [r["loss_curve"] for r in runs[layout]]
        if not curves:
            continue
        steps = runs[layout][0]["steps"]
        x = [(i + 0.5) * steps / len(curves[0]) for i in range(len(curves[0]))]
        mean = [sum(c) / len(c) for c in zip(*curves)]
        style = LAYOUT_STYLE[layout]
        # markers at staggered steps, so that curves lying on each other (at chance) stay told apart
        offset = LAYOUTS.index(layout)
        ax.plot(
            x, mean, color=style["color"], marker=style["marker"], markevery=(offset, 5), markersize=7, label=layout
        )
        ax.fill_between(
            x, [min(c) for c in zip(*curves)], [max(c) for c in zip(*curves)], color=style["color"], alpha=0.2
        )
    ax.axhline(math.log(90), color="black", linestyle="--", linewidth=1, label="chance (ln 90)")
    ax.set(xlabel="optimiser step (each on fresh images)", ylabel="training loss = test loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=10, ncols=2)
    return fig


def _check_study(record: dict) -> dict:
    if not isinstance(record, dict) or record.get("experiment") != "layout_study" or not record.get("runs"):
        raise ValueError(
            "needs a record of coatlib.studies.layouts_run.layout_study with finished runs "
            "(coatlib.studies.layouts.study_results() reads the committed one)"
        )
    return record


def _bars(intervals) -> list[list[float]]:
    """Error bars from intervals: distances below and above the mean."""
    return [[i.mean - i.low for i in intervals], [i.high - i.mean for i in intervals]]
