"""coatlib.inspection on randomly initialised models: bias tables, attention maps, and their plots."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import coatlib  # noqa: E402
from coatlib.inspection import attention_layers, attention_maps, bias_tables, plot_attention, plot_bias_tables  # noqa: E402


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
