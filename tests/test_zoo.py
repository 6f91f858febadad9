"""The model zoo: parameter counts, shapes, sizes, errors, shared blocks, Swin's windows, torch.compile."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn as nn

import coatlib
from coatlib.attention import MultiHeadAttention, RelativeAttention, resize_table
from coatlib.blocks import FusedMBConv, InvertedResidual
from coatlib.layers import DepthwiseConv, DropPath, Mlp
from coatlib.models.convnext import ConvNeXt, ConvNeXtConfig
from coatlib.models.efficientnet import EfficientNet, EfficientNetConfig, StageRow
from coatlib.models.mobilenet import Bneck, MobileNetV3, MobileNetV3Config, PooledConvNet
from coatlib.models.resnet import ResNet, ResNetConfig
from coatlib.models.swin import MASKED, SwinConfig, SwinTransformer, WindowAttention, shift_mask
from coatlib.models.vit import EncoderBlock, VisionTransformer, ViTConfig

# ../shared/REFERENCE.md section 2: torchvision 0.28.0 / timm 1.0.31, num_classes=1000
REFERENCE_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
    "mobilenet_v1": 4_231_976, "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large": 5_483_032, "mobilenet_v3_small": 2_542_856,
    "efficientnet_b0": 5_288_548, "efficientnet_b1": 7_794_184, "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232, "efficientnet_b4": 19_341_616, "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704, "efficientnet_b7": 66_347_960,
    "efficientnet_v2_s": 21_458_488, "efficientnet_v2_m": 54_139_356, "efficientnet_v2_l": 118_515_272,
    "vit_ti_16": 5_717_416, "vit_s_16": 22_050_664, "vit_b_16": 86_567_656, "vit_l_16": 304_326_632,
    "swin_t": 28_288_354, "swin_s": 49_606_258, "swin_b": 87_768_224,
    "convnext_tiny": 28_589_128, "convnext_small": 50_223_688,
    "convnext_base": 88_591_464, "convnext_large": 197_767_336,
}  # fmt: skip

# the smallest model of each family, built at 32x32 where the architecture allows it
SMALL = ["resnet18", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
         "efficientnet_v2_s", "vit_ti_16", "swin_t", "convnext_tiny"]  # fmt: skip


def build_meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return coatlib.create_model(name, **kwargs)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_reference_name_is_registered():
    assert set(REFERENCE_PARAMS) <= set(coatlib.list_models())


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_parameter_count_equals_reference(name):
    assert n_params(build_meta(name)) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize(
    "name, gmacs",
    [
        ("resnet50", 4.09),  # REFERENCE.md section 2
        ("mobilenet_v2", 0.30),
        ("efficientnet_b0", 0.39),
        ("swin_t", 4.49),
        ("convnext_tiny", 4.46),
        # DeiT Table 1: 1.3G / 4.6G / 17.6G. (REFERENCE.md's 11.27G for torchvision's vit_b_16 misses the
        # 6.3G that its fused nn.MultiheadAttention kernel hides from FlopCounterMode.)
        ("vit_ti_16", 1.25),
        ("vit_s_16", 4.60),
        ("vit_b_16", 17.56),
    ],
)
def test_macs_at_224(name, gmacs):
    assert round(coatlib.count_flops(build_meta(name), 224) / 1e9, 2) == gmacs


@pytest.mark.parametrize("name", SMALL)
def test_forward_backward_small_input(name):
    torch.manual_seed(0)
    model = coatlib.create_model(name, num_classes=7, image_size=32)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 7)
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", SMALL)
def test_device_follows_the_input(name):
    """On the meta device nothing is computed: any tensor a model makes on a fixed device would fail here."""
    model = build_meta(name, num_classes=5, in_chans=1, image_size=64).eval()
    out = model(torch.empty(3, 1, 64, 64, device="meta"))
    assert out.device.type == "meta" and out.shape == (3, 5)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "swin_t"])
def test_any_size_from_32(name):
    """Odd, non-square sizes work (32x32 is covered by the forward/backward test)."""
    model = coatlib.create_model(name, num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 45, 33)).shape == (1, 4)


@pytest.mark.parametrize(
    "name", ["resnet18", "mobilenet_v2", "efficientnet_b0", "convnext_tiny", "swin_t", "vit_ti_16"]
)
def test_clear_errors_on_bad_input(name):
    model = build_meta(name)
    with pytest.raises(ValueError, match="in_chans=1"):
        model(torch.empty(1, 1, 64, 64, device="meta"))
    with pytest.raises(ValueError, match=">= "):
        model(torch.empty(1, 3, 8, 64, device="meta"))
    with pytest.raises(ValueError, match=">= "):
        build_meta(name, image_size=24)


def test_vit_sizes_must_be_patch_multiples():
    with pytest.raises(ValueError, match="multiples of 16"):
        build_meta("vit_ti_16", image_size=40)
    with pytest.raises(ValueError, match="multiples of 16"):
        build_meta("vit_ti_16")(torch.empty(1, 3, 224, 200, device="meta"))


def test_vit_position_embedding_is_interpolated_for_other_sizes():
    """Running a 32-px model on 48-px images equals a 48-px model that loaded its weights
    (the table is resized the same way on the fly and on load)."""
    torch.manual_seed(0)
    small = coatlib.create_model("vit_ti_16", image_size=32).eval()
    large = coatlib.create_model("vit_ti_16", image_size=(48, 64)).eval()
    large.load_state_dict(small.state_dict())
    assert large.pos_embed.shape == (1, 1 + 3 * 4, 192)
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(small(x), large(x))


def test_num_classes_and_in_chans():
    model = coatlib.create_model("resnet18", num_classes=10, in_chans=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "name, rate", [("swin_t", 0.2), ("swin_b", 0.5), ("convnext_tiny", 0.1), ("convnext_large", 0.5), ("vit_b_16", 0.0)]
)
def test_stochastic_depth_defaults_and_override(name, rate):
    """The last block drops with the paper's rate; ``drop_path_rate`` overrides it."""
    ps = [m.p for m in build_meta(name).modules() if isinstance(m, DropPath)]
    assert ps[0] == 0 and max(ps) == pytest.approx(rate)
    ps = [m.p for m in build_meta(name, drop_path_rate=0.3).modules() if isinstance(m, DropPath)]
    assert max(ps) == pytest.approx(0.3)


