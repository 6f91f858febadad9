"""The book's figures: stage tables read from built models, and what the figures draw."""

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.colors import to_hex, to_rgba

import coatlib
from coatlib.flops import count_params
from coatlib.viz import (
    draw_stages,
    plot_ideal_world,
    plot_layout_study,
    stage_legend,
    stage_table,
)
from coatlib.viz.diagrams import COLOURS, KIND_COLOUR


def meta_model(name, **kw):
    with torch.device("meta"):
        return coatlib.create_model(name, **kw)


def Segment(stage, kind, blocks, width, size):
    """A row of the paper's Table 3, as written there: what every stage table row must say."""
    return (stage, kind, blocks, width, size)


def rows(table):
    return [(r.stage, r.kind, r.blocks, r.width, r.size) for r in table]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_stage_table_is_the_papers_table_3_row():
    """CoAtNet-0 (paper Table 3): L/D per stage and the map sizes at 224."""
    assert rows(stage_table(meta_model("coatnet_0"))) == [
        Segment("S0", "stem", 2, 64, (112, 112)),
        Segment("S1", "C", 2, 96, (56, 56)),
        Segment("S2", "C", 3, 192, (28, 28)),
        Segment("S3", "T", 5, 384, (14, 14)),
        Segment("S4", "T", 2, 768, (7, 7)),
    ]


def test_stage_table_splits_a_stage_that_changes_block_type():
    """CoAtNet-7 (paper Table 14): S3 opens with 8 MBConv blocks at 1024, then 42 TFMRel at 2048."""
    s3 = [r for r in rows(stage_table(meta_model("coatnet_7"))) if r[0] == "S3"]
    assert s3 == [Segment("S3", "C", 8, 1024, (14, 14)), Segment("S3", "T", 42, 2048, (14, 14))]


def test_stage_table_of_an_rw_model_is_timms_config():
    """timm's coatnet_0_rw_224 (maxxvit.py): stem 32/64, depths (2, 3, 7, 2), widths (96, 192, 384, 768)."""
    assert rows(stage_table(meta_model("coatnet_0_rw"))) == [
        Segment("S0", "stem", 2, 64, (112, 112)),
        Segment("S1", "C", 2, 96, (56, 56)),
        Segment("S2", "C", 3, 192, (28, 28)),
        Segment("S3", "T", 7, 384, (14, 14)),
        Segment("S4", "T", 2, 768, (7, 7)),
    ]


@pytest.mark.parametrize("layout", ["C-C-C-C", "C-C-C-T", "C-C-T-T", "C-T-T-T"])
def test_stage_table_follows_the_layout_and_the_image_size(layout):
    table = stage_table(meta_model("coatnet_nano", layout=layout, image_size=(64, 96)))
    assert [r.kind for r in table[1:]] == layout.split("-")
    assert [r.size for r in table] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    assert sum(r.blocks for r in table[1:]) == sum(
        len(stage.blocks) for stage in meta_model("coatnet_nano", layout=layout, image_size=(64, 96)).stages
    )


def test_stage_table_of_vit_rel():
    table = rows(stage_table(meta_model("coatnet_pico", layout="ViT-Rel", image_size=64)))
    assert table == [Segment("S0", "stem", 1, 64, (4, 4)), Segment("S1-S4", "T", 5, 64, (4, 4))]


def test_stage_table_rejects_other_models():
    with pytest.raises(TypeError, match="needs a CoAtNet"):
        stage_table(torch.nn.Linear(2, 2))


def test_draw_stages_draws_one_bar_per_run_and_the_head():
    model = meta_model("coatnet_6")
    table = stage_table(model)
    fig = draw_stages(model)
    ax = fig.axes[0]
    bars = ax.patches
    assert [b.get_height() for b in bars] == [r.width for r in table] + [table[-1].width]
    colours = [COLOURS[KIND_COLOUR[k]] for k in [r.kind for r in table] + ["head"]]
    assert [to_hex(b.get_facecolor()) for b in bars] == colours
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[3:5] == ["S3\n14x14", "S3\n14x14"] and labels[-1] == "head\n1x1"
    notes = [t.get_text() for t in ax.texts]
    assert "8x MBConv\nD=768" in notes and "42x TFMRel\nD=1536" in notes
    assert f"{count_params(model) / 1e6:.2f}M parameters" in ax.get_title()


def test_figures_have_labelled_axes_and_opaque_backgrounds():
    fig = draw_stages(coatlib.create_model("coatnet_pico", image_size=32))
    ax = fig.axes[0]
    assert ax.get_xlabel() and ax.get_ylabel()
    assert fig.patch.get_alpha() == 1.0 and to_rgba(fig.patch.get_facecolor())[3] == 1.0
    assert to_rgba(ax.get_facecolor()) == (1.0, 1.0, 1.0, 1.0)
    assert len(ax.get_legend().get_texts()) == 4  # stem, MBConv, TFMRel, head


