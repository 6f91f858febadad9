"""coatlib.inspection on randomly initialised models and known cases: bias tables, their locality,
attention maps, effective receptive fields, depthwise kernels, and their plots."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import coatlib  # noqa: E402
from coatlib.inspection import (  # noqa: E402
    attention_layers,
    attention_locality,
    attention_maps,
    bias_locality,
    bias_tables,
    depthwise_kernels,
    effective_receptive_field,
    erf_size,
    stage_output,
)
from coatlib.models.coatnet import LAYOUTS  # noqa: E402
from coatlib.viz import (  # noqa: E402
    plot_attention,
    plot_bias_tables,
    plot_depthwise_kernels,
    plot_receptive_fields,
)


@pytest.fixture(scope="module", params=["coatnet_nano_rw", "coatnet_pico"])
def model(request):
    torch.manual_seed(0)
    return coatlib.create_model(request.param, image_size=128).eval()


def test_bias_tables_of_every_block_and_head(model):
    s3, s4 = bias_tables(model, 3), bias_tables(model, 4)
    assert len(s3) == len(model.stages[2].blocks) and len(s4) == len(model.stages[3].blocks)
    assert s3[-1].shape[1:] == (15, 15) and s4[-1].shape[1:] == (7, 7)  # 8x8 and 4x4 maps at 128 px
    assert s4[-1].shape[0] == attention_layers(model, 4)[-1].num_heads
    with pytest.raises(ValueError, match="S3 and S4"):
        bias_tables(model, 1)


def _bump_at(model, offset: tuple[int, int]) -> None:
    """S3's first attention without content (q = k = 0) and a table that is a bump at ``offset``."""
    layer = attention_layers(model, 3)[0]
    with torch.no_grad():
        layer.qkv.weight.zero_()
        layer.qkv.bias.zero_()
        table = torch.full_like(layer.relative_bias_table, -20.0)
        H, W = layer.map_size
        table[:, H - 1 + offset[0], W - 1 + offset[1]] = 0.0
        layer.relative_bias_table.copy_(table)


@pytest.mark.parametrize("offset, expected", [((0, 0), (3, 4)), ((1, 0), (2, 4)), ((0, -2), (3, 6))])
def test_a_bump_in_the_table_is_where_every_head_looks(model, offset, expected):
    """Offset ``i - j = (dy, dx)``: a bump at (0, 0) attends to the query itself, at dy = +1 one
    row above it, at dx = -2 two columns to its right."""
    _bump_at(model, offset)
    maps = attention_maps(model, torch.randn(3, 128, 128), stage=3, query=(3, 4))
    assert maps.shape == (attention_layers(model, 3)[0].num_heads, 8, 8)
    torch.testing.assert_close(maps.sum((1, 2)), torch.ones(maps.shape[0]))
    peak = maps[0].flatten().argmax().item()
    assert divmod(peak, 8) == expected and maps[:, expected[0], expected[1]].min() > 0.99


def test_attention_maps_depend_on_the_image(model):
    torch.manual_seed(1)
    a, b = (attention_maps(model, torch.randn(1, 3, 128, 128), stage=4, query=(1, 2), block=-1) for _ in range(2))
    assert a.shape[1:] == (4, 4) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="outside the 4x4 map"):
        attention_maps(model, torch.randn(3, 128, 128), stage=4, query=(4, 0))


def test_plots_draw_every_head_with_labelled_axes(model):
    tables = bias_tables(model, 4)
    fig = plot_bias_tables(tables, title="S4")
    heads = sum(t.shape[0] for t in tables)
    maps = [ax for ax in fig.axes if ax.images]
    assert len(maps) == heads
    assert {ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()} == {"dx"}
    assert {ax.get_ylabel() for ax in fig.axes if ax.get_ylabel() and ax.images} == {"dy"}
    maps = attention_maps(model, torch.randn(3, 128, 128), stage=3, query=(2, 2))
    fig = plot_attention(maps, (2, 2), picture=torch.rand(128, 128, 3), heads=[0, 1])
    assert len(fig.axes) == 2 and all(ax.get_xlabel() == "column" and ax.get_ylabel() == "row" for ax in fig.axes)
    plt.close("all")


# --- locality, receptive fields and depthwise kernels -------------------------------------------


def test_locality_of_a_flat_table_is_the_share_of_keys_near_the_query():
    """Content aside, a flat table attends uniformly: the share is the number of keys in the
    3x3 square around each query over all 64, averaged over the queries (fewer at the border)."""
    per_axis = (2 * 2 + 6 * 3) / 8  # 8 positions: the two at the ends have 2 neighbours within 1, the rest 3
    flat = bias_locality(torch.zeros(4, 15, 15), radius=1)
    torch.testing.assert_close(flat, torch.full((4,), per_axis**2 / 64))
    assert bias_locality(torch.zeros(1, 15, 15), radius=7).item() == pytest.approx(1.0)


