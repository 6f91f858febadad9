"""coatlib.viz.diagrams: the block diagrams say what the configuration says."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import coatlib  # noqa: E402
from coatlib.blocks import TransformerBlock  # noqa: E402
from coatlib.models.coatnet import BLOCK_NAMES, CONFIGS  # noqa: E402
from coatlib.viz import diagrams, stage_table, swin  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# The paper's Table 3 / Table 14 (REFERENCE.md section 1), written out: stage -> (L, D, heads x head size).
# CoAtNet-0 at 224: 112, 56, 28, 14, 7; at 384: 192, 96, 48, 24, 12.
PAPER = {
    "coatnet_0": {"S0": (2, 64), "S1": (2, 96), "S2": (3, 192), "S3": (5, 384, "12 heads x 32"), "S4": (2, 768, "24 heads x 32")},
    "coatnet_2": {"S0": (2, 128), "S1": (2, 128), "S2": (6, 256), "S3": (14, 512, "16 heads x 32"), "S4": (2, 1024, "32 heads x 32")},
    "coatnet_6": {"S0": (2, 192), "S1": (2, 192), "S2": (4, 384), "S3-conv": (8, 768), "S3": (42, 1536, "12 heads x 128"), "S4": (2, 2048, "16 heads x 128")},
}  # fmt: skip
SIDES = {224: {"S0": 112, "S1": 56, "S2": 28, "S3-conv": 14, "S3": 14, "S4": 7}, 384: {"S0": 192, "S1": 96, "S2": 48, "S3-conv": 24, "S3": 24, "S4": 12}}  # fmt: skip


@pytest.mark.parametrize("name", PAPER)
@pytest.mark.parametrize("image_size", [224, 384])
def test_network_diagram_says_the_papers_table(name, image_size):
    fig = diagrams.network_diagram(name, image_size)
    assert isinstance(fig, Figure) and fig.dpi >= 110
    texts = diagrams.diagram_texts(fig)
    assert texts["input"].endswith(f"3 x {image_size} x {image_size}")
    assert set(texts) == {"input", "head", *(f"stage-{s}" for s in PAPER[name])}
    for stage, (depth, width, *heads) in PAPER[name].items():
        label, side = texts[f"stage-{stage}"], SIDES[image_size][stage]
        assert f"D={width}\n" in label and label.endswith(f"\n{side} x {side}"), (stage, label)
        if stage == "S0":
            assert "2 conv 3x3" in label
        else:
            assert f"L={depth}, D={width}" in label
            assert ("TFMRel" if heads else "MBConv") in label and all(h in label for h in heads)


def test_network_diagram_draws_the_layout_and_refuses_odd_sizes():
    texts = diagrams.diagram_texts(diagrams.network_diagram("coatnet_0", 224, layout="C-T-T-T"))
    assert "MBConv" in texts["stage-S1"] and "TFMRel\nL=3, D=192\n6 heads x 32\n28 x 28" in texts["stage-S2"]
    vit = diagrams.diagram_texts(diagrams.network_diagram("coatnet_0", 224, layout="ViT-Rel"))
    assert "1 conv 16x16" in vit["stage-S0"] and "L=12, D=384" in vit["stage-S1-S4"]  # 2+3+5+2 blocks at S3's width
    with pytest.raises(ValueError, match="multiples of 32.*nearest valid: height 192 or 224"):
        diagrams.network_diagram("coatnet_0", 200)
    with pytest.raises(ValueError, match="unknown CoAtNet configuration"):
        diagrams.network_diagram("coatnet_99")


def measured_runs(model, image_size):
    """The runs of ``model`` as a forward pass on ``meta`` sees them: for each stem and run of blocks of
    one kind in a stage, (stage, kind, blocks, channels out, map size out, heads of its last block)."""
    seen = []
    hooks = [model.stem.register_forward_hook(lambda m, i, out: seen.append(("S0", "stem", m, out.shape)))]
    for stage in model.stages:
        for block in stage.blocks:
            kind = "T" if isinstance(block, TransformerBlock) else "C"
            hooks.append(
                block.register_forward_hook(lambda m, i, out, s=stage.name, k=kind: seen.append((s, k, m, out.shape)))
            )
    with torch.no_grad():
        model(torch.zeros(1, 3, *image_size, device="meta"))
    for hook in hooks:
        hook.remove()
    runs = []
    for stage, kind, module, shape in seen:
        heads = module.attn.num_heads if kind == "T" else None
        convs = sum(isinstance(m, nn.Conv2d) for m in module.modules()) if kind == "stem" else 1
        if runs and runs[-1][:2] == (stage, kind):
            runs[-1] = (stage, kind, runs[-1][2] + 1, shape[1], tuple(shape[2:]), heads)
        else:
            runs.append((stage, kind, convs, shape[1], tuple(shape[2:]), heads))
    return runs


@pytest.mark.parametrize("name", coatlib.list_models("coatnet*"))
def test_diagram_stage_table_and_model_agree(name):
    """For every registered CoAtNet, rw included: the diagram's boxes and the stage table say what a
    forward pass through the built model measures (kind, blocks, width, map size, heads)."""
    image_size = (224, 224)
    with torch.device("meta"):
        model = coatlib.create_model(name)
    measured = measured_runs(model, image_size)
    table = [(r.stage, r.kind, r.blocks, r.width, r.size, r.heads) for r in stage_table(model)]
    assert table == measured
    texts = diagrams.diagram_texts(diagrams.network_diagram(model))
    assert texts["input"] == "input\n3 x 224 x 224"
    boxes = [texts[k] for k in texts if k.startswith("stage-")]
    assert len(boxes) == len(measured)
    for box, (stage, kind, blocks, width, size, heads) in zip(boxes, measured):
        assert box.startswith(f"{stage}: ") and f"D={width}" in box and box.endswith(f"{size[0]} x {size[1]}")
        if kind == "stem":
            assert f"{blocks} conv" in box
        else:
            assert f"{BLOCK_NAMES[kind]}\nL={blocks}, D={width}" in box
            assert (f"\n{heads} heads x " in box) == (kind == "T")


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
    labels = swin.swin_window_labels(size, size, window, shift)
    assert len(np.unique(labels["regular"])) == (size // window) ** 2
    assert len(np.unique(labels["shifted"])) == pieces  # the shifted grid cuts windows at the border, no wrapping
    assert len(np.unique(labels["rolled"])) == 9
    fig = swin.swin_windows_figure(size, size, window, shift) if size <= 12 else None
    if fig is not None:
        titles = {t.get_gid(): t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_gid") and a.get_gid())}
        assert f"{pieces} unequal pieces" in titles["title-shifted"]
