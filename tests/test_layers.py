"""Shared blocks: depthwise conv (Eq. 1), MBConv's two down-sampling modes, SE, DropPath, FLOPs."""
import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import coatlib
from coatlib.layers import (
    GELU, ConvNormAct, DepthwiseConv, DropPath, MBConv, SqueezeExcite, fold_batchnorm, fold_batchnorms,
)
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


# --- the inference fast paths: BatchNorm folding, the cache, in-place GELU -------------------


def calibrated(module: nn.Module, *shape: int) -> nn.Module:
    """Random affine parameters and running statistics measured on a batch, then eval mode:
    every BatchNorm is a non-trivial affine map."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.momentum = None
    module.train()(torch.randn(*shape) * 3 + 1)
    return module.eval()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3, stride=2),
        dict(kernel_size=3, groups=8),  # depthwise
        dict(kernel_size=1, act_layer=None),
        dict(kernel_size=3, bias=True, norm_layer=lambda c: nn.BatchNorm2d(c, eps=1e-3)),
    ],
)
def test_conv_norm_act_folded_equals_plain_path(kwargs):
    block = calibrated(ConvNormAct(8, 8, **kwargs), 4, 8, 10, 10)
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        folded = block(x)
        block.fold_bn = False
        plain = block(x)
    torch.testing.assert_close(folded, plain, atol=1e-5, rtol=1e-5)
    assert not torch.equal(folded, plain)  # the fast path ran: other arithmetic, other rounding


@pytest.mark.parametrize("stride_on", ["expand", "dw"])
def test_mbconv_folds_its_pre_norm_into_the_expand_conv(stride_on):
    block = calibrated(MBConv(16, 32, 64, stride=2, se_chs=8, stride_on=stride_on), 4, 16, 8, 8)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        folded = block(x)
        fold_batchnorms(block, False)
        plain = block(x)
    torch.testing.assert_close(folded, plain, atol=1e-5, rtol=1e-5)
    assert fold_batchnorm(block.expand[0], block.expand[1], block.norm)[0].shape == (64, 16, 1, 1)


def test_batchnorm_in_training_mode_is_not_folded():
    """A BatchNorm in training mode normalises with the batch's statistics: it is not folded."""
    block = ConvNormAct(4, 4, act_layer=None).train()
    with torch.no_grad():
        out = block(torch.randn(3, 4, 6, 6) + 5)
    torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    assert block._folded._value is None


def test_folded_weights_are_cached_and_follow_every_change():
    block = calibrated(ConvNormAct(4, 6, 3), 4, 4, 8, 8)
    x = torch.randn(2, 4, 8, 8)

    def plain() -> torch.Tensor:
        with torch.no_grad():
            return F.relu(block[1](block[0](x)))

    with torch.no_grad():
        block(x)
        first = block._folded._value
        block(x)
        assert block._folded._value is first  # reused, not recomputed
    opt = torch.optim.SGD(block.parameters(), lr=0.5)
    block.train()
    block(torch.randn(2, 4, 8, 8) * 2).sum().backward()  # new running statistics and gradients
    opt.step()
    block.eval()
    with torch.no_grad():
        torch.testing.assert_close(block(x), plain(), atol=1e-4, rtol=1e-4)
        block.load_state_dict({k: v * 0.5 if v.is_floating_point() else v for k, v in block.state_dict().items()})
        torch.testing.assert_close(block(x), plain(), atol=1e-4, rtol=1e-4)
    block[0].weight = nn.Parameter(torch.randn_like(block[0].weight))  # a new tensor, not an update
    with torch.no_grad():
        torch.testing.assert_close(block(x), plain(), atol=1e-4, rtol=1e-4)


def test_folded_path_passes_gradients_in_eval_mode():
    """With gradients on (eval-mode fine-tuning, saliency maps) nothing is cached and the
    folded weights stay differentiable: the gradients equal the plain path's."""
    block = calibrated(ConvNormAct(4, 4, 3), 4, 4, 6, 6)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    grads = []
    for fold in (True, False):
        block.fold_bn = fold
        block(x).square().sum().backward()
        grads.append((x.grad.clone(), block[0].weight.grad.clone(), block[1].weight.grad.clone()))
        block.zero_grad(), x.grad.zero_()
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert block._folded._value is None


def test_coatnet_folded_equals_plain_path():
    model = calibrated(coatlib.create_model("coatnet_pico", num_classes=10, image_size=64), 4, 3, 64, 64)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        folded = model(x)
        plain = fold_batchnorms(model, False)(x)
    torch.testing.assert_close(folded, plain, atol=1e-5, rtol=1e-5)


def test_gelu_works_in_place_without_gradients_and_out_of_place_with():
    x = torch.randn(100)
    expected = F.gelu(x)
    with torch.no_grad():
        y = x.clone()
        out = GELU()(y)
    assert out is y and torch.equal(out, expected)
    x.requires_grad_(True)
    out = GELU()(x)
    out.sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    F.gelu(x2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(x.detach(), x2.detach())  # the input is left as it was


def test_best_time_is_the_fastest_of_the_timed_calls():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.02 if len(calls) == 2 else 0.001)  # the first timed call is slow

    seconds = coatlib.flops.best_time(fn, repeats=3, warmup=1)
    assert len(calls) == 4
    assert 0.001 <= seconds < 0.02
