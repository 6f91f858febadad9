"""Shared layers: depthwise conv (Eq. 1), SE, DropPath, FLOPs, timing."""

import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import coatlib
from coatlib.layers import DepthwiseConv, DropPath, SqueezeExcite, check_image_size


def test_depthwise_conv_is_eq1_weighted_sum_over_neighbourhood():
    torch.manual_seed(0)
    conv = DepthwiseConv(4, kernel_size=3)
    x = torch.randn(2, 4, 6, 7)
    patches = F.unfold(x, 3, padding=1).view(2, 4, 9, 6 * 7)  # x_j for j in L(i)
    eq1 = (patches * conv.weight.view(1, 4, 9, 1)).sum(2).view(2, 4, 6, 7)
    assert torch.allclose(conv(x), eq1, atol=1e-6)
    assert conv.weight.shape == (4, 1, 3, 3)


def test_depthwise_conv_is_translation_equivariant():
    torch.manual_seed(0)
    conv = DepthwiseConv(3)
    x = torch.zeros(1, 3, 12, 12)
    x[..., 3:6, 3:6] = torch.randn(1, 3, 3, 3)
    shifted = torch.roll(x, shifts=(2, 4), dims=(2, 3))
    assert torch.allclose(conv(shifted), torch.roll(conv(x), shifts=(2, 4), dims=(2, 3)), atol=1e-6)


def test_squeeze_excite_scales_channels_by_a_global_gate():
    se = SqueezeExcite(8, 2)
    x = torch.randn(2, 8, 5, 5)
    gate = se(x) / x
    assert torch.allclose(gate, gate[..., :1, :1].expand_as(gate), atol=1e-5)  # one weight per channel
    assert ((gate > 0) & (gate < 1)).all()


def test_drop_path():
    dp = DropPath(0.5).train()
    x = torch.ones(1000, 3)
    y = dp(x)
    kept = (y[:, 0] != 0).float().mean()
    assert 0.4 < kept < 0.6 and torch.allclose(y[y != 0], torch.tensor(2.0))
    assert torch.equal(dp.eval()(x), x)


def test_count_flops_counts_macs():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert coatlib.count_flops(conv, 16) == 16 * 16 * 8 * 3 * 9


def test_summary_reports_parameters():
    model = coatlib.create_model("coatnet_pico", image_size=64)
    stats = coatlib.summary(model, 64)
    assert stats.total_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "size,nearest", [(230, "height 224 or 256"), (20, "height 32, width 32"), ((224, 100), "width 96 or 128")]
)
def test_image_size_error_names_the_nearest_valid_sizes(size, nearest):
    with pytest.raises(ValueError, match=nearest):
        check_image_size(size, multiple=32)


def test_best_time_is_the_fastest_of_the_timed_calls():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.02 if len(calls) == 2 else 0.001)  # the first timed call is slow

    seconds = coatlib.flops.best_time(fn, repeats=3, warmup=1)
    assert len(calls) == 4
    assert 0.001 <= seconds < 0.02
