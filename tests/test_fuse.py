"""coatlib.fuse: the explicit inference step, and a plain model that holds no hidden state."""

import copy
from unittest import mock

import pytest
import torch
import torch.nn as nn

import coatlib
from coatlib.attention import RelativeAttention, expand_bias_table
from coatlib.blocks import MBConv
from coatlib.fuse import fold_batchnorm
from coatlib.layers import ConvNormAct


def calibrated(module: nn.Module, *shape: int) -> nn.Module:
    """Random affine parameters and running statistics measured on a batch, then eval mode."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.momentum = None
            if isinstance(m, RelativeAttention):
                m.relative_bias_table.normal_(0, 0.5)
    module.train()(torch.randn(*shape) * 3 + 1)
    return module.eval()


def count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3, stride=2),
        dict(kernel_size=3, groups=8),  # depthwise
        dict(kernel_size=1, act_layer=None),
        dict(kernel_size=3, bias=True, norm_layer=lambda c: nn.BatchNorm2d(c, eps=1e-3)),
    ],
)
def test_fused_conv_norm_act_equals_plain(kwargs):
    block = calibrated(ConvNormAct(8, 8, **kwargs), 4, 8, 10, 10)
    fused = coatlib.fuse(block)
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), block(x), atol=1e-5, rtol=1e-5)
    assert count(fused, nn.BatchNorm2d) == 0 and count(block, nn.BatchNorm2d) == 1


@pytest.mark.parametrize("downsample", ["conv", "dw"])
def test_mbconv_pre_norm_folds_into_the_expand_conv(downsample):
    block = calibrated(MBConv(16, 32, stride=2, downsample=downsample), 4, 16, 8, 8)
    fused = coatlib.fuse(block)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), block(x), atol=1e-5, rtol=1e-5)
    assert count(fused, nn.BatchNorm2d) == 0 and isinstance(fused.norm, nn.Identity)


def test_a_batchnorm_before_a_kxk_conv_is_not_folded():
    with pytest.raises(ValueError, match="only into a 1x1 conv"):
        fold_batchnorm(nn.Conv2d(4, 4, 3, padding=1), before=nn.BatchNorm2d(4).eval())


@pytest.mark.parametrize("softmax", ["pre", "post"])
def test_fused_coatnet_equals_plain_runs_no_batchnorm_and_stores_the_bias(softmax):
    model = calibrated(
        coatlib.create_model("coatnet_pico", num_classes=10, image_size=128, softmax=softmax), 4, 3, 128, 128
    )
    fused = coatlib.fuse(model)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-5, rtol=1e-5)
    assert count(fused, nn.BatchNorm2d) == 0 and count(model, nn.BatchNorm2d) == 7
    attn = [m for m in fused.modules() if isinstance(m, RelativeAttention)]
    assert attn and all(m.materialised_bias is not None for m in attn)
    assert all("relative_bias_table" not in dict(m.named_parameters()) for m in attn)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_v2_s", "swin_t", "convnext_tiny"])
def test_fused_zoo_models_equal_plain(name):
    size = 112 if name == "swin_t" else 64
    model = calibrated(coatlib.create_model(name, num_classes=10), 2, 3, size, size)
    fused = coatlib.fuse(model)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        scale = max(1.0, expected.abs().max().item())
        # float rounding grows with depth (efficientnet_v2_s: ~1.3e-4 of the logits' size)
        torch.testing.assert_close(fused(x), expected, atol=5e-4 * scale, rtol=0)
    assert count(fused, nn.BatchNorm2d) == 0


def test_fuse_returns_a_copy_that_refuses_to_train():
    model = coatlib.create_model("coatnet_pico", num_classes=4, image_size=64).train()
    fused = coatlib.fuse(model)
    assert model.training and count(model, nn.BatchNorm2d) == 7  # the original is untouched
    assert not fused.training and not any(p.requires_grad for p in fused.parameters())
    with pytest.raises(RuntimeError, match="prepared for inference by coatlib.fuse.*train the original model"):
        fused.train()
    fused.eval()  # still allowed
    assert not copy.deepcopy(fused).training


# ---- the plain model holds no hidden state --------------------------------------------------------


@pytest.mark.parametrize("opt", ["fused", "foreach", "for-loop"])
def test_no_optimizer_can_leave_a_stale_eval_result(opt):
    """Train a step (fused AdamW does not bump version counters), then eval: the output equals a
    freshly built model loaded with the same weights."""
    torch.manual_seed(0)
    model = coatlib.create_model("coatnet_pico", num_classes=4, image_size=64)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        model.eval()(x)  # an eval call before the step, as a validation loop would make
    kwargs = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for-loop": dict(foreach=False)}[opt]
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, **kwargs)
    model.train()(x).logsumexp(1).mean().backward()
    optimizer.step()
    fresh = coatlib.create_model("coatnet_pico", num_classes=4, image_size=64)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), fresh.eval()(x), atol=1e-6, rtol=1e-6)


def test_writes_through_data_and_load_state_dict_are_seen_at_once():
    torch.manual_seed(0)
    model = coatlib.create_model("coatnet_pico", num_classes=4, image_size=64).eval()
    x = torch.randn(2, 3, 64, 64)

    def same_as_fresh_copy() -> None:
        fresh = coatlib.create_model("coatnet_pico", num_classes=4, image_size=64).eval()
        fresh.load_state_dict(model.state_dict())
        torch.testing.assert_close(model(x), fresh(x), atol=0, rtol=0)

    with torch.no_grad():
        before = model(x)
        table = model.stages[3].blocks[0].attn.relative_bias_table
        table.data += 10 * torch.randn_like(table)  # bypasses the version counter
        assert not torch.equal(model(x), before)
        same_as_fresh_copy()
        model.load_state_dict({k: v * 0.5 if v.is_floating_point() else v for k, v in model.state_dict().items()})
        same_as_fresh_copy()


def test_forward_hooks_fire_on_every_parameterised_module_in_eval():
    model = coatlib.create_model("coatnet_pico", num_classes=4, image_size=64).eval()
    fired = set()
    for name, m in model.named_modules():
        if any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False)):
            m.register_forward_hook(lambda mod, inp, out, name=name: fired.add(name))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    expected = {n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    assert expected and expected <= fired


def test_a_hook_keeps_the_tensor_it_saw():
    """No block writes into a tensor that a sub-module returned (no in-place activation or residual)."""
    model = coatlib.create_model("coatnet_pico", num_classes=4, image_size=64).eval()
    kept = {}
    for name, m in model.named_modules():
        m.register_forward_hook(lambda mod, inp, out, name=name: kept.__setitem__(name, (out, out.clone())))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    changed = [n for n, (out, copy_) in kept.items() if not torch.equal(out, copy_)]
    assert not changed, changed


def test_fused_gelu_works_in_place_and_equals_plain():
    """fuse makes every GELU write into its input (no new map); the output is F.gelu's, exactly."""
    from coatlib.fuse import InplaceGELU

    model = coatlib.create_model("coatnet_pico", num_classes=4, image_size=64).eval()
    fused = coatlib.fuse(model)
    gelus = [m for m in fused.modules() if isinstance(m, nn.GELU)]
    assert gelus and all(type(m) is InplaceGELU for m in gelus)
    assert all(type(m) is nn.GELU for m in model.modules() if isinstance(m, nn.GELU))  # the original keeps its own
    x = torch.randn(1000)
    expected = torch.nn.functional.gelu(x)
    out = gelus[0](x)
    assert out.data_ptr() == x.data_ptr() and torch.equal(out, expected)


