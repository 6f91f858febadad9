"""Swin Transformer (Liu et al. 2021, "Swin Transformer: Hierarchical Vision Transformer
using Shifted Windows").

A 4x4 patch embedding, then four stages at 1/4, 1/8, 1/16 and 1/32 of the
image; stages 2..4 open with patch merging (2x2 neighbours concatenated,
LayerNorm, linear 4C -> 2C). Each block attends within non-overlapping 7x7
windows (W-MSA); every second block shifts the windows by half a window
(SW-MSA) so that information crosses window borders (section 3.2). The
attention has a relative position bias, one scalar per head per 2-D offset
inside the window (Eq. 4): exactly CoAtNet's relative attention, applied to
windows, so ``WindowAttention`` subclasses ``coatlib.attention.RelativeAttention``.
Configs: the paper's Table 7 (Swin-T/S/B at 224, window 7).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from coatlib.attention import MultiHeadAttention, RelativeAttention
from coatlib.checkpoints import TORCHVISION_STAGES, Convert, Rename, renamer
from coatlib.layers import check_image_size, check_images, drop_path_rates, init_weights
from coatlib.models.vit import EncoderBlock, PatchEmbed
from coatlib.registry import register_model


@dataclass(frozen=True)
class SwinConfig:
    """One row of the paper's Table 7: width C, blocks and heads per stage, and the
    stochastic-depth rate of its ImageNet training (appendix A2.1)."""

    dim: int
    depths: tuple[int, ...]  # blocks per stage
    heads: tuple[int, ...]
    drop_path_rate: float
    window: int = 7
    patch: int = 4


CONFIGS: dict[str, SwinConfig] = {
    "swin_t": SwinConfig(96, (2, 2, 6, 2), (3, 6, 12, 24), 0.2),
    "swin_s": SwinConfig(96, (2, 2, 18, 2), (3, 6, 12, 24), 0.3),
    "swin_b": SwinConfig(128, (2, 2, 18, 2), (4, 8, 16, 32), 0.5),
}

MASKED = -100.0  # the reference code's additive mask for token pairs from different regions


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B * H/w * W/w, w*w, C)``: the tokens of each window, window by window."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C).transpose(2, 3)
    return x.reshape(-1, window * window, C)


def window_reverse(windows: torch.Tensor, window: int, B: int, H: int, W: int) -> torch.Tensor:
    """The inverse of ``window_partition``: ``(B * nW, w*w, C)`` -> ``(B, H, W, C)``."""
    x = windows.view(B, H // window, W // window, window, window, -1).transpose(2, 3)
    return x.reshape(B, H, W, -1)


def shift_mask(height: int, width: int, window: int, shift: tuple[int, int], device=None) -> torch.Tensor:
    """The SW-MSA mask (section 3.2, Fig. 4): ``(nW, w*w, w*w)``, 0 where two tokens of a
    window come from the same region of the un-shifted map, ``MASKED`` otherwise.

    After the cyclic shift, a window at the bottom/right border holds tokens from
    up to 3 x 3 regions that are not neighbours in the image; they must not attend
    to each other. Along each axis the regions are ``[0, P-w)``, ``[P-w, P-s)``,
    ``[P-s, P)`` for a padded length ``P`` and shift ``s``.
    """

    def regions(length: int, s: int) -> torch.Tensor:
        p = torch.arange(length, device=device)
        return (p >= length - window).long() + (p >= length - s).long()  # s = 0: each window in one region

    labels = regions(height, shift[0])[:, None] * 3 + regions(width, shift[1])[None, :]
    labels = window_partition(labels[None, :, :, None], window)[..., 0]  # (nW, w*w)
    return (labels[:, :, None] != labels[:, None, :]).float() * MASKED


class WindowAttention(RelativeAttention):
    """Window multi-head self-attention with relative position bias, W-MSA (``shift=0``) or
    SW-MSA (``shift=window//2``), Swin Eq. 4: ``softmax(QK^T/sqrt(d) + B) V`` inside each window.

    Input and output are channels-last maps ``(B, H, W, C)`` of any size: as
    torchvision does, the map is zero-padded to whole windows (the padding takes
    part in the attention) and a window that covers the whole padded map is not
    shifted. The relative bias (plus the shift mask) goes to the fused
    ``scaled_dot_product_attention`` as its ``attn_mask``.
    """

    def __init__(self, dim: int, head_dim: int = 32, window: int = 7, shift: int = 0):
        super().__init__(dim, dim, head_dim, map_size=window)
        if not 0 <= shift < window:
            raise ValueError(f"shift must be in [0, window={window}), got {shift}")
        self.window, self.shift = window, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        w = self.window
        Hp, Wp = -(-H // w) * w, -(-W // w) * w  # padded to whole windows
        if (Hp, Wp) != (H, W):
            x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
        shift = (self.shift if Hp > w else 0, self.shift if Wp > w else 0)
        if any(shift):
            x = torch.roll(x, (-shift[0], -shift[1]), dims=(1, 2))
        # the parent's attention on the windows, with the bias (+ mask) as attn_mask
        out = MultiHeadAttention.forward(self, window_partition(x, w), self.window_bias(B, Hp, Wp, shift))
        x = window_reverse(out, w, B, Hp, Wp)
        if any(shift):
            x = torch.roll(x, shift, dims=(1, 2))
        return x[:, :H, :W] if (Hp, Wp) != (H, W) else x

    def window_bias(self, batch: int, height: int, width: int, shift: tuple[int, int]) -> torch.Tensor:
        """The additive attention mask of every window: the relative bias ``(heads, N, N)`` when
        nothing is shifted, else ``(batch * nW, heads, N, N)``: bias + shift mask of each window.

        The fused kernel needs the mask laid out like the batch of windows.
        """
        bias = self.relative_bias()
        if not any(shift):
            return bias
        mask = shift_mask(height, width, self.window, shift, bias.device).to(bias.dtype)
        combined = bias[None] + mask[:, None]  # (nW, heads, N, N)
        return combined.expand(batch, -1, -1, -1, -1).flatten(0, 1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, shift={self.shift}"


class PatchMerging(nn.Module):
    """Down-sampling between stages (section 3.1): concatenate the features of each 2x2
    neighbourhood (4C), LayerNorm, then a linear map to 2C. Odd sizes are zero-padded."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1:3]
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class SwinTransformer(nn.Module):
    """Swin-T/S/B (Liu et al. 2021, Table 7): patch embedding, four stages of Swin blocks
    (``EncoderBlock`` with ``WindowAttention``, shifts alternating 0 and window/2), LayerNorm,
    global average pooling, linear head.

    Any image size >= 32. ``window_size`` overrides the window (the bias tables of
    a state dict made for another window are resized bilinearly on load);
    ``drop_path_rate`` defaults to the paper's rate for the model.
    """

    def __init__(
        self,
        config: SwinConfig,
        num_classes: int = 1000,
        image_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        drop_path_rate: float | None = None,
        window_size: int | None = None,
    ):
        super().__init__()
        check_image_size(image_size)
        self.config, self.in_chans = config, in_chans
        window = window_size or config.window
        rate = config.drop_path_rate if drop_path_rate is None else drop_path_rate
        rates = iter(drop_path_rates(rate, sum(config.depths)))
        self.patch_embed = PatchEmbed(in_chans, config.dim, config.patch, norm=True)
        stages = []
        for s, (depth, heads) in enumerate(zip(config.depths, config.heads)):
            dim = config.dim * 2**s
            blocks = [
                EncoderBlock(dim, WindowAttention(dim, dim // heads, window, shift=(b % 2) * (window // 2)), 4 * dim, next(rates), eps=1e-5)
                for b in range(depth)
            ]  # fmt: skip
            stages.append(nn.Sequential(OrderedDict(
                downsample=PatchMerging(dim // 2) if s > 0 else nn.Identity(), blocks=nn.Sequential(*blocks)
            )))  # fmt: skip
        self.stages = nn.Sequential(*stages)
        self.num_features = config.dim * 2 ** (len(config.depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> normalised channels-last map ``(B, H/32, W/32, 8C)``."""
        check_images(x, self.in_chans, dtype=next(self.parameters()).dtype)
        return self.norm(self.stages(self.patch_embed(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean((1, 2)))


@register_model
def swin_t(**kwargs) -> SwinTransformer:
    """Swin-T (Liu et al. 2021, Table 7): C = 96, blocks {2, 2, 6, 2}, 28.3M parameters."""
    return SwinTransformer(CONFIGS["swin_t"], **kwargs)


@register_model
def swin_s(**kwargs) -> SwinTransformer:
    """Swin-S (Liu et al. 2021, Table 7): C = 96, blocks {2, 2, 18, 2}, 49.6M parameters."""
    return SwinTransformer(CONFIGS["swin_s"], **kwargs)


@register_model
def swin_b(**kwargs) -> SwinTransformer:
    """Swin-B (Liu et al. 2021, Table 7): C = 128, blocks {2, 2, 18, 2}, 87.8M parameters."""
    return SwinTransformer(CONFIGS["swin_b"], **kwargs)


# torchvision's names -> coatlib's (``coatlib.load_torchvision_weights``)
TORCHVISION_RULES = [
    (r"^features\.0\.0\.", "patch_embed.proj."),
    (r"^features\.0\.2\.", "patch_embed.norm."),
    TORCHVISION_STAGES,
    (r"\.attn\.relative_position_bias_table$", ".attn.relative_bias_table"),
    (r"\.mlp\.0\.", ".mlp.fc1."),
    (r"\.mlp\.3\.", ".mlp.fc2."),
]


def torchvision_mapping(model: SwinTransformer) -> tuple[Rename, Convert]:
    """``(rename, convert)`` from torchvision's Swin state dict to ``model``'s: the bias table is
    ``((2w-1)^2, heads)`` there and ``(heads, 2w-1, 2w-1)`` here."""

    def convert(key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if key.endswith("relative_bias_table") and value.ndim == 2:
            side = round(value.shape[0] ** 0.5)
            return value.T.reshape(value.shape[1], side, side)
        return value

    return renamer(TORCHVISION_RULES), convert