def test_efficientnet_stochastic_depth_grows_with_depth():
    rates = [m.drop_path.p for m in build_meta("efficientnet_b0").modules() if isinstance(m, InvertedResidual)]
    assert rates == sorted(rates) and rates[0] == 0 and rates[-1] == pytest.approx(0.2 * 15 / 16)


def test_families_share_the_foundation_blocks():
    """MobileNet V2/V3 and EfficientNet are made of the one ``InvertedResidual`` (and EfficientNetV2's
    ``FusedMBConv``); ViT and Swin share the
    encoder block, and Swin's attention is CoAtNet's relative attention applied to windows;
    ConvNeXt's blocks are the shared depthwise conv and Mlp."""
    for name in ["mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_v2_s"]:
        model = build_meta(name)
        assert isinstance(model, PooledConvNet)
        body = list(model.features[1:-1])
        blocks = [b for stage in body for b in stage] if name.startswith("efficientnet") else body
        assert all(isinstance(b, (InvertedResidual, FusedMBConv)) for b in blocks)
        assert any(isinstance(b, InvertedResidual) for b in blocks)
    vit, swin = build_meta("vit_ti_16"), build_meta("swin_t")
    assert all(isinstance(b, EncoderBlock) and type(b.attn) is MultiHeadAttention for b in vit.blocks)
    swin_blocks = [m for m in swin.modules() if isinstance(m, EncoderBlock)]
    assert len(swin_blocks) == 12 and all(isinstance(b.attn, RelativeAttention) for b in swin_blocks)
    convnext = build_meta("convnext_tiny")
    assert sum(isinstance(m, DepthwiseConv) for m in convnext.modules()) == 18
    assert sum(isinstance(m, Mlp) for m in convnext.modules()) == 18


def test_efficientnet_v2_uses_fused_mbconv_early():
    model = build_meta("efficientnet_v2_s")
    first, late = model.features[2][0], model.features[4][0]
    assert isinstance(first, FusedMBConv) and first.expand[0].kernel_size == (3, 3)
    assert isinstance(late, InvertedResidual)
    assert late.dw[0].groups == late.dw[0].in_channels and late.se.fc1.out_channels == 64 // 4


# ------------------------------------------------------------------ Swin's windows