def test_draw_stages_on_given_axes_without_legend_and_stage_legend():
    fig, (a, b) = plt.subplots(1, 2)
    assert draw_stages(meta_model("coatnet_0", layout="C-C-C-C"), ax=a, title="mine", legend=False) is fig
    assert a.get_title() == "mine" and a.get_legend() is None
    legend = stage_legend(b, ["C", "T"], loc="center")
    assert [t.get_text().split(" ")[0] for t in legend.get_texts()] == ["MBConv", "TFMRel"]


def fake_study():
    """C-C-C-C and C-C-T-T at two sizes, three seeds: C-C-T-T at 100 images tests 0.6 (seeds 0.5/0.6/0.7)
    at training loss 0.5; the ideal world's curves are constant per seed."""
    runs = []
    settings = {"steps": 10, "batch_size": 10, "sizes": [100, 400], "local_size": 100}
    for layout, shift in [("C-C-C-C", 0.0), ("C-C-T-T", 0.1)]:
        for seed, noise in [(1, -0.1), (2, 0.0), (3, 0.1)]:
            base = {"kind": "study", "layout": layout, "seed": seed, "test_images": 1_000_000}
            for size, gain in [(100, 0.0), (400, 0.2)]:
                acc, loss = 0.5 + shift + gain + noise, 0.6 - shift - gain
                real = {"task": "task", "world": "real", "size": size, "online_loss": loss, "online_loss_var": 0.0}
                runs.append({**base, **real, "test_acc": acc, "train_loss": loss})
            ideal = {"task": "task", "world": "ideal", "size": 100, "steps": 10, "loss_curve": [3.0 + noise] * 5}
            runs.append(
                {
                    **base,
                    **ideal,
                    "test_acc": 0.1,
                    "train_loss": 3.0,
                    "online_loss": 3.0 + noise,
                    "online_loss_var": 0.0,
                }
            )
    runs.append({"kind": "lr", "task": "task", "world": "ideal", "layout": "C-C-C-C", "seed": 0})
    return {"experiment": "layout_study", "settings": settings, "runs": runs}


def test_plot_layout_study_draws_means_with_95_percent_intervals():
    fig = plot_layout_study(fake_study())
    acc_ax, fit_ax = fig.axes
    assert fig.get_size_inches()[0] == pytest.approx(7.5)  # drawn for the column
    cccc, cctt = acc_ax.containers  # one errorbar per layout, in the paper's order
    x, y = cctt.lines[0].get_data()
    assert list(x) == [100, 400] and list(y) == pytest.approx([0.6, 0.8])
    x, y = fit_ax.containers[1].lines[0].get_data()  # accuracy against loss
    assert list(x) == pytest.approx([0.5, 0.3]) and list(y) == pytest.approx([0.6, 0.8])
    # 95% t intervals over three seeds (sd 0.1): 4.303 * 0.1 / sqrt(3) each way (the test noise is ~0)
    segments = cctt.lines[2][0].get_segments()
    assert [seg[1][1] - seg[0][1] for seg in segments] == pytest.approx([2 * 4.303 * 0.1 / 3**0.5] * 2, rel=1e-3)
    assert acc_ax.get_xscale() == "log" and fit_ax.xaxis_inverted()
    (legend,) = fig.legends  # one legend for both panels
    assert [t.get_text() for t in legend.get_texts()] == ["C-C-C-C", "C-C-T-T"]
    colours = {to_hex(c.lines[0].get_color()) for c in acc_ax.containers}
    markers = {c.lines[0].get_marker() for c in acc_ax.containers}
    assert len(colours) == 2 and len(markers) == 2  # told apart by colour and by marker


def test_plot_ideal_world_draws_the_mean_curve_and_chance():
    fig = plot_ideal_world(fake_study())
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"C-C-C-C", "C-C-T-T", "chance (ln 90)"}
    assert list(lines["C-C-T-T"].get_ydata()) == pytest.approx([3.0] * 5)
    assert list(lines["chance (ln 90)"].get_ydata()) == pytest.approx([4.4998] * 2, abs=1e-4)


def test_study_plots_reject_what_is_not_a_study():
    for bad in ({}, {"runs": []}, [1, 2], {"experiment": "layout_sweep", "runs": [1]}):
        with pytest.raises(ValueError, match="coatlib.studies.layouts_run.layout_study"):
            plot_layout_study(bad)
    with pytest.raises(ValueError, match="no finished real-world runs of 'local'"):
        plot_layout_study(fake_study(), task="local")


def test_draw_stages_draws_an_rw_model():
    """timm's coatnet_3_rw (stem 96/192; depths 2, 6, 14, 2; widths 192 .. 1536) and its head."""
    ax = draw_stages(meta_model("coatnet_3_rw")).axes[0]
    assert [b.get_height() for b in ax.patches] == [192, 192, 384, 768, 1536, 1536]
    notes = [t.get_text() for t in ax.texts]
    assert "14x TFMRel\nD=768" in notes and "norm, pool,\nFC" in notes
