"""coatlib.diagrams: the block diagrams say what the configuration says."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from coatlib import diagrams  # noqa: E402
from coatlib.models.coatnet import CONFIGS  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("name", ["coatnet_0", "coatnet_2", "coatnet_6", "coatnet_pico"])
@pytest.mark.parametrize("image_size", [224, 384])
def test_network_diagram_labels_are_the_config(name, image_size):
    config = CONFIGS[name]
    fig = diagrams.network_diagram(name, image_size)
    assert isinstance(fig, Figure) and fig.dpi >= 110
    texts = diagrams.diagram_texts(fig)
    assert texts["input"].endswith(f"3 x {image_size} x {image_size}")
    assert f"D={config.stem}" in texts["stage-S0"] and f"{image_size // 2} x {image_size // 2}" in texts["stage-S0"]
    for i, (depth, width) in enumerate(zip(config.depths, config.widths), start=1):
        label, side = texts[f"stage-S{i}"], image_size // 2 ** (i + 1)
        assert f"L={depth}, D={width}" in label and f"{side} x {side}" in label
        assert ("MBConv" if i <= 2 else "TFMRel") in label
        if i >= 3:
            assert f"{width // config.head_dim} heads x {config.head_dim}" in label
    if config.s3_conv:
        assert f"L={config.s3_conv[0]}, D={config.s3_conv[1]}" in texts["stage-S3-conv"]
    else:
        assert "stage-S3-conv" not in texts


def test_stage_rows_follow_the_config_and_refuse_odd_sizes():
    rows = diagrams.stage_rows("coatnet_0", 224)
    assert [(r.stage, r.kind, r.blocks, r.width, r.size, r.heads) for r in rows] == [
        ("S0", "stem", 2, 64, 112, None),
        ("S1", "MBConv", 2, 96, 56, None),
        ("S2", "MBConv", 3, 192, 28, None),
        ("S3", "TFMRel", 5, 384, 14, 12),
        ("S4", "TFMRel", 2, 768, 7, 24),
    ]
    with pytest.raises(ValueError, match="multiple of 32"):
        diagrams.stage_rows("coatnet_0", 200)
    with pytest.raises(ValueError, match="unknown CoAtNet configuration"):
        diagrams.network_diagram("coatnet_99")


@pytest.mark.parametrize("stride_on", ["expand", "dw"])
def test_mbconv_diagram_downsampling(stride_on):
    c = CONFIGS["coatnet_0"]
    texts = diagrams.diagram_texts(diagrams.mbconv_diagram(c, stage=1, downsample=True, stride_on=stride_on))
    assert texts["input"] == f"x: {c.stem} x 112 x 112" and texts["output"] == f"{c.widths[0]} x 56 x 56"
    mid = 4 * c.widths[0]
    assert f"{c.stem} -> {mid}" in texts["main-1"] and f"{mid} -> {c.widths[0] // 4} -> {mid}" in texts["main-3"]
    assert ("stride 2" in texts["main-1"]) == (stride_on == "expand")
    assert ("stride 2" in texts["main-2"]) == (stride_on == "dw")
    assert texts["shortcut-0"].startswith("MaxPool 2x2") and f"{c.stem} -> {c.widths[0]}" in texts["shortcut-1"]


def test_mbconv_diagram_without_downsampling_has_an_identity_shortcut():
    texts = diagrams.diagram_texts(diagrams.mbconv_diagram("coatnet_0", stage=2, downsample=False))
    assert texts["shortcut-0"] == "identity" and "stride" not in " ".join(texts.values()).replace("(stride 1)", "")
    assert texts["input"] == "x: 192 x 28 x 28" and texts["output"] == "192 x 28 x 28"


def test_transformer_diagram_sizes_heads_and_tables():
    c = CONFIGS["coatnet_0"]
    texts = diagrams.diagram_texts(diagrams.transformer_diagram(c, stage=3, downsample=True))
    assert texts["input"].startswith("x: 28 x 28 x 192") and texts["output"] == "14 x 14 x 384"
    assert [texts[f"main-{i}"].split("\n")[0] for i in range(2)] == [
        "LayerNorm",
        "MaxPool 2x2, stride 2",
    ]  # pool after LN
    assert "12 heads x 32" in texts["main-2"] and "bias tables 12 x 27 x 27" in texts["main-2"]
    assert "Linear 192 -> 384" in texts["shortcut-1"] and "384 -> 1536" in texts["second-1"]
    texts = diagrams.diagram_texts(diagrams.transformer_diagram(c, stage=4, downsample=False, image_size=384))
    assert texts["shortcut-0"] == "identity" and "24 heads x 32, on 12 x 12" in texts["main-1"]
    with pytest.raises(ValueError, match="opens with MBConv"):
        diagrams.transformer_diagram("coatnet_6", stage=3, downsample=True)


def test_relative_attention_diagram_puts_the_bias_before_or_after_the_softmax():
    texts = diagrams.diagram_texts(diagrams.relative_attention_diagram("coatnet_0", stage=3))
    for form in ("pre", "post"):
        assert texts[f"{form}-table"].split("\n")[1] == "12 x 27 x 27"
        assert "12 x 196 x 196" in texts[f"{form}-bias"]
    assert texts["pre-step-1"].startswith("softmax")  # pre: logits, +, softmax
    assert texts["post-step-0"].startswith("softmax")  # post: logits, softmax, +
    assert texts["pre-sum"] == texts["post-sum"] == "+"


@pytest.mark.parametrize("size,window,shift,pieces", [(8, 4, 2, 9), (8, 4, 1, 9), (12, 4, 2, 16), (56, 7, 3, 81)])
def test_swin_window_labels(size, window, shift, pieces):
    labels = diagrams.swin_window_labels(size, size, window, shift)
    assert len(np.unique(labels["regular"])) == (size // window) ** 2
    assert len(np.unique(labels["shifted"])) == pieces  # the shifted grid cuts windows at the border, no wrapping
    assert len(np.unique(labels["rolled"])) == 9
    fig = diagrams.swin_windows_figure(size, size, window, shift) if size <= 12 else None
    if fig is not None:
        titles = {t.get_gid(): t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_gid") and a.get_gid())}
        assert f"{pieces} unequal pieces" in titles["title-shifted"]
