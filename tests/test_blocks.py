"""The blocks against the paper's equations, each reference written out with torch.nn.functional
from the block's parameters (not by calling the block's own sub-modules)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from coatlib.blocks import FusedMBConv, InvertedResidual, MBConv, TransformerBlock
from coatlib.layers import SqueezeExcite


def randomize_(module: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, then eval mode."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
            if isinstance(m, (nn.LayerNorm,)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
    return module.eval()


def bn(x, m):
    return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


def conv(x, m, groups=1):
    return F.conv2d(x, m.weight, m.bias, m.stride, m.padding, groups=m.groups)


def ln_channels(x, m):
    return F.layer_norm(x.permute(0, 2, 3, 1), m.normalized_shape, m.weight, m.bias, m.eps).permute(0, 3, 1, 2)


def pool2(x, kind):
    return F.max_pool2d(x, 2) if kind == "max" else F.avg_pool2d(x, 2)


# ---- Eq. 5: CoAtNet's MBConv ---------------------------------------------------------------


def eq5(block: MBConv, x: torch.Tensor, stride: int, pool: str) -> torch.Tensor:
    """x <- Proj(Pool(x)) + Conv1x1(SE(DepthConv(Conv1x1(BN(x), stride))))."""
    shortcut = x
    if stride == 2:
        shortcut = pool2(shortcut, pool)
    if shortcut.shape[1] != block.project.out_channels:
        shortcut = conv(shortcut, block.shortcut.proj)
    h = bn(x, block.norm)
    h = F.gelu(bn(conv(h, block.expand[0]), block.expand[1]))
    h = F.gelu(bn(conv(h, block.dw[0]), block.dw[1]))
    s = h.mean((2, 3), keepdim=True)
    s = torch.sigmoid(conv(F.gelu(conv(s, block.se.fc1)), block.se.fc2))
    h = conv(h * s, block.project)
    return shortcut + h


@pytest.mark.parametrize("downsample", ["conv", "dw"])
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_mbconv_is_eq5(downsample, pool):
    block = randomize_(MBConv(16, 32, stride=2, downsample=downsample, pool=pool))
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), eq5(block, x, 2, pool), atol=1e-5, rtol=1e-5)
    strided = block.expand[0] if downsample == "conv" else block.dw[0]
    assert strided.stride == (2, 2)


def test_mbconv_widths_follow_the_paper():
    block = MBConv(96, 192, stride=2)
    assert block.expand[0].out_channels == 4 * 192 and block.se.fc1.out_channels == 192 // 4
    same = randomize_(MBConv(32, 32))
    assert not list(same.shortcut.parameters()) and isinstance(same.shortcut.pool, nn.Identity)  # identity shortcut
    x = torch.randn(1, 32, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(same(x), eq5(same, x, 1, "max"), atol=1e-5, rtol=1e-5)


def test_mbconv_se_activation_option():
    block = MBConv(8, 8, se_act_layer=nn.SiLU)
    assert isinstance(block.se.act, nn.SiLU) and isinstance(block.expand[2], nn.GELU)


def test_mbconv_rejects_unknown_downsample():
    with pytest.raises(ValueError, match="downsample must be 'conv'"):
        MBConv(8, 16, stride=2, downsample="pool")


# ---- Eq. 4: the Transformer block ------------------------------------------------------------


def eq4(block: TransformerBlock, x: torch.Tensor, stride: int, pool: str, norm_then_pool: bool = True, scales=None):
    """x <- Proj(Pool(x)) + Attention(Pool(LN(x))); x <- x + FFN(LN(x)), attention written out;
    with ``scales = (g1, g2)`` each branch is multiplied per channel (layer scale, timm's rw-3)."""
    g1, g2 = (s.view(1, -1, 1, 1) for s in scales) if scales is not None else (1.0, 1.0)
    attn = block.attn
    shortcut = pool2(x, pool) if stride == 2 else x
    if shortcut.shape[1] != block.norm2.normalized_shape[0]:
        shortcut = conv(shortcut, block.shortcut.proj)
    if norm_then_pool:
        h = ln_channels(x, block.norm1)
        h = pool2(h, pool) if stride == 2 else h
    else:
        h = pool2(x, pool) if stride == 2 else x
        h = ln_channels(h, block.norm1)
    B, C, H, W = h.shape
    tokens = h.flatten(2).transpose(1, 2)  # (B, N, C)
    qkv = F.linear(tokens, attn.qkv.weight, attn.qkv.bias).view(B, H * W, 3, attn.num_heads, attn.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, heads, N, d)
    # the bias of offset (dy, dx) = pos(i) - pos(j), read from the (heads, 2H-1, 2W-1) table
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    dy = ys.flatten()[:, None] - ys.flatten()[None, :]
    dx = xs.flatten()[:, None] - xs.flatten()[None, :]
    w = attn.relative_bias_table[:, dy + H - 1, dx + W - 1]  # (heads, N, N)
    a = (q @ k.transpose(-1, -2)) / attn.head_dim**0.5 + w
    out = (a.softmax(-1) @ v).transpose(1, 2).reshape(B, H * W, -1)
    out = F.linear(out, attn.proj.weight, attn.proj.bias).transpose(1, 2).reshape(B, -1, H, W)
    x = shortcut + g1 * out
    h = ln_channels(x, block.norm2)
    h = h.permute(0, 2, 3, 1)  # the FFN acts on every position's channels
    h = F.linear(
        F.gelu(F.linear(h, block.ffn.fc1.weight, block.ffn.fc1.bias)), block.ffn.fc2.weight, block.ffn.fc2.bias
    )
    h = h.permute(0, 3, 1, 2)
    return x + g2 * h


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_transformer_block_is_eq4(pool):
    torch.manual_seed(0)
    block = randomize_(TransformerBlock(16, 32, map_size=(4, 4), stride=2, head_dim=8, pool=pool))
    with torch.no_grad():
        block.attn.relative_bias_table.normal_(0, 1.0)  # large enough that an index error shows
    x = torch.randn(2, 16, 8, 8) * 2 + 1
    with torch.no_grad():
        out = block(x)
        torch.testing.assert_close(out, eq4(block, x, 2, pool), atol=1e-5, rtol=1e-5)
        if pool == "max":  # LN then pool, as Eq. 4 says; pooling first gives another function
            assert (out - eq4(block, x, 2, pool, norm_then_pool=False)).abs().max() > 1e-2


def test_transformer_block_without_downsampling_is_eq4():
    block = randomize_(TransformerBlock(16, 16, map_size=(5, 3), head_dim=4))
    x = torch.randn(2, 16, 5, 3)
    with torch.no_grad():
        torch.testing.assert_close(block(x), eq4(block, x, 1, "max"), atol=1e-5, rtol=1e-5)


def test_transformer_block_with_layer_scale_scales_both_branches():
    torch.manual_seed(0)
    block = randomize_(TransformerBlock(16, 32, map_size=(4, 4), stride=2, head_dim=8, layer_scale=1e-6))
    assert torch.equal(block.ls1.gamma, torch.full((32,), 1e-6))  # starts almost switched off
    with torch.no_grad():
        block.ls1.gamma.uniform_(0.5, 1.5)
        block.ls2.gamma.uniform_(-1.0, 1.0)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        expected = eq4(block, x, 2, "max", scales=(block.ls1.gamma, block.ls2.gamma))
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


# ---- the zoo's inverted residuals --------------------------------------------------------------


def test_inverted_residual_is_post_norm_with_identity_shortcut_only_when_shapes_match():
    same = randomize_(InvertedResidual(16, 16, 64, act_layer=nn.ReLU6))
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        h = F.relu6(bn(conv(x, same.expand[0]), same.expand[1]))
        h = F.relu6(bn(conv(h, same.dw[0]), same.dw[1]))
        h = bn(conv(h, same.project[0]), same.project[1])  # linear bottleneck: no activation
        torch.testing.assert_close(same(x), x + h, atol=1e-5, rtol=1e-5)
    down = InvertedResidual(16, 24, 64, stride=2)
    assert same.has_residual and not down.has_residual and down.dw[0].stride == (2, 2)
    assert down(torch.randn(1, 16, 8, 8)).shape == (1, 24, 4, 4)


def test_fused_mbconv_replaces_expand_and_depthwise_by_one_conv():
    block = randomize_(FusedMBConv(16, 16, 64))
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        h = F.silu(bn(conv(x, block.expand[0]), block.expand[1]))
        h = bn(conv(h, block.project[0]), block.project[1])
        torch.testing.assert_close(block(x), x + h, atol=1e-5, rtol=1e-5)
    assert block.expand[0].kernel_size == (3, 3) and block.expand[0].groups == 1
    ratio1 = FusedMBConv(16, 24, 16, stride=2)
    assert isinstance(ratio1.project, nn.Identity) and ratio1(torch.randn(1, 16, 8, 8)).shape == (1, 24, 4, 4)


def test_fused_mbconv_with_ratio_1_is_one_conv_bn_silu():
    """EfficientNetV2's first stage: expansion 1, the k x k conv (with its BN and SiLU) is the whole branch."""
    block = randomize_(FusedMBConv(16, 16, 16))
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x + F.silu(bn(conv(x, block.expand[0]), block.expand[1])))
    down = FusedMBConv(16, 16, 64, stride=2)  # same width, but the size changes: no shortcut
    assert not down.has_residual and down.expand[0].stride == (2, 2) and down(x).shape == (2, 16, 4, 4)
    assert down.project[0].kernel_size == (1, 1) and isinstance(down.project[1], nn.BatchNorm2d)


