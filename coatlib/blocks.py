"""The residual blocks, one class per block idea.

* :class:`MBConv`: CoAtNet's pre-norm inverted bottleneck, the paper's Eq. 5.
* :class:`TransformerBlock`: CoAtNet's relative-attention block, Eq. 4 and the FFN.
* :class:`InvertedResidual`: the post-norm inverted residual of MobileNetV2/V3 and
  EfficientNet, the block MBConv descends from.
* :class:`FusedMBConv`: EfficientNetV2's block, one full conv in place of the
  1x1 expansion and the depthwise conv.

Every block maps a channels-first map ``(B, C_in, H, W)`` to ``(B, C_out, H/s, W/s)``.
CoAtNet stores its maps channels-last in memory (``torch.channels_last``), so the
Transformer block's switch to tokens ``(B, H*W, C)`` is a view, not a copy.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from coatlib.attention import RelativeAttention
from coatlib.layers import (
    ConvNormAct,
    Downsample,
    DropPath,
    Layer,
    LayerNorm2d,
    LayerScale2d,
    Mlp,
    SqueezeExcite,
    conv1x1,
    make_pool,
)


class MBConv(nn.Module):
    """CoAtNet's MBConv block (appendix A.1, Eq. 5), pre-activation:

    ``x <- Proj(Pool(x)) + Conv1x1(SE(DepthConv(Conv1x1(BN(x), stride))))``

    The first 1x1 conv expands to ``expand_ratio * out_chs`` channels (4 in the
    paper), the ``kernel_size`` (3 in the paper) depthwise conv mixes each channel with its neighbours (Eq. 1),
    squeeze-excitation reweights the channels (shrink ratio 0.25 of the output
    width), and the last 1x1 conv projects back to ``out_chs`` with a bias and
    no norm. The shortcut ``Proj(Pool(x))`` pools (2x2, stride 2) and projects
    (1x1 conv) only when the block changes the size or the width.

    ``downsample="conv"`` puts the stride on the first 1x1 conv (Eq. 5, the
    paper's default); ``"dw"`` on the depthwise conv (the paper's Table 9
    alternative, and timm's). ``se_act_layer`` is the activation inside SE
    (default: ``act_layer``, GELU; timm and the official code use SiLU).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        kernel_size: int = 3,
        expand_ratio: int = 4,
        se_ratio: float = 0.25,
        downsample: str = "conv",
        pool: str = "max",
        act_layer: Layer = nn.GELU,
        se_act_layer: Layer | None = None,
        drop_path: float = 0.0,
    ):
        super().__init__()
        if downsample not in ("conv", "dw"):
            raise ValueError(f"downsample must be 'conv' (Eq. 5) or 'dw' (Table 9), got {downsample!r}")
        mid_chs = round(expand_ratio * out_chs)
        stride_1x1, stride_dw = (stride, 1) if downsample == "conv" else (1, stride)
        self.shortcut = Downsample(in_chs, out_chs, stride, pool)
        self.norm = nn.BatchNorm2d(in_chs)
        self.expand = ConvNormAct(in_chs, mid_chs, 1, stride_1x1, act_layer=act_layer)
        self.dw = ConvNormAct(mid_chs, mid_chs, kernel_size, stride_dw, groups=mid_chs, act_layer=act_layer)
        self.se = SqueezeExcite(mid_chs, round(se_ratio * out_chs), se_act_layer or act_layer)
        self.project = conv1x1(mid_chs, out_chs)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W)
        shortcut = self.shortcut(x)  # Proj(Pool(x)): (B, C_out, H/s, W/s)
        out = self.norm(x)  # pre-activation BatchNorm
        out = self.expand(out)  # 1x1 conv, stride s: (B, 4 C_out, H/s, W/s)
        out = self.dw(out)  # k x k depthwise conv, Eq. 1
        out = self.se(out)  # squeeze-excitation
        out = self.project(out)  # 1x1 conv: (B, C_out, H/s, W/s)
        return shortcut + self.drop_path(out)


