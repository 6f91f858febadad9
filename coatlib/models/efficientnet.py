"""EfficientNet B0-B7 and EfficientNetV2 S/M/L: MBConv networks scaled and searched.

* EfficientNet (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for
  Convolutional Neural Networks"): B0 is the searched baseline of Table 1,
  MBConv blocks (coatlib's ``InvertedResidual``: expand 1x1 -> depthwise k x k -> SE ->
  project 1x1, SiLU) with squeeze-excitation to a quarter of the block's input
  width. B1-B7 scale B0's width, depth and resolution together (compound
  scaling, Eq. 3): channels x ``width`` (rounded to multiples of 8), repeats x
  ``depth`` (rounded up), with the resolutions and dropout rates of the
  reference code.
* EfficientNetV2 (Tan & Le 2021, "EfficientNetV2: Smaller Models and Faster
  Training"): Fused-MBConv (one full 3x3 conv instead of expand 1x1 + depthwise
  3x3, no SE) in the early stages, MBConv later (Table 4 for S; M and L from
  the reference code).

Both reuse MobileNet's ``PooledConvNet`` skeleton and torchvision's module names.
Stochastic depth (``drop_path_rate``, default 0.2 as in the papers' training)
acts on the residual blocks only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch.nn as nn

from coatlib.blocks import FusedMBConv, InvertedResidual
from coatlib.checkpoints import Convert, Rename, as_is, renamer
from coatlib.layers import ConvNormAct, drop_path_rates, make_divisible
from coatlib.models.mobilenet import PooledConvNet, inverted_residual_rules
from coatlib.registry import register_model

SiLU = partial(nn.SiLU, inplace=True)


@dataclass(frozen=True)
class StageRow:
    """One row of the papers' stage tables: block type, expansion ratio, kernel, stride, channels, layers."""

    block: str  # "mbconv" or "fused"
    expand: int
    kernel: int
    stride: int
    out: int
    layers: int


@dataclass(frozen=True)
class EfficientNetConfig:
    """A base stage table and the compound-scaling coefficients applied to it."""

    stem: int
    rows: tuple[StageRow, ...]
    head: int | None = None  # the final 1x1 conv; None: 4 x the last stage's width
    width: float = 1.0
    depth: float = 1.0
    resolution: int = 224  # the training/evaluation size of the paper (the model takes any size >= 32)
    dropout: float = 0.2
    bn_eps: float = 1e-5


M, F = partial(StageRow, "mbconv"), partial(StageRow, "fused")

# Tan & Le 2019, Table 1 (EfficientNet-B0): MBConv6 k3x3 = M(6, 3, ...)
B0_ROWS = (M(1, 3, 1, 16, 1), M(6, 3, 2, 24, 2), M(6, 5, 2, 40, 2), M(6, 3, 2, 80, 3),
           M(6, 5, 1, 112, 3), M(6, 5, 2, 192, 4), M(6, 3, 1, 320, 1))  # fmt: skip


def _b(width: float, depth: float, resolution: int, dropout: float, bn_eps: float = 1e-5) -> EfficientNetConfig:
    return EfficientNetConfig(32, B0_ROWS, None, width, depth, resolution, dropout, bn_eps)


