"""load_torchvision_weights: torchvision models and their coatlib twins give the same logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import coatlib
from coatlib.models.coatnet import TIMM_OPTIONS


def randomize_(model: nn.Module, size: int) -> nn.Module:
    """Random weights that every layer feels, at a healthy scale: He-normal matrices and kernels,
    noise on norms and biases (ViT's zero head too), ConvNeXt's layer scale (1e-6 at init) and
    Swin's bias tables made large, and BatchNorm statistics measured on a random batch so that
    activations keep unit scale through the depth."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("layer_scale", "relative_position_bias_table")):
                p.normal_(0, 0.5)
            elif p.ndim >= 2 and not name.endswith(("class_token", "pos_embedding")):
                p.normal_(0, math.sqrt(2 / p[0].numel()))
            else:
                p.add_(torch.randn_like(p), alpha=0.1)
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a plain average over the calibration batch
        if norms:
            model.train()(torch.randn(8, 3, size, size))
    return model.eval()


# the smallest torchvision model of each family; the image size keeps it fast
FAMILIES = [
    ("resnet18", 64, {}),
    ("mobilenet_v2", 64, {}),
    ("mobilenet_v3_small", 64, {}),
    ("efficientnet_b0", 64, {}),
    ("efficientnet_v2_s", 64, {}),
    ("vit_b_16", 64, {"image_size": 64}),
    ("swin_t", 112, {}),  # maps 28, 14 (shifted windows), 7 (one window, not shifted), 4 (padded to 7)
    ("swin_t", 96, {}),  # maps 24, 12 padded to whole 7x7 windows and shifted
    ("convnext_tiny", 64, {}),
]


@pytest.mark.parametrize("name, size, kwargs", FAMILIES)
def test_same_logits_as_torchvision(torchvision, name, size, kwargs):
    reference = randomize_(getattr(torchvision.models, name)(**kwargs), size)
    model = coatlib.load_torchvision_weights(coatlib.create_model(name, **kwargs), reference.state_dict()).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = reference(x)
        assert (expected[0] - expected[1]).abs().max() > 0.5  # the logits depend on the input
        # the mapping is exact: conv and BatchNorm run one after the other, as torchvision does
        torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=0)
        # coatlib.fuse folds BatchNorm into the convs: the same up to float rounding,
        # which grows with depth, so the bound is relative to the logits' size
        scale = max(1.0, expected.abs().max().item())
        torch.testing.assert_close(coatlib.fuse(model)(x), expected, atol=1e-4 * scale, rtol=0)


def test_vit_weights_for_another_image_size(torchvision):
    """224-px weights into a 64-px coatlib ViT equal torchvision's own recipe for that
    (``interpolate_embeddings``: bicubic resizing of the position embedding)."""
    from torchvision.models.vision_transformer import interpolate_embeddings

    state = randomize_(torchvision.models.vit_b_16(), 224).state_dict()
    reference = torchvision.models.vit_b_16(image_size=64)
    reference.load_state_dict(interpolate_embeddings(64, 16, state))
    model = coatlib.load_torchvision_weights(coatlib.create_model("vit_b_16", image_size=64), state).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference.eval()(x), atol=1e-4, rtol=0)


def test_loads_a_saved_state_dict_file(torchvision, tmp_path):
    reference = randomize_(torchvision.models.mobilenet_v3_small(), 64)
    path = tmp_path / "mobilenet_v3_small.pth"
    torch.save(reference.state_dict(), path)
    model = coatlib.load_torchvision_weights(coatlib.create_model("mobilenet_v3_small"), path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-4, rtol=0)


def test_file_with_pickled_objects_is_refused(tmp_path):
    """Files are read with ``weights_only=True``: anything but tensors and containers is refused."""
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2), "payload": nn.ReLU()}, path)
    with pytest.raises(Exception, match="[Ww]eights only"):
        coatlib.load_torchvision_weights(coatlib.create_model("resnet18"), path)


@pytest.fixture(scope="module")
def resnet_state_dicts(torchvision):
    return {name: getattr(torchvision.models, name)().state_dict() for name in ("resnet18", "resnet34", "resnet50")}


def test_smaller_architecture_names_the_first_missing_key(resnet_state_dicts):
    with pytest.raises(ValueError, match=r"'layer1\.2\.conv1\.0\.weight'"):
        coatlib.load_torchvision_weights(coatlib.create_model("resnet34"), resnet_state_dicts["resnet18"])


def test_larger_architecture_names_the_first_extra_key(resnet_state_dicts):
    with pytest.raises(ValueError, match=r"torchvision key 'layer1\.2\.conv1\.weight'"):
        coatlib.load_torchvision_weights(coatlib.create_model("resnet18"), resnet_state_dicts["resnet34"])


