"""Shared blocks: depthwise conv (Eq. 1), MBConv's two down-sampling modes, SE, DropPath, FLOPs."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import coatlib
from coatlib.layers import DepthwiseConv, DropPath, MBConv, SqueezeExcite
from coatlib.models.coatnet import TransformerBlock


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


@pytest.mark.parametrize("stride_on", ["expand", "dw"])
def test_mbconv_downsampling_modes(stride_on):
    block = MBConv(16, 32, mid_chs=128, stride=2, se_chs=8, stride_on=stride_on)
    assert block(torch.randn(2, 16, 8, 8)).shape == (2, 32, 4, 4)
    strided = block.expand[0] if stride_on == "expand" else block.dw[0]
    assert strided.stride == (2, 2)
    assert isinstance(block.shortcut[0], nn.MaxPool2d)  # Proj(Pool(x))
    assert block.shortcut[1].kernel_size == (1, 1)


def test_mbconv_post_norm_form_has_identity_shortcut_only_when_shapes_match():
    same = MBConv(16, 16, mid_chs=64, pre_norm=False, stride_on="dw", act_layer=nn.ReLU6)
    down = MBConv(16, 24, mid_chs=64, stride=2, pre_norm=False, stride_on="dw")
    assert same.has_shortcut and not down.has_shortcut
    assert isinstance(same.project[1], nn.BatchNorm2d)
    assert down(torch.randn(1, 16, 8, 8)).shape == (1, 24, 4, 4)


def test_mbconv_without_expansion_requires_stride_on_dw():
    with pytest.raises(ValueError, match="stride on the depthwise conv"):
        MBConv(16, 16, mid_chs=16, stride=2, stride_on="expand")


def test_squeeze_excite_scales_channels_by_a_global_gate():
    se = SqueezeExcite(8, 2)
    x = torch.randn(2, 8, 5, 5)
    gate = se(x) / x
    assert torch.allclose(gate, gate[..., :1, :1].expand_as(gate), atol=1e-5)  # one weight per channel
    assert ((gate > 0) & (gate < 1)).all()


def test_transformer_block_downsamples_both_branches():
    block = TransformerBlock(16, 32, map_size=(4, 4), stride=2, head_dim=8)
    assert block(torch.randn(2, 8, 8, 16)).shape == (2, 4, 4, 32)


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