CONFIGS: dict[str, EfficientNetConfig] = {
    # compound scaling (width, depth, resolution, dropout) of B0, from the reference code; B5-B7 were
    # ported from TensorFlow with its BatchNorm eps 1e-3
    "efficientnet_b0": _b(1.0, 1.0, 224, 0.2),
    "efficientnet_b1": _b(1.0, 1.1, 240, 0.2),
    "efficientnet_b2": _b(1.1, 1.2, 260, 0.3),
    "efficientnet_b3": _b(1.2, 1.4, 300, 0.3),
    "efficientnet_b4": _b(1.4, 1.8, 380, 0.4),
    "efficientnet_b5": _b(1.6, 2.2, 456, 0.4, 1e-3),
    "efficientnet_b6": _b(1.8, 2.6, 528, 0.5, 1e-3),
    "efficientnet_b7": _b(2.0, 3.1, 600, 0.5, 1e-3),
    # Tan & Le 2021, Table 4 (EfficientNetV2-S)
    "efficientnet_v2_s": EfficientNetConfig(24, (
        F(1, 3, 1, 24, 2), F(4, 3, 2, 48, 4), F(4, 3, 2, 64, 4),
        M(4, 3, 2, 128, 6), M(6, 3, 1, 160, 9), M(6, 3, 2, 256, 15),
    ), head=1280, resolution=384, dropout=0.2, bn_eps=1e-3),
    # EfficientNetV2-M and -L: the reference code's tables (the paper gives only S)
    "efficientnet_v2_m": EfficientNetConfig(24, (
        F(1, 3, 1, 24, 3), F(4, 3, 2, 48, 5), F(4, 3, 2, 80, 5),
        M(4, 3, 2, 160, 7), M(6, 3, 1, 176, 14), M(6, 3, 2, 304, 18), M(6, 3, 1, 512, 5),
    ), head=1280, resolution=480, dropout=0.3, bn_eps=1e-3),
    "efficientnet_v2_l": EfficientNetConfig(32, (
        F(1, 3, 1, 32, 4), F(4, 3, 2, 64, 7), F(4, 3, 2, 96, 7),
        M(4, 3, 2, 192, 10), M(6, 3, 1, 224, 19), M(6, 3, 2, 384, 25), M(6, 3, 1, 640, 7),
    ), head=1280, resolution=480, dropout=0.4, bn_eps=1e-3),
}  # fmt: skip
del M, F