def test_inverted_residual_with_mobilenet_v3_squeeze_excitation():
    """MobileNetV3's block: 1x1 expand, 5x5 depthwise, SE (ReLU, hard-sigmoid) and hard-swish elsewhere."""
    block = randomize_(
        InvertedResidual(16, 16, 64, kernel_size=5, se_chs=16, act_layer=nn.Hardswish, se_act_layer=nn.ReLU,
                         se_gate_layer=nn.Hardsigmoid)
    )  # fmt: skip
    assert block.expand[0].kernel_size == (1, 1) and block.project[0].kernel_size == (1, 1)
    assert block.dw[0].kernel_size == (5, 5) and block.dw[0].groups == 64
    x = torch.randn(2, 16, 8, 8) * 4
    with torch.no_grad():
        h = F.hardswish(bn(conv(x, block.expand[0]), block.expand[1]))
        h = F.hardswish(bn(conv(h, block.dw[0]), block.dw[1]))
        s = F.hardsigmoid(conv(F.relu(conv(h.mean((2, 3), keepdim=True), block.se.fc1)), block.se.fc2))
        h = bn(conv(h * s, block.project[0]), block.project[1])
        torch.testing.assert_close(block(x), x + h, atol=1e-5, rtol=1e-5)
    assert isinstance(InvertedResidual(8, 8, 8, se_chs=1).se, SqueezeExcite)  # one SE channel is still an SE
