"""ResNet (He, Zhang, Ren, Sun 2016, "Deep Residual Learning for Image Recognition").

A 7x7 stride-2 conv and a 3x3 max pooling (the "stem", 224 -> 56), then four
stages ``layer1..layer4`` (the paper's conv2_x .. conv5_x) of residual blocks;
stages 2..4 open with a stride-2 block (56 -> 28 -> 14 -> 7). The configs
mirror the paper's Table 1. As in torchvision ("ResNet v1.5") a bottleneck
block down-samples on its 3x3 conv, not on its first 1x1 conv as the paper does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn

from coatlib.checkpoints import Convert, Rename, as_is, renamer
from coatlib.layers import ConvNormAct, DropPath, check_image_size, check_images, drop_path_rates, init_weights
from coatlib.registry import register_model

ReLU = partial(nn.ReLU, inplace=True)


@dataclass(frozen=True)
class ResNetConfig:
    """One column of the paper's Table 1: the block type and the number of blocks per stage."""

    block: str  # "basic" (two 3x3 convs) or "bottleneck" (1x1 -> 3x3 -> 1x1)
    depths: tuple[int, int, int, int]  # blocks in conv2_x .. conv5_x


# He et al. 2016, Table 1 (the 18/34/50/101/152-layer columns)
CONFIGS: dict[str, ResNetConfig] = {
    "resnet18": ResNetConfig("basic", (2, 2, 2, 2)),
    "resnet34": ResNetConfig("basic", (3, 4, 6, 3)),
    "resnet50": ResNetConfig("bottleneck", (3, 4, 6, 3)),
    "resnet101": ResNetConfig("bottleneck", (3, 4, 23, 3)),
    "resnet152": ResNetConfig("bottleneck", (3, 8, 36, 3)),
}
WIDTHS = (64, 128, 256, 512)  # 3x3-conv width of conv2_x .. conv5_x (Table 1)


class BasicBlock(nn.Module):
    """``y = ReLU(x' + BN(conv3x3(ReLU(BN(conv3x3(x))))))`` (paper Fig. 2 left).

    ``x'`` is ``x``, or ``BN(conv1x1(x))`` with the block's stride when the
    shape changes (the paper's projection shortcut, option B).
    """

    expansion = 1

    def __init__(self, in_chs: int, width: int, stride: int = 1, drop_path: float = 0.0):
        super().__init__()
        out_chs = width * self.expansion
        self.conv1 = ConvNormAct(in_chs, width, 3, stride, act_layer=ReLU)
        self.conv2 = ConvNormAct(width, out_chs, 3, act_layer=None)
        self.downsample = _shortcut(in_chs, out_chs, stride)
        self.drop_path = DropPath(drop_path)
        self.act = ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.downsample(x) + self.drop_path(self.conv2(self.conv1(x))))


class Bottleneck(nn.Module):
    """``1x1 (reduce) -> 3x3 (stride) -> 1x1 (expand 4x)``, each with BN, ReLU after the sum (paper Fig. 5 right)."""

    expansion = 4

    def __init__(self, in_chs: int, width: int, stride: int = 1, drop_path: float = 0.0):
        super().__init__()
        out_chs = width * self.expansion
        self.conv1 = ConvNormAct(in_chs, width, 1, act_layer=ReLU)
        self.conv2 = ConvNormAct(width, width, 3, stride, act_layer=ReLU)
        self.conv3 = ConvNormAct(width, out_chs, 1, act_layer=None)
        self.downsample = _shortcut(in_chs, out_chs, stride)
        self.drop_path = DropPath(drop_path)
        self.act = ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.downsample(x) + self.drop_path(self.conv3(self.conv2(self.conv1(x)))))


def _shortcut(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    if stride == 1 and in_chs == out_chs:
        return nn.Identity()
    return ConvNormAct(in_chs, out_chs, 1, stride, act_layer=None)


class ResNet(nn.Module):
    """ResNet-18/34/50/101/152 (He et al. 2016, Table 1): stem, ``layer1..layer4``, global pooling, ``fc``.

    Takes any image size >= 32. ``drop_path_rate`` adds stochastic depth
    (linearly increasing over the blocks; 0 as in the paper).
    """

    def __init__(
        self,
        config: ResNetConfig,
        num_classes: int = 1000,
        image_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        block = {"basic": BasicBlock, "bottleneck": Bottleneck}[config.block]
        self.config, self.in_chans = config, in_chans
        check_image_size(image_size)
        self.stem = ConvNormAct(in_chans, 64, 7, 2, act_layer=ReLU)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        rates = iter(drop_path_rates(drop_path_rate, sum(config.depths)))
        c = 64
        for s, (depth, width) in enumerate(zip(config.depths, WIDTHS)):
            blocks = []
            for b in range(depth):
                blocks.append(block(c, width, 2 if s > 0 and b == 0 else 1, next(rates)))
                c = width * block.expansion
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        self.num_features = c
        self.fc = nn.Linear(c, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> the last feature map ``(B, 512 * expansion, H/32, W/32)``."""
        check_images(x, self.in_chans, dtype=next(self.parameters()).dtype)
        x = self.maxpool(self.stem(x))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x).mean((2, 3)))


@register_model
def resnet18(**kwargs) -> ResNet:
    """ResNet-18 (He et al. 2016, Table 1, 18-layer column): 11.7M parameters."""
    return ResNet(CONFIGS["resnet18"], **kwargs)


@register_model
def resnet34(**kwargs) -> ResNet:
    """ResNet-34 (He et al. 2016, Table 1, 34-layer column): 21.8M parameters."""
    return ResNet(CONFIGS["resnet34"], **kwargs)


@register_model
def resnet50(**kwargs) -> ResNet:
    """ResNet-50 (He et al. 2016, Table 1, 50-layer column): 25.6M parameters."""
    return ResNet(CONFIGS["resnet50"], **kwargs)


@register_model
def resnet101(**kwargs) -> ResNet:
    """ResNet-101 (He et al. 2016, Table 1, 101-layer column): 44.5M parameters."""
    return ResNet(CONFIGS["resnet101"], **kwargs)


@register_model
def resnet152(**kwargs) -> ResNet:
    """ResNet-152 (He et al. 2016, Table 1, 152-layer column): 60.2M parameters."""
    return ResNet(CONFIGS["resnet152"], **kwargs)


# torchvision's names -> coatlib's (``coatlib.load_torchvision_weights``)
TORCHVISION_RULES = [
    (r"^conv1\.", "stem.0."),  # the 7x7 stem conv and its BN form one ConvNormAct
    (r"^bn1\.", "stem.1."),
    (r"\.conv(\d)\.", r".conv\1.0."),  # block convs: conv{k} + bn{k} -> ConvNormAct conv{k}
    (r"\.bn(\d)\.", r".conv\1.1."),
]


def torchvision_mapping(model: ResNet) -> tuple[Rename, Convert]:
    """``(rename, convert)`` from torchvision's ResNet state dict to ``model``'s."""
    return renamer(TORCHVISION_RULES), as_is