def test_locality_of_a_bump_at_the_query_is_one():
    table = torch.full((2, 7, 7), -30.0)
    table[:, 3, 3] = 0.0  # offset (0, 0): every query looks at itself
    torch.testing.assert_close(bias_locality(table, radius=0), torch.ones(2))
    table[1] = 0.0
    table[1, 2:5, 2:5] = -30.0  # offsets within 1 forbidden: the head looks only further away
    assert bias_locality(table, radius=1)[1] < 1e-6


def test_receptive_field_of_one_3x3_convolution_is_3x3():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    field = effective_receptive_field(conv, torch.randn(5, 3, 9, 9))
    assert field.shape == (9, 9) and field.sum().item() == pytest.approx(1.0)
    assert (field > 0).nonzero().tolist() == [[r, c] for r in range(3, 6) for c in range(3, 6)]
    assert erf_size(field, mass=1.0) == 3
    stacked = effective_receptive_field(nn.Sequential(conv, nn.Conv2d(4, 4, 3, padding=1)), torch.randn(5, 3, 9, 9))
    assert erf_size(stacked, mass=1.0) == 5


def test_erf_size_of_known_fields():
    field = torch.zeros(11, 11)
    field[5, 5] = 1.0
    assert erf_size(field) == 1
    field[4:7, 4:7] = 1.0
    assert erf_size(field, mass=0.5) == 3
    assert erf_size(torch.ones(11, 11), mass=1.0) == 11


@pytest.mark.parametrize("layout", LAYOUTS)
def test_shapes_for_every_stage_of_every_layout(layout):
    torch.manual_seed(0)
    model = coatlib.create_model("coatnet_pico", image_size=64, layout=layout).eval()
    images = torch.randn(2, 3, 64, 64)
    kinds = ["T"] * 4 if layout == "ViT-Rel" else layout.split("-")
    for stage in range(1, 5) if layout != "ViT-Rel" else ():
        side = 64 // 2 ** (stage + 1)
        assert stage_output(model, images, stage).shape[-2:] == (side, side)
        field = effective_receptive_field(model, images, stage)
        assert field.shape == (64, 64) and field.sum().item() == pytest.approx(1.0)
        if kinds[stage - 1] == "C":
            assert all(k.shape[1:] == (3, 3) for k in depthwise_kernels(model, stage))
            with pytest.raises(ValueError, match="S3 and S4"):
                bias_tables(model, stage)
        else:
            tables = bias_tables(model, stage)
            assert all(t.shape[1:] == (2 * side - 1, 2 * side - 1) for t in tables)
            assert all(bias_locality(t).shape == t.shape[:1] for t in tables)
            with pytest.raises(ValueError, match="no MBConv"):
                depthwise_kernels(model, stage)


def test_new_plots_have_labelled_axes_and_one_colour_scale(model):
    images = torch.randn(2, 3, 128, 128)
    fields = {f"S{s}": effective_receptive_field(model, images, s) for s in (1, 2)}
    fig = plot_receptive_fields(fields, title="ERF")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 and all(ax.get_xlabel() == "column (pixel)" for ax in panels)
    assert len({ax.images[0].get_clim() for ax in panels}) == 1
    kernels = depthwise_kernels(model, 1)
    fig = plot_depthwise_kernels(kernels, channels=4)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 5 * len(kernels) and len({ax.images[0].get_clim() for ax in panels}) == 1
    plt.close("all")


def test_attention_locality_without_content_is_the_bias_locality(model):
    _bump_at(model, (0, 0))
    with torch.no_grad():
        layer = attention_layers(model, 3)[0]
        layer.relative_bias_table.copy_(torch.randn_like(layer.relative_bias_table))
    shares = attention_locality(model, torch.randn(2, 3, 128, 128), stage=3)
    assert len(shares) == len(attention_layers(model, 3))
    torch.testing.assert_close(shares[0], bias_locality(bias_tables(model, 3)[0]))


def test_plots_take_labels(model):
    tables = bias_tables(model, 3)
    fig = plot_bias_tables(tables, labels=[f"trained {b}" for b in range(len(tables))])
    panels = fig.subfigs[0].subfigs  # one panel per block, left of the colour bar
    assert [panel.get_suptitle() for panel in panels] == [f"trained {b}" for b in range(len(tables))]
    assert fig.axes[0].get_title() == "head 0"
    fig = plot_depthwise_kernels(depthwise_kernels(model, 2)[:1], channels=2, labels=["S2"])
    assert fig.axes[0].get_title() == "S2, mean |w|"
    plt.close("all")


