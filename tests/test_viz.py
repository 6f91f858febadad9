"""The book's figures: stage tables read from built models, and what the figures draw."""

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.colors import to_hex, to_rgba

import coatlib
from coatlib.flops import count_params
from coatlib.viz import COLORS, Segment, draw_stages, plot_layout_sweep, stage_legend, stage_table


def meta_model(name, **kw):
    with torch.device("meta"):
        return coatlib.create_model(name, **kw)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_stage_table_is_the_papers_table_3_row():
    """CoAtNet-0 (paper Table 3): L/D per stage and the map sizes at 224."""
    assert stage_table(meta_model("coatnet_0")) == [
        Segment("S0", "stem", 2, 64, (112, 112)),
        Segment("S1", "C", 2, 96, (56, 56)),
        Segment("S2", "C", 3, 192, (28, 28)),
        Segment("S3", "T", 5, 384, (14, 14)),
        Segment("S4", "T", 2, 768, (7, 7)),
    ]


def test_stage_table_splits_a_stage_that_changes_block_type():
    """CoAtNet-7 (paper Table 14): S3 opens with 8 MBConv blocks at 1024, then 42 TFMRel at 2048."""
    rows = [r for r in stage_table(meta_model("coatnet_7")) if r.stage == "S3"]
    assert rows == [Segment("S3", "C", 8, 1024, (14, 14)), Segment("S3", "T", 42, 2048, (14, 14))]


@pytest.mark.parametrize("layout", ["C-C-C-C", "C-C-C-T", "C-C-T-T", "C-T-T-T"])
def test_stage_table_follows_the_layout_and_the_image_size(layout):
    rows = stage_table(meta_model("coatnet_nano", layout=layout, image_size=(64, 96)))
    assert [r.kind for r in rows[1:]] == layout.split("-")
    assert [r.size for r in rows] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    assert sum(r.blocks for r in rows[1:]) == sum(
        len(stage.blocks) for stage in meta_model("coatnet_nano", layout=layout, image_size=(64, 96)).stages
    )


def test_stage_table_of_vit_rel():
    rows = stage_table(meta_model("coatnet_pico", layout="ViT-Rel", image_size=64))
    assert rows == [Segment("S0", "stem", 1, 64, (4, 4)), Segment("S1-S4", "T", 5, 64, (4, 4))]


def test_stage_table_rejects_other_models():
    with pytest.raises(TypeError, match="needs a CoAtNet"):
        stage_table(torch.nn.Linear(2, 2))


def test_draw_stages_draws_one_bar_per_run_and_the_head():
    model = meta_model("coatnet_6")
    rows = stage_table(model)
    fig = draw_stages(model)
    ax = fig.axes[0]
    bars = ax.patches
    assert [b.get_height() for b in bars] == [r.width for r in rows] + [rows[-1].width]
    assert [to_hex(b.get_facecolor()) for b in bars] == [COLORS[r.kind] for r in rows] + [COLORS["head"]]
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


def fake_sweep():
    """Two layouts, two sizes, two seeds; C-C-T-T at 100 images: accuracy 0.6 and loss 0.5, each with SE 0.1."""
    runs = []
    for layout, shift in [("C-C-C-C", 0.0), ("C-C-T-T", 0.1)]:
        for size, gain in [(100, 0.0), (400, 0.2)]:
            for seed, noise in [(0, -0.1), (1, 0.1)]:
                runs.append(
                    {
                        "kind": "sweep",
                        "data": "same_different",
                        "layout": layout,
                        "size": size,
                        "seed": seed,
                        "test_acc": 0.5 + shift + gain + noise,
                        "train_loss": 0.6 - shift - gain + noise,
                    }
                )
    runs.append({"kind": "lr", "data": "same_different", "layout": "C-C-C-C", "size": 100, "seed": 0})
    return {"settings": {"task": {"data": "same_different"}}, "runs": runs}


def test_plot_layout_sweep_draws_means_with_standard_errors_in_three_panels():
    fig = plot_layout_sweep(fake_sweep())
    acc_ax, loss_ax, equal_ax = fig.axes
    (cccc, cctt) = acc_ax.containers  # one errorbar per layout, in the paper's order
    x, y = cctt.lines[0].get_data()
    assert list(x) == [100, 400] and list(y) == pytest.approx([0.6, 0.8])
    x, y = loss_ax.containers[1].lines[0].get_data()
    assert list(y) == pytest.approx([0.5, 0.3])
    x, y = equal_ax.containers[1].lines[0].get_data()  # accuracy against loss
    assert list(x) == pytest.approx([0.5, 0.3]) and list(y) == pytest.approx([0.6, 0.8])
    # the error bars are standard errors over the two seeds: sd 0.1414 / sqrt(2) = 0.1
    segments = cctt.lines[2][0].get_segments()
    assert [seg[1][1] - seg[0][1] for seg in segments] == pytest.approx([0.2, 0.2])
    assert acc_ax.get_xscale() == "log" and equal_ax.xaxis_inverted()
    assert [t.get_text() for t in acc_ax.get_legend().get_texts()] == ["C-C-C-C", "C-C-T-T"]
    assert acc_ax.get_ylabel() == "test accuracy" and equal_ax.get_xlabel().startswith("final training loss")


def test_plot_layout_sweep_rejects_what_is_not_a_sweep():
    for bad in ({}, {"runs": []}, [1, 2]):
        with pytest.raises(ValueError, match="coatlib.experiments.layout_sweep"):
            plot_layout_sweep(bad)
    with pytest.raises(ValueError, match="no finished runs on 'textures'"):
        plot_layout_sweep(fake_sweep(), data="textures")