class EfficientNet(PooledConvNet):
    """EfficientNet B0-B7 / EfficientNetV2 from a config table: a 3x3 stride-2 stem conv, one
    ``nn.Sequential`` of ``InvertedResidual`` (MBConv) or ``FusedMBConv`` blocks per table row, a 1x1 head conv, dropout and a linear classifier.

    Per row: channels ``make_divisible(out * width)``, ``ceil(layers * depth)``
    blocks, the first with the row's stride. MBConv blocks squeeze-excite to
    ``in / 4`` channels (of the block's input, as the reference code);
    Fused-MBConv blocks have no SE (EfficientNetV2, Table 4).
    """

    def __init__(
        self,
        config: EfficientNetConfig,
        num_classes: int = 1000,
        image_size=224,
        in_chans: int = 3,
        dropout: float | None = None,
        drop_path_rate: float = 0.2,
    ):
        norm = partial(nn.BatchNorm2d, eps=config.bn_eps)
        c = make_divisible(config.stem * config.width)
        features: list[nn.Module] = [ConvNormAct(in_chans, c, 3, 2, norm_layer=norm, act_layer=SiLU)]
        depths = [math.ceil(row.layers * config.depth) for row in config.rows]
        rates = iter(drop_path_rates(drop_path_rate, sum(depths), endpoint=False))
        for row, depth in zip(config.rows, depths):
            out = make_divisible(row.out * config.width)
            blocks = []
            for i in range(depth):
                mid, stride = make_divisible(c * row.expand), row.stride if i == 0 else 1
                if row.block == "fused":
                    blocks.append(FusedMBConv(
                        c, out, mid, stride, row.kernel, act_layer=SiLU, norm_layer=norm, drop_path=next(rates),
                    ))  # fmt: skip
                else:
                    blocks.append(InvertedResidual(
                        c, out, mid, stride, row.kernel, se_chs=max(1, c // 4), act_layer=SiLU, norm_layer=norm,
                        drop_path=next(rates),
                    ))  # fmt: skip
                c = out
            features.append(nn.Sequential(*blocks))
        head = config.head or 4 * c
        features.append(ConvNormAct(c, head, 1, norm_layer=norm, act_layer=SiLU))
        dropout = config.dropout if dropout is None else dropout
        super().__init__(
            features, nn.Sequential(nn.Dropout(dropout), nn.Linear(head, num_classes)), in_chans, image_size
        )
        self.config = config


@register_model
def efficientnet_b0(**kwargs) -> EfficientNet:
    """EfficientNet-B0 (Tan & Le 2019, Table 1): 5.3M parameters, native resolution 224."""
    return EfficientNet(CONFIGS["efficientnet_b0"], **kwargs)


@register_model
def efficientnet_b1(**kwargs) -> EfficientNet:
    """EfficientNet-B1 (Tan & Le 2019, B0's Table 1 compound-scaled, Eq. 3): 7.8M parameters, 240 px."""
    return EfficientNet(CONFIGS["efficientnet_b1"], **kwargs)


@register_model
def efficientnet_b2(**kwargs) -> EfficientNet:
    """EfficientNet-B2 (Tan & Le 2019, B0's Table 1 compound-scaled, Eq. 3): 9.1M parameters, 260 px."""
    return EfficientNet(CONFIGS["efficientnet_b2"], **kwargs)


@register_model
def efficientnet_b3(**kwargs) -> EfficientNet:
    """EfficientNet-B3 (Tan & Le 2019, B0's Table 1 compound-scaled, Eq. 3): 12.2M parameters, 300 px."""
    return EfficientNet(CONFIGS["efficientnet_b3"], **kwargs)


@register_model
def efficientnet_b4(**kwargs) -> EfficientNet:
    """EfficientNet-B4 (Tan & Le 2019, B0's Table 1 compound-scaled, Eq. 3): 19.3M parameters, 380 px."""
    return EfficientNet(CONFIGS["efficientnet_b4"], **kwargs)


@register_model
def efficientnet_b5(**kwargs) -> EfficientNet:
    """EfficientNet-B5 (Tan & Le 2019, B0's Table 1 compound-scaled, Eq. 3): 30.4M parameters, 456 px."""
    return EfficientNet(CONFIGS["efficientnet_b5"], **kwargs)


@register_model
def efficientnet_b6(**kwargs) -> EfficientNet:
    """EfficientNet-B6 (Tan & Le 2019, B0's Table 1 compound-scaled, Eq. 3): 43.0M parameters, 528 px."""
    return EfficientNet(CONFIGS["efficientnet_b6"], **kwargs)


@register_model
def efficientnet_b7(**kwargs) -> EfficientNet:
    """EfficientNet-B7 (Tan & Le 2019, B0's Table 1 compound-scaled, Eq. 3): 66.3M parameters, 600 px."""
    return EfficientNet(CONFIGS["efficientnet_b7"], **kwargs)


@register_model
def efficientnet_v2_s(**kwargs) -> EfficientNet:
    """EfficientNetV2-S (Tan & Le 2021, Table 4): 21.5M parameters, 384 px."""
    return EfficientNet(CONFIGS["efficientnet_v2_s"], **kwargs)


@register_model
def efficientnet_v2_m(**kwargs) -> EfficientNet:
    """EfficientNetV2-M (Tan & Le 2021, the reference code's table): 54.1M parameters, 480 px."""
    return EfficientNet(CONFIGS["efficientnet_v2_m"], **kwargs)


@register_model
def efficientnet_v2_l(**kwargs) -> EfficientNet:
    """EfficientNetV2-L (Tan & Le 2021, the reference code's table): 118.5M parameters, 480 px."""
    return EfficientNet(CONFIGS["efficientnet_v2_l"], **kwargs)


def torchvision_mapping(model: EfficientNet) -> tuple[Rename, Convert]:
    """``(rename, convert)`` from torchvision's EfficientNet (B0-B7, V2) state dict to ``model``'s."""
    return renamer(inverted_residual_rules(model, r"^(features\.\d+\.\d+)\.block\.(\d+)\.")), as_is