# ---- every registered model -----------------------------------------------------------------------

# Over 100M parameters: building, calibrating and running each takes 5-60 s on two cores, so they are left
# out, except timm's coatnet_3_rw (the only layer-scale model), run at 64 x 64.
BIG = {
    "coatnet_3",
    "coatnet_4",
    "coatnet_5",
    "coatnet_6",
    "coatnet_7",
    "convnext_large",
    "efficientnet_v2_l",
    "vit_l_16",
}


def mildly_calibrated(model: nn.Module, size: int) -> nn.Module:
    """Running statistics measured on two images, BatchNorm affine near identity and bias tables of
    std 0.5 (``calibrated``'s wide affine makes the deepest models chaotic in float32), then eval mode."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.9, 1.1)
                m.bias.normal_(0, 0.1)
                m.momentum = None
            if isinstance(m, RelativeAttention):
                m.relative_bias_table.normal_(0, 0.5)
        model.train()(torch.randn(2, 3, size, size))
    return model.eval()


@pytest.mark.parametrize("name", [n for n in coatlib.list_models() if n not in BIG])
def test_every_registered_model_fuses_and_gathers_no_bias_table(name):
    size = 64 if name == "coatnet_3_rw" else 224
    model = mildly_calibrated(
        coatlib.create_model(name, image_size=size) if "coatnet" in name else coatlib.create_model(name), size
    )
    x = torch.randn(1, 3, size, size)
    fused = coatlib.fuse(model)
    with torch.no_grad(), mock.patch("coatlib.attention.expand_bias_table", wraps=expand_bias_table) as gathers:
        expected = model(x)
        plain_gathers = gathers.call_count
        got = fused(x)
    torch.testing.assert_close(got, expected, atol=1e-3 * expected.abs().max().item(), rtol=0)
    relative = count(model, RelativeAttention)
    assert plain_gathers == relative and gathers.call_count == relative  # the fused forward gathered nothing
    assert all(m.materialised_bias is not None for m in fused.modules() if isinstance(m, RelativeAttention))
    assert not any(n.endswith("relative_bias_table") for n, _ in fused.named_parameters())
    assert count(fused, nn.BatchNorm2d) < count(model, nn.BatchNorm2d) or count(model, nn.BatchNorm2d) == 0
    if "_rw" not in name:  # timm's rw blocks keep the BatchNorms after an activation or an early SE
        assert count(fused, nn.BatchNorm2d) == 0


@pytest.mark.parametrize(
    "name,kept",
    [
        # down="pool": the pool between the pre-norm and the 1x1 conv keeps the first BN of S1 and S2
        ("coatnet_nano_rw", 2),
        # SiLU after every pre-norm, and SE between every depthwise conv and its BN: 2 BNs per MBConv (2 + 3)
        ("coatnet_0_rw", 10),
    ],
)
def test_fused_rw_models_fold_what_timms_blocks_allow(name, kept):
    model = mildly_calibrated(coatlib.create_model(name, num_classes=5, image_size=64), 64)
    fused = coatlib.fuse(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=1e-4)
    assert count(fused, nn.BatchNorm2d) == kept
    attn = [m for m in fused.modules() if isinstance(m, RelativeAttention)]
    assert attn and all(m.materialised_bias is not None for m in attn)


def test_a_fused_model_refuses_to_resize_its_bias():
    fused = coatlib.fuse(coatlib.create_model("coatnet_pico", image_size=64))
    with pytest.raises(RuntimeError, match="bias is fixed: resize the original model, then fuse it again"):
        fused.set_image_size(128)
