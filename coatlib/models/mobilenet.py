"""MobileNet V1, V2 and V3: the depthwise convolution becomes the workhorse.

* V1 (Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks
  for Mobile Vision Applications"): a plain stack of depthwise separable convs,
  a 3x3 depthwise conv then a 1x1 pointwise conv (Table 1).
* V2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear
  Bottlenecks"): the inverted residual block, expand 1x1 -> depthwise 3x3 ->
  linear 1x1 projection, with a shortcut between the thin ends (Table 2). This
  is coatlib's ``InvertedResidual``; CoAtNet's ``MBConv`` is its pre-norm descendant.
* V3 (Howard et al. 2019, "Searching for MobileNetV3"): the V2 block with
  squeeze-excitation (hard-sigmoid gate), hard-swish in the deeper half and
  5x5 kernels, found by architecture search (Tables 1 and 2).

All three share one skeleton, ``PooledConvNet``: ``features`` (stem conv, blocks, a
final 1x1 conv), global average pooling and a ``classifier``; EfficientNet
reuses it too. Module names follow torchvision's.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn

from coatlib.blocks import FusedMBConv, InvertedResidual
from coatlib.checkpoints import Convert, Rename, Rules, as_is, renamer
from coatlib.layers import (
    ConvNormAct,
    Layer,
    check_image_size,
    check_images,
    drop_path_rates,
    init_weights,
    make_divisible,
)
from coatlib.registry import register_model

ReLU = partial(nn.ReLU, inplace=True)
ReLU6 = partial(nn.ReLU6, inplace=True)
Hardswish = partial(nn.Hardswish, inplace=True)


class PooledConvNet(nn.Module):
    """A convolutional network pooled once: ``features`` (a sequence of conv stages) -> global average
    pooling -> ``classifier``.

    The skeleton of MobileNet V1-V3 and of EfficientNet (``coatlib.models.efficientnet``). Takes any image
    size >= 32.
    """

    def __init__(self, features: list[nn.Module], classifier: nn.Module, in_chans: int, image_size):
        super().__init__()
        check_image_size(image_size)
        self.in_chans = in_chans
        self.features = nn.Sequential(*features)
        self.classifier = classifier
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> the last feature map ``(B, D, H/32, W/32)``."""
        check_images(x, self.in_chans, dtype=next(self.parameters()).dtype)
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x).mean((2, 3)))


# ---------------------------------------------------------------- MobileNet V1