def test_other_block_type_names_the_first_misfit(resnet_state_dicts):
    with pytest.raises(ValueError, match=r"'layer1\.0\.conv1\.weight'.*shape \(64, 64, 1, 1\)"):
        coatlib.load_torchvision_weights(coatlib.create_model("resnet18"), resnet_state_dicts["resnet50"])


def test_other_number_of_classes_names_the_head(resnet_state_dicts):
    with pytest.raises(ValueError, match=r"'fc\.weight'"):
        coatlib.load_torchvision_weights(
            coatlib.create_model("resnet18", num_classes=10), resnet_state_dicts["resnet18"]
        )


def test_other_family_and_depth_are_refused(torchvision):
    with pytest.raises(ValueError, match="torchvision key 'features.1.conv.0.0.weight'"):
        coatlib.load_torchvision_weights(coatlib.create_model("efficientnet_b0"), torchvision.models.mobilenet_v2())
    with pytest.raises(ValueError, match=r"torchvision key 'features\.1\.1\.block"):
        coatlib.load_torchvision_weights(coatlib.create_model("efficientnet_b0"), torchvision.models.efficientnet_b1())


@pytest.mark.parametrize("name", ["mobilenet_v1", "coatnet_pico"])
def test_models_without_torchvision_twin_raise_type_error(name):
    with pytest.raises(TypeError, match="torchvision has no counterpart"):
        coatlib.load_torchvision_weights(coatlib.create_model(name), {})


# ---- timm's CoAtNets --------------------------------------------------------------------------


def timm_twins(timm, n: int, size: int):
    reference = randomize_(timm.create_model(f"coatnet_{n}_224", img_size=size), size)
    head_dim = 32 if n == 5 else None  # timm's CoAtNet-5 keeps head size 32 (the paper: 64)
    model = coatlib.create_model(f"coatnet_{n}", image_size=size, head_dim=head_dim, **TIMM_OPTIONS)
    return reference, coatlib.load_timm_weights(model, reference.state_dict()).eval()


@pytest.mark.parametrize("n,size", [(0, 224), (2, 64)])
def test_timm_coatnet_weights_give_the_same_logits(timm, n, size):
    """Randomised BatchNorm statistics and bias tables of std 0.5 (an index error would show);
    coatnet_0 at full size (14x14 and 7x7 attention maps), coatnet_2 (other widths) at 64 px."""
    reference, model = timm_twins(timm, n, size)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = reference(x)
        assert (expected[0] - expected[1]).abs().max() > 0.1  # the logits depend on the input
        torch.testing.assert_close(model(x), expected, atol=1e-5 * max(1.0, expected.abs().max().item()), rtol=0)


@pytest.mark.parametrize("n", [1, 3, 4])
def test_timm_coatnet_1_3_4_state_dicts_map_completely(timm, n):
    """On the meta device (no memory, no arithmetic): every timm tensor finds its place and shape."""
    with torch.device("meta"):
        reference = timm.create_model(f"coatnet_{n}_224")
        model = coatlib.create_model(f"coatnet_{n}", **TIMM_OPTIONS)
    coatlib.load_timm_weights(model, reference.state_dict())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())


def test_timm_coatnet_5_differs_from_the_paper_only_in_head_size(timm):
    """timm's coatnet_5_224 uses heads of 32 channels, the paper 64: 419,056 more bias-table
    parameters (REFERENCE.md); with head_dim=32 coatlib has timm's count exactly."""
    with torch.device("meta"):
        paper = coatlib.create_model("coatnet_5")
        as_timm = coatlib.create_model("coatnet_5", head_dim=32)
        reference = timm.create_model("coatnet_5_224")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(as_timm) == count(reference) == 687_472_008
    assert count(as_timm) - count(paper) == 419_056


def test_timm_weights_resize_tables_for_another_image_size(timm):
    reference = randomize_(timm.create_model("coatnet_0_224"), 224)
    model = coatlib.create_model("coatnet_0", image_size=384, **TIMM_OPTIONS)
    coatlib.load_timm_weights(model, reference.state_dict())
    table = model.stages[3].blocks[0].attn.relative_bias_table
    assert table.shape == (24, 23, 23)  # 12x12 map at 384 (7x7 at 224)


def test_timm_weights_of_another_size_or_model_are_refused(timm):
    state = timm.create_model("coatnet_0_224", img_size=64).state_dict()
    with pytest.raises(ValueError, match="does not fit this CoAtNet: it has nothing for 'stages.1.blocks.3"):
        coatlib.load_timm_weights(coatlib.create_model("coatnet_1", image_size=64, **TIMM_OPTIONS), state)
    with pytest.raises(TypeError, match="C-C-T-T CoAtNets into a coatlib CoAtNet, got ResNet"):
        coatlib.load_timm_weights(coatlib.create_model("resnet18"), state)
