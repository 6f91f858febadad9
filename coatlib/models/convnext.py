"""ConvNeXt (Liu, Mao, Wu, Feichtenhofer, Darrell, Xie 2022, "A ConvNet for the 2020s").

A ResNet modernised step by step towards Swin (the paper's Fig. 2): a 4x4
stride-4 "patchify" stem with LayerNorm, four stages at 1/4 .. 1/32 separated
by LayerNorm + 2x2 stride-2 convs, and blocks made of a 7x7 depthwise conv
(coatlib's ``DepthwiseConv``), LayerNorm and an inverted-bottleneck MLP
(coatlib's ``Mlp``, 4x wide, GELU) scaled by a learnable per-channel layer
scale (Fig. 4). Configs: section 3 of the paper (T/S/B/L at 224).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn

from coatlib.checkpoints import TORCHVISION_STAGES, Convert, Rename, renamer
from coatlib.layers import (
    DepthwiseConv,
    DropPath,
    LayerNorm2d,
    Mlp,
    check_image_size,
    check_images,
    drop_path_rates,
    init_weights,
)
from coatlib.registry import register_model


@dataclass(frozen=True)
class ConvNeXtConfig:
    """Channels C and blocks B per stage (the paper's section 3), and the stochastic-depth
    rate of its ImageNet-1K training (appendix A, Table 5)."""

    widths: tuple[int, ...]  # per stage
    depths: tuple[int, ...]
    drop_path_rate: float


CONFIGS: dict[str, ConvNeXtConfig] = {
    "convnext_tiny": ConvNeXtConfig((96, 192, 384, 768), (3, 3, 9, 3), 0.1),
    "convnext_small": ConvNeXtConfig((96, 192, 384, 768), (3, 3, 27, 3), 0.4),
    "convnext_base": ConvNeXtConfig((128, 256, 512, 1024), (3, 3, 27, 3), 0.5),
    "convnext_large": ConvNeXtConfig((192, 384, 768, 1536), (3, 3, 27, 3), 0.5),
}


class ConvNeXtBlock(nn.Module):
    """``x <- x + gamma * MLP(LN(DWConv7x7(x)))`` (the paper's Fig. 4, right).

    The depthwise conv works on ``(B, C, H, W)``; LayerNorm, the MLP and the layer
    scale ``gamma`` (initialised to 1e-6) on the channels-last view.
    """

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale: float = 1e-6):
        super().__init__()
        self.dwconv = DepthwiseConv(dim, 7, bias=True)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.layer_scale = nn.Parameter(torch.full((dim,), layer_scale))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.dwconv(x).permute(0, 2, 3, 1))) * self.layer_scale
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class ConvNeXt(nn.Module):
    """ConvNeXt-T/S/B/L: patchify stem, four stages (``downsample`` then ``blocks``), global
    average pooling, LayerNorm, linear head. Any image size >= 32."""

    def __init__(
        self,
        config: ConvNeXtConfig,
        num_classes: int = 1000,
        image_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        drop_path_rate: float | None = None,
        layer_scale: float = 1e-6,
    ):
        super().__init__()
        check_image_size(image_size)
        self.config, self.in_chans = config, in_chans
        C = config.widths
        self.stem = nn.Sequential(nn.Conv2d(in_chans, C[0], 4, 4), LayerNorm2d(C[0], eps=1e-6))
        rate = config.drop_path_rate if drop_path_rate is None else drop_path_rate
        rates = iter(drop_path_rates(rate, sum(config.depths)))
        stages = []
        for s, depth in enumerate(config.depths):
            downsample = (
                nn.Sequential(LayerNorm2d(C[s - 1], eps=1e-6), nn.Conv2d(C[s - 1], C[s], 2, 2)) if s else nn.Identity()
            )
            blocks = nn.Sequential(*[ConvNeXtBlock(C[s], next(rates), layer_scale) for _ in range(depth)])
            stages.append(nn.Sequential(OrderedDict(downsample=downsample, blocks=blocks)))
        self.stages = nn.Sequential(*stages)
        self.num_features = C[-1]
        self.norm = nn.LayerNorm(C[-1], eps=1e-6)
        self.head = nn.Linear(C[-1], num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> the last feature map ``(B, C4, H/32, W/32)``."""
        check_images(x, self.in_chans, dtype=next(self.parameters()).dtype)
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.forward_features(x).mean((2, 3))))


@register_model
def convnext_tiny(**kwargs) -> ConvNeXt:
    """ConvNeXt-T (Liu et al. 2022, section 3): C = (96, 192, 384, 768), B = (3, 3, 9, 3); 28.6M parameters."""
    return ConvNeXt(CONFIGS["convnext_tiny"], **kwargs)


@register_model
def convnext_small(**kwargs) -> ConvNeXt:
    """ConvNeXt-S (Liu et al. 2022, section 3): C = (96, 192, 384, 768), B = (3, 3, 27, 3); 50.2M parameters."""
    return ConvNeXt(CONFIGS["convnext_small"], **kwargs)


@register_model
def convnext_base(**kwargs) -> ConvNeXt:
    """ConvNeXt-B (Liu et al. 2022, section 3): C = (128, 256, 512, 1024), B = (3, 3, 27, 3); 88.6M parameters."""
    return ConvNeXt(CONFIGS["convnext_base"], **kwargs)


@register_model
def convnext_large(**kwargs) -> ConvNeXt:
    """ConvNeXt-L (Liu et al. 2022, section 3): C = (192, 384, 768, 1536), B = (3, 3, 27, 3); 197.8M parameters."""
    return ConvNeXt(CONFIGS["convnext_large"], **kwargs)


# torchvision's names -> coatlib's (``coatlib.load_torchvision_weights``)
TORCHVISION_RULES = [
    (r"^features\.0\.", "stem."),
    TORCHVISION_STAGES,
    (r"\.block\.0\.", ".dwconv."),
    (r"\.block\.2\.", ".norm."),
    (r"\.block\.3\.", ".mlp.fc1."),
    (r"\.block\.5\.", ".mlp.fc2."),
    (r"^classifier\.0\.", "norm."),
    (r"^classifier\.2\.", "head."),
]


def torchvision_mapping(model: ConvNeXt) -> tuple[Rename, Convert]:
    """``(rename, convert)`` from torchvision's ConvNeXt state dict to ``model``'s: the layer scale is
    ``(C, 1, 1)`` there and ``(C,)`` here."""

    def convert(key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if key.endswith("layer_scale") and value.numel() == target.numel():
            return value.reshape(target.shape)
        return value

    return renamer(TORCHVISION_RULES), convert