def test_distance_ratio_of_known_tables():
    """A constant table reaches as far as uniform attention (1); a table falling steeply with the
    offset's length keeps each query on itself (near 0); a gentler slope lies in between."""
    from coatlib.inspection import key_distances, table_distance_ratio, uniform_distance

    H = W = 8
    dy = torch.arange(-(H - 1), H, dtype=torch.float32)[:, None]
    dx = torch.arange(-(W - 1), W, dtype=torch.float32)[None]
    length = (dy**2 + dx**2).sqrt()
    assert table_distance_ratio(torch.full((3, 15, 15), 0.7)).tolist() == pytest.approx([1.0] * 3)
    steep, gentle = table_distance_ratio(torch.stack([-20 * length, -1 * length]))
    assert steep < 1e-6 and 0.1 < gentle < 0.6
    far = table_distance_ratio((5 * length)[None])  # a table that prefers far keys
    assert far > 1.3
    # the uniform value by hand: the mean distance over all (query, key) pairs of the map
    d = key_distances((H, W))
    assert d.shape == (64, 64) and d[0, 9] == pytest.approx(2**0.5) and d[0, 63] == pytest.approx(98**0.5)
    assert uniform_distance((H, W)) == pytest.approx(d.sum().item() / 64**2)
    assert uniform_distance((2, 1)) == pytest.approx(0.5)  # two positions: half the pairs are 1 apart


def test_attention_distance_ratios_measure_every_layer():
    """With the content zeroed the actual attention is the table's; a steep table in one layer
    makes that layer, and only that one, local."""
    from coatlib.inspection import attention_distance_ratios, relative_attention_layers, table_distance_ratio

    torch.manual_seed(0)
    model = coatlib.create_model("coatnet_pico", num_classes=4, image_size=64)
    layers = relative_attention_layers(model)
    assert [name for name, _ in layers] == ["S3.0", "S3.1", "S4.0"]
    with torch.no_grad():
        for _, layer in layers:
            layer.qkv.weight.zero_()
            layer.qkv.bias.zero_()
        first = layers[0][1]
        dy = torch.arange(-3, 4, dtype=torch.float32)[:, None]
        first.relative_bias_table.copy_(-20 * (dy**2 + dy.T**2).sqrt())
    ratios = attention_distance_ratios(model, torch.randn(5, 3, 64, 64), batch_size=2)
    assert ratios[0].max() < 1e-6
    for (_, layer), ratio in zip(layers, ratios):
        torch.testing.assert_close(ratio, table_distance_ratio(layer.relative_bias_table.detach()))
    vit = coatlib.create_model("coatnet_pico_vitrel", num_classes=4, image_size=64)
    assert [name for name, _ in relative_attention_layers(vit)][:2] == ["S1-S4.0", "S1-S4.1"]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m, x: bias_tables(m, 0), "stage must be an int from 1 to 4 .*got 0"),
        (lambda m, x: bias_tables(m, -1), "stage must be an int from 1 to 4 .*got -1"),
        (lambda m, x: bias_tables(m, 5), "from 1 to 4"),
        (lambda m, x: attention_locality(m, x, -2), "from 1 to 4"),
        (lambda m, x: depthwise_kernels(m, 0), "from 1 to 4"),
        (lambda m, x: stage_output(m, x, -1), "stage must be an int from 0 to 4 \\(0 \\(the stem\\) to S1 to S4"),
        (lambda m, x: stage_output(m, x, 5), "from 0 to 4"),
        (lambda m, x: effective_receptive_field(m, x, -1), "from 0 to 4"),
        (lambda m, x: attention_maps(m, x[0], 3, (0, 0), block=2), "block must be an int from 0 to 1 \\(S3 has 2"),
        (lambda m, x: attention_maps(m, x[0], 3, (0, 0), block=-3), "block must be an int from 0 to 1 .*-2 the first"),
        (lambda m, x: attention_maps(m, x[0], 4, (0, 0), block=1.0), "block must be an int from 0 to 0"),
    ],
)
def test_stage_and_block_numbers_are_checked_not_wrapped_around(call, match):
    """bias_tables(m, 0) once returned S4's tables and stage_output(m, x, -1) S3's map (Python's negative
    indexing): every stage and block number is now checked, with the valid range in the error."""
    torch.manual_seed(0)
    m = coatlib.create_model("coatnet_pico", num_classes=2, image_size=64).eval()
    with pytest.raises(ValueError, match=match):
        call(m, torch.randn(1, 3, 64, 64))