class TransformerBlock(nn.Module):
    """CoAtNet's Transformer block with relative attention (section 3.2, appendix A.1), pre-norm:

    ``x <- Proj(Pool(x)) + Attention(Pool(LN(x)))``   (Eq. 4)
    ``x <- x + FFN(LN(x))``

    Pool (2x2, stride 2) and Proj (a 1x1 conv, the same linear map at every
    position) appear only in a block that changes the size or the width: the
    first of a stage. ``map_size`` is the size of the map after pooling, the
    map the attention sees. The FFN is ``fc2(GELU(fc1(x)))``, ``ffn_ratio``
    times wider inside, applied to every position's channels.

    Switches for timm's rw variants (:mod:`coatlib.models.coatnet_rw`), the paper's
    choice first: ``norm_layer`` (LayerNorm; or BatchNorm) and ``norm_eps`` (PyTorch's
    1e-5; timm 1e-6); ``shortcut_bias`` on Proj; ``attn_layer``, the attention
    (``RelativeAttention``, whose q, k, v have the output width); ``layer_scale``, the
    initial value of a learned per-channel scale ``LS`` on both branches
    (``x <- x + LS(FFN(LN(x)))``; ``None``: no scale, ``ls1`` and ``ls2`` are identities).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        map_size: tuple[int, int],
        stride: int = 1,
        head_dim: int = 32,
        softmax: str = "pre",
        ffn_ratio: int = 4,
        pool: str = "max",
        norm_eps: float = 1e-5,
        drop_path: float = 0.0,
        norm_layer: Layer = LayerNorm2d,
        shortcut_bias: bool = True,
        attn_layer: Layer = RelativeAttention,
        layer_scale: float | None = None,
    ):
        super().__init__()

        def scale() -> nn.Module:
            return nn.Identity() if layer_scale is None else LayerScale2d(out_dim, layer_scale)

        self.shortcut = Downsample(in_dim, out_dim, stride, pool, bias=shortcut_bias)
        self.norm1 = norm_layer(in_dim, eps=norm_eps)
        self.pool = make_pool(pool, stride) if stride != 1 else nn.Identity()
        self.attn = attn_layer(in_dim, out_dim, head_dim, map_size, softmax)
        self.ls1 = scale()
        self.norm2 = norm_layer(out_dim, eps=norm_eps)
        self.ffn = Mlp(out_dim, ffn_ratio * out_dim, channels_first=True)
        self.ls2 = scale()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H/s, W/s)
        x = self.shortcut(x) + self.drop_path(self.ls1(self.attn(self.pool(self.norm1(x)))))  # Eq. 4
        x = x + self.drop_path(self.ls2(self.ffn(self.norm2(x))))
        return x


class InvertedResidual(nn.Module):
    """The inverted residual of MobileNetV2 (Sandler et al. 2018), with the optional
    squeeze-excitation of MobileNetV3 and EfficientNet; post-norm:

    ``x <- x + BN(Conv1x1(SE(Act(BN(DepthConv(Act(BN(Conv1x1(x)))))))))``

    expand (1x1 conv to ``mid_chs``, left out when ``mid_chs == in_chs``) ->
    ``dw`` (k x k depthwise conv, carrying the stride) -> ``se`` -> ``project``
    (1x1 conv back to ``out_chs``, BatchNorm and no activation: the "linear
    bottleneck"). The identity shortcut exists only when the shape is unchanged.
    ``se_chs = 0`` leaves SE out; ``se_act_layer`` and ``se_gate_layer`` are
    its activation and gate (MobileNetV3: ReLU and hard-sigmoid).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        mid_chs: int,
        stride: int = 1,
        kernel_size: int = 3,
        se_chs: int = 0,
        act_layer: Layer = nn.ReLU,
        se_act_layer: Layer | None = None,
        se_gate_layer: Layer = nn.Sigmoid,
        norm_layer: Layer = nn.BatchNorm2d,
        drop_path: float = 0.0,
    ):
        super().__init__()
        if mid_chs != in_chs:
            self.expand = ConvNormAct(in_chs, mid_chs, 1, norm_layer=norm_layer, act_layer=act_layer)
        else:  # expansion ratio 1 (the first EfficientNet stage): no expand conv
            self.expand = nn.Identity()
        self.dw = ConvNormAct(
            mid_chs, mid_chs, kernel_size, stride, groups=mid_chs, norm_layer=norm_layer, act_layer=act_layer
        )
        if se_chs > 0:
            self.se = SqueezeExcite(mid_chs, se_chs, se_act_layer or act_layer, se_gate_layer)
        else:
            self.se = nn.Identity()
        self.project = ConvNormAct(mid_chs, out_chs, 1, norm_layer=norm_layer, act_layer=None)
        self.drop_path = DropPath(drop_path)
        self.has_residual = stride == 1 and in_chs == out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W)
        out = self.expand(x)  # 1x1 conv: (B, C_mid, H, W)
        out = self.dw(out)  # k x k depthwise conv: (B, C_mid, H/s, W/s)
        out = self.se(out)
        out = self.project(out)  # 1x1 conv, linear: (B, C_out, H/s, W/s)
        if self.has_residual:
            out = x + self.drop_path(out)
        return out


class FusedMBConv(nn.Module):
    """EfficientNetV2's Fused-MBConv (Tan & Le 2021, Fig. 2), post-norm: one full
    ``k x k`` conv (``expand``, carrying the stride) replaces the 1x1 expansion and
    the depthwise conv, then ``project`` (1x1 conv, BatchNorm, no activation).

    With expansion ratio 1 (``mid_chs == in_chs``) the ``k x k`` conv maps straight to
    ``out_chs`` with its activation and there is no ``project``. The identity
    shortcut exists only when the shape is unchanged.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        mid_chs: int,
        stride: int = 1,
        kernel_size: int = 3,
        act_layer: Layer = nn.SiLU,
        norm_layer: Layer = nn.BatchNorm2d,
        drop_path: float = 0.0,
    ):
        super().__init__()
        if mid_chs == in_chs:  # ratio 1: the k x k conv is the whole block
            self.expand = ConvNormAct(in_chs, out_chs, kernel_size, stride, norm_layer=norm_layer, act_layer=act_layer)
            self.project = nn.Identity()
        else:
            self.expand = ConvNormAct(in_chs, mid_chs, kernel_size, stride, norm_layer=norm_layer, act_layer=act_layer)
            self.project = ConvNormAct(mid_chs, out_chs, 1, norm_layer=norm_layer, act_layer=None)
        self.drop_path = DropPath(drop_path)
        self.has_residual = stride == 1 and in_chs == out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W)
        out = self.expand(x)  # k x k conv: (B, C_mid, H/s, W/s)
        out = self.project(out)  # 1x1 conv, linear: (B, C_out, H/s, W/s)
        if self.has_residual:
            out = x + self.drop_path(out)
        return out