def brute_force_shift_mask(H: int, W: int, window: int, shift: int) -> torch.Tensor:
    """Swin section 3.2 from first principles. The shifted partition of the image has windows
    starting at ``s, s + w, ...`` plus the partial window ``[0, s)``: image position ``q`` lies in
    window ``(q - s) // w`` (-1 for the partial one). After the cyclic shift, position ``p`` of the
    map holds image position ``q = (p + s) mod P``; two tokens of a window may attend iff their
    image positions lie in the same window of the shifted partition."""
    labels = torch.empty(H, W, dtype=torch.long)
    for y in range(H):
        for x in range(W):
            qy, qx = (y + shift) % H, (x + shift) % W
            labels[y, x] = ((qy - shift) // window) * 1000 + (qx - shift) // window
    wins = labels.view(H // window, window, W // window, window).transpose(1, 2).reshape(-1, window * window)
    return (wins[:, :, None] != wins[:, None, :]).float() * MASKED


@pytest.mark.parametrize("H, W, window, shift", [(14, 14, 7, 3), (28, 14, 7, 3), (8, 8, 4, 2), (12, 8, 4, 1)])
def test_shift_mask_matches_first_principles(H, W, window, shift):
    torch.testing.assert_close(shift_mask(H, W, window, (shift, shift)), brute_force_shift_mask(H, W, window, shift))


def test_shift_mask_properties():
    mask = shift_mask(14, 14, 7, (3, 3))
    assert mask.shape == (4, 49, 49)
    assert (mask[0] == 0).all()  # the top-left window holds no wrapped-around tokens
    assert (mask[3] != 0).any() and (mask.diagonal(dim1=1, dim2=2) == 0).all()  # every token sees itself
    assert (shift_mask(14, 14, 7, (0, 0)) == 0).all()


def windowed_reference(attn: WindowAttention, x: torch.Tensor) -> torch.Tensor:
    """W-MSA / SW-MSA written out: roll, cut each window out, attend with bias + mask, put it back."""
    B, H, W, C = x.shape
    w, s = attn.window, attn.shift
    x = torch.roll(x, (-s, -s), (1, 2))
    out = torch.empty_like(x)
    mask = brute_force_shift_mask(H, W, w, s)
    bias = attn.relative_bias()
    for i in range(H // w):
        for j in range(W // w):
            tokens = x[:, i * w : (i + 1) * w, j * w : (j + 1) * w].reshape(B, w * w, C)
            q, k, v = attn.qkv_heads(tokens)
            a = (attn.logits(q, k, bias + mask[i * (W // w) + j])).softmax(-1)
            y = attn.proj((a @ v).transpose(1, 2).reshape(B, w * w, C))
            out[:, i * w : (i + 1) * w, j * w : (j + 1) * w] = y.view(B, w, w, C)
    return torch.roll(out, (s, s), (1, 2))


@pytest.mark.parametrize("shift", [0, 2])
def test_window_attention_equals_written_out_windows(shift):
    torch.manual_seed(0)
    attn = WindowAttention(32, head_dim=8, window=4, shift=shift)
    with torch.no_grad():
        attn.relative_bias_table.normal_()
    x = torch.randn(2, 12, 8, 32)
    torch.testing.assert_close(attn(x), windowed_reference(attn, x), atol=1e-5, rtol=1e-5)


def test_fused_window_attention_equals_plain():
    torch.manual_seed(0)
    attn = WindowAttention(32, head_dim=8, window=4, shift=2)
    with torch.no_grad():
        attn.relative_bias_table.normal_()
    x = torch.randn(2, 8, 8, 32)
    with torch.no_grad():
        torch.testing.assert_close(coatlib.fuse(attn)(x), attn(x))


def test_window_attention_pads_maps_that_are_not_whole_windows():
    attn = WindowAttention(32, head_dim=8, window=4, shift=2).eval()
    x = torch.randn(1, 6, 9, 32)
    with torch.no_grad():
        assert attn(x).shape == x.shape


def test_swin_window_size_override_resizes_tables_on_load():
    torch.manual_seed(0)
    src = coatlib.create_model("swin_t")
    dst = coatlib.create_model("swin_t", window_size=8)
    dst.load_state_dict(src.state_dict())
    table = src.stages[0].blocks[0].attn.relative_bias_table
    assert dst.stages[0].blocks[0].attn.relative_bias_table.shape == (3, 15, 15)
    torch.testing.assert_close(dst.stages[0].blocks[0].attn.relative_bias_table, resize_table(table, (15, 15)))
    with torch.no_grad():
        assert dst.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


# ------------------------------------------------------------------ torch.compile

# One reduced configuration per family: the family's own classes and code paths (for Swin: shifted,
# padded and unshifted windows, patch merging), two stages, so that compiling stays cheap on a 2-core CI
# machine (inductor compiles one C++ kernel per distinct fused op).
_M, _F = partial(StageRow, "mbconv"), partial(StageRow, "fused")
COMPILE_CASES = {
    "resnet": lambda: ResNet(ResNetConfig("bottleneck", (1, 1, 1, 1)), num_classes=10),
    "mobilenet_v3": lambda: MobileNetV3(MobileNetV3Config(16, (
        Bneck(3, 16, 16, True, "RE", 2), Bneck(5, 64, 24, False, "HS", 2), Bneck(3, 72, 24, True, "HS", 1)
    ), 96, 128), num_classes=10),
    "efficientnet": lambda: EfficientNet(EfficientNetConfig(16, (_F(4, 3, 2, 24, 1), _M(4, 3, 2, 32, 2)), head=64),
                                         num_classes=10),
    "vit": lambda: VisionTransformer(ViTConfig(16, 64, 2, 2, 128), num_classes=10, image_size=32),
    "swin": lambda: SwinTransformer(SwinConfig(32, (2, 2), (1, 2), 0.1), num_classes=10),
    "convnext": lambda: ConvNeXt(ConvNeXtConfig((16, 32), (1, 1), 0.1), num_classes=10),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(COMPILE_CASES))
def test_torch_compile(family):
    torch.manual_seed(0)
    model = COMPILE_CASES[family]().eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)