# Howard et al. 2017, Table 1: (stride, output channels) of the 13 depthwise separable layers
V1_LAYERS = ((1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
             (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024))  # fmt: skip


class DepthwiseSeparable(nn.Sequential):
    """A 3x3 depthwise conv (one filter per channel), then a 1x1 pointwise conv mixing the
    channels, each followed by BN and ReLU (Howard et al. 2017, Fig. 3)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, act_layer: Layer = ReLU):
        super().__init__(OrderedDict(
            dw=ConvNormAct(in_chs, in_chs, 3, stride, groups=in_chs, act_layer=act_layer),
            pw=ConvNormAct(in_chs, out_chs, 1, act_layer=act_layer),
        ))  # fmt: skip


class MobileNetV1(PooledConvNet):
    """MobileNet V1 (Howard et al. 2017, Table 1; width multiplier 1, 224 px).

    ReLU as in the paper (timm's port of the TF-slim model uses ReLU6; the
    parameter count is the same, 4.23M).
    """

    def __init__(self, num_classes: int = 1000, image_size=224, in_chans: int = 3, dropout: float = 0.0):
        features: list[nn.Module] = [ConvNormAct(in_chans, 32, 3, 2, act_layer=ReLU)]
        c = 32
        for stride, out in V1_LAYERS:
            features.append(DepthwiseSeparable(c, out, stride))
            c = out
        super().__init__(features, nn.Sequential(nn.Dropout(dropout), nn.Linear(c, num_classes)), in_chans, image_size)


# ---------------------------------------------------------------- MobileNet V2

# Sandler et al. 2018, Table 2: expansion t, output channels c, repeats n, first stride s
V2_ROWS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(PooledConvNet):
    """MobileNet V2 (Sandler et al. 2018, Table 2): a 32-channel stem, 17 inverted residual
    blocks (``InvertedResidual``, ReLU6, stride on the depthwise conv), a 1x1 conv to 1280, dropout 0.2."""

    def __init__(
        self,
        num_classes: int = 1000,
        image_size=224,
        in_chans: int = 3,
        dropout: float = 0.2,
        drop_path_rate: float = 0.0,
    ):
        features: list[nn.Module] = [ConvNormAct(in_chans, 32, 3, 2, act_layer=ReLU6)]
        rates = iter(drop_path_rates(drop_path_rate, sum(n for _, _, n, _ in V2_ROWS), endpoint=False))
        c = 32
        for t, out, n, s in V2_ROWS:
            for i in range(n):
                features.append(InvertedResidual(
                    c, out, mid_chs=round(c * t), stride=s if i == 0 else 1, act_layer=ReLU6, drop_path=next(rates),
                ))  # fmt: skip
                c = out
        features.append(ConvNormAct(c, 1280, 1, act_layer=ReLU6))
        super().__init__(
            features, nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes)), in_chans, image_size
        )


# ---------------------------------------------------------------- MobileNet V3


@dataclass(frozen=True)
class Bneck:
    """One row of MobileNetV3's Tables 1/2: kernel, expansion size, output channels, SE, activation, stride."""

    kernel: int
    exp: int
    out: int
    se: bool
    act: str  # "RE" (ReLU) or "HS" (hard-swish)
    stride: int


@dataclass(frozen=True)
class MobileNetV3Config:
    stem: int
    rows: tuple[Bneck, ...]
    last_conv: int  # the 1x1 conv after the blocks
    last_channel: int  # the hidden layer of the classifier


B = Bneck
V3_CONFIGS = {
    # Howard et al. 2019, Table 1 (MobileNetV3-Large)
    "large": MobileNetV3Config(16, (
        B(3, 16, 16, False, "RE", 1), B(3, 64, 24, False, "RE", 2), B(3, 72, 24, False, "RE", 1),
        B(5, 72, 40, True, "RE", 2), B(5, 120, 40, True, "RE", 1), B(5, 120, 40, True, "RE", 1),
        B(3, 240, 80, False, "HS", 2), B(3, 200, 80, False, "HS", 1), B(3, 184, 80, False, "HS", 1),
        B(3, 184, 80, False, "HS", 1), B(3, 480, 112, True, "HS", 1), B(3, 672, 112, True, "HS", 1),
        B(5, 672, 160, True, "HS", 2), B(5, 960, 160, True, "HS", 1), B(5, 960, 160, True, "HS", 1),
    ), 960, 1280),
    # Howard et al. 2019, Table 2 (MobileNetV3-Small)
    "small": MobileNetV3Config(16, (
        B(3, 16, 16, True, "RE", 2), B(3, 72, 24, False, "RE", 2), B(3, 88, 24, False, "RE", 1),
        B(5, 96, 40, True, "HS", 2), B(5, 240, 40, True, "HS", 1), B(5, 240, 40, True, "HS", 1),
        B(5, 120, 48, True, "HS", 1), B(5, 144, 48, True, "HS", 1), B(5, 288, 96, True, "HS", 2),
        B(5, 576, 96, True, "HS", 1), B(5, 576, 96, True, "HS", 1),
    ), 576, 1024),
}  # fmt: skip
del B


class MobileNetV3(PooledConvNet):
    """MobileNet V3 Large / Small (Howard et al. 2019, Tables 1 and 2).

    Each row is an ``InvertedResidual`` whose squeeze-excitation squeezes to a quarter of
    the expansion size (rounded to a multiple of 8) with ReLU inside and a
    hard-sigmoid gate. The classifier is ``1x1 conv -> pool -> linear ->
    hard-swish -> dropout -> linear`` (the paper's "efficient last stage",
    section 5.3). BatchNorm uses eps 1e-3, as the reference code.
    """

    def __init__(
        self,
        config: MobileNetV3Config,
        num_classes: int = 1000,
        image_size=224,
        in_chans: int = 3,
        dropout: float = 0.2,
        drop_path_rate: float = 0.0,
    ):
        norm = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)
        features: list[nn.Module] = [ConvNormAct(in_chans, config.stem, 3, 2, norm_layer=norm, act_layer=Hardswish)]
        rates = drop_path_rates(drop_path_rate, len(config.rows), endpoint=False)
        c = config.stem
        for row, dp in zip(config.rows, rates):
            features.append(InvertedResidual(
                c, row.out, mid_chs=row.exp, stride=row.stride, kernel_size=row.kernel,
                se_chs=make_divisible(row.exp // 4) if row.se else 0, se_act_layer=ReLU, se_gate_layer=nn.Hardsigmoid,
                act_layer=Hardswish if row.act == "HS" else ReLU, norm_layer=norm, drop_path=dp,
            ))  # fmt: skip
            c = row.out
        features.append(ConvNormAct(c, config.last_conv, 1, norm_layer=norm, act_layer=Hardswish))
        classifier = nn.Sequential(
            nn.Linear(config.last_conv, config.last_channel),
            Hardswish(),
            nn.Dropout(dropout),
            nn.Linear(config.last_channel, num_classes),
        )
        super().__init__(features, classifier, in_chans, image_size)


@register_model
def mobilenet_v1(**kwargs) -> MobileNetV1:
    """MobileNet V1 (Howard et al. 2017, Table 1): 4.2M parameters."""
    return MobileNetV1(**kwargs)


@register_model
def mobilenet_v2(**kwargs) -> MobileNetV2:
    """MobileNet V2 (Sandler et al. 2018, Table 2): 3.5M parameters."""
    return MobileNetV2(**kwargs)


@register_model
def mobilenet_v3_large(**kwargs) -> MobileNetV3:
    """MobileNet V3-Large (Howard et al. 2019, Table 1): 5.5M parameters."""
    return MobileNetV3(V3_CONFIGS["large"], **kwargs)


@register_model
def mobilenet_v3_small(**kwargs) -> MobileNetV3:
    """MobileNet V3-Small (Howard et al. 2019, Table 2): 2.5M parameters."""
    return MobileNetV3(V3_CONFIGS["small"], **kwargs)


# torchvision's names -> coatlib's (``coatlib.load_torchvision_weights``)


def inverted_residual_rules(model: nn.Module, block_pattern: str, split_project: bool = False) -> Rules:
    """torchvision keeps an inverted-residual block's layers in one ``nn.Sequential`` (``<block>.<j>.``,
    matched by ``block_pattern``) holding only the layers that exist; coatlib's ``InvertedResidual`` and
    ``FusedMBConv`` name them ``expand``, ``dw``, ``se``, ``project`` and leave missing ones as
    ``nn.Identity``. MobileNetV2 keeps the projection's conv and BN as two entries (``split_project``)."""

    def rename(m: re.Match) -> str:
        try:
            block = model.get_submodule(m[1])
        except AttributeError:
            block = None
        if not isinstance(block, (InvertedResidual, FusedMBConv)):  # no such block: reported as not fitting
            return m[0]
        names = [
            n
            for n in ("expand", "dw", "se", "project")
            if not isinstance(getattr(block, n, None), (nn.Identity, type(None)))
        ]
        if split_project:
            names[-1:] = ["project.0", "project.1"]
        j = int(m[2])
        return f"{m[1]}.{names[j]}." if j < len(names) else m[0]

    return [(block_pattern, rename)]


def torchvision_mapping(model: MobileNetV2 | MobileNetV3) -> tuple[Rename, Convert]:
    """``(rename, convert)`` from torchvision's MobileNetV2 or V3 state dict to ``model``'s."""
    if isinstance(model, MobileNetV2):
        return renamer(inverted_residual_rules(model, r"^(features\.\d+)\.conv\.(\d+)\.", split_project=True)), as_is
    return renamer(inverted_residual_rules(model, r"^(features\.\d+)\.block\.(\d+)\.")), as_is
