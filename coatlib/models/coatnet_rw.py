"""timm's "rw" CoAtNets: the only CoAtNets with public ImageNet weights.

The paper's authors never released CoAtNet weights. Ross Wightman trained six
CoAtNets for timm (``coatnet_nano_rw_224.sw_in1k``, ``coatnet_0_rw_224.sw_in1k``,
``coatnet_1_rw_224.sw_in1k``, ``coatnet_bn_0_rw_224.sw_in1k``,
``coatnet_2_rw_224.sw_in12k_ft_in1k``, ``coatnet_3_rw_224.sw_in12k``) before the
official code appeared, and they differ from the paper's CoAtNet
(:mod:`coatlib.models.coatnet`) in the ways timm lists in the docstring of
``_rw_coat_cfg`` (``timm/models/maxxvit.py``). This module builds them exactly
as timm does, so that :func:`coatlib.weights.load_timm_weights` can load their
weights; the paper's blocks stay as they are, and the differences live here.

==========================  ================================  ================================  =====================================
 part                        timm's rw models                  the paper                         why it matters
==========================  ================================  ================================  =====================================
 MBConv pre-norm             BN then SiLU (nano: BN only)      BN only (Eq. 5)                   the residual branch starts with a
                                                                                                 non-linearity: another function
 MBConv expansion            4 x *input* width                 4 x output width                  the first block of a stage is
                                                                                                 narrower inside (S1 of rw-0: 256
                                                                                                 channels, not 384)
 MBConv activation           SiLU                              GELU                              another non-linearity everywhere in
                                                                                                 S0..S2
 squeeze-excitation          ReLU (0, 1, bn_0) or SiLU;        GELU (official code: SiLU);       the channel gate sees different
                             squeezes to 1/4 of the            1/4 of the output width           features and has other sizes
                             expanded width; in 0, 1, bn_0
                             between the depthwise conv and
                             its BatchNorm
 MBConv down-sampling        2x2 average pool before the       stride 2 on the first 1x1 conv    where resolution is lost: pool
                             1x1 conv (nano, 0) or stride 2    (Table 9: or on the depthwise     averages all pixels, a strided 1x1
                             on the depthwise conv (others)    conv)                             conv drops 3 of 4
 MBConv biases               no bias on the shortcut's 1x1     bias on both                      fewer parameters; an offset must come
                             conv and the last 1x1 conv                                          from the BatchNorms instead
                             (nano: both have one)
 shortcut pooling            2x2 average                       2x2 max                           a smoother down-sampled residual
 attention width             q, k, v at the *input* width;     q, k, v at the output width       in the first block of S3/S4 half the
                             the output projection widens                                        heads (S3 of rw-0: 6 heads, not 12)
 Transformer shortcut bias   none in 0, 1, bn_0 (nano, 2, 3:   bias on Proj                      fewer parameters
                             a bias, as in the paper)
 Transformer norm            LayerNorm eps 1e-6;               LayerNorm                         bn_0 is all-BatchNorm, foldable into
                             BatchNorm in bn_0                                                   the convs at inference
 layer scale                 learned per-channel scale on      none                              rw-3's branches start near zero (1e-6)
                             both branches (rw-3 only)
 stem                        conv 3x3 s2 to D0/2, BN, SiLU,    two convs of width D0, GELU       a narrower, cheaper stem
                             conv 3x3 to D0 (rw-0: 32, 64)
 depth                       rw-0 and bn_0: S3 has 7 blocks    CoAtNet-0: 5                      rw-0 is CoAtNet-0 plus two blocks
 head                        LayerNorm (bn_0: BatchNorm) on    pool, LayerNorm, D x D tanh       no pre-logits layer
                             the map, pool, linear             pre-logits, linear
==========================  ================================  ================================  =====================================

The choices that differ between the six models, per model and beside the
paper's (:func:`per_model_table`, read from each model's :class:`RwConfig`; a
test keeps this copy equal to it, and another that each model gives timm's
logits):

===============================  ======  ======  ======  ======  ======  ======  ======
the choice                       paper   nano    0       1       bn_0    2       3
===============================  ======  ======  ======  ======  ======  ======  ======
SiLU after the MBConv pre-norm   no      no      yes     yes     yes     yes     yes
SE before the depthwise BN       no      no      yes     yes     yes     no      no
activation inside SE             GELU    SiLU    ReLU    ReLU    ReLU    SiLU    SiLU
bias: MBConv shortcut, last 1x1  yes     yes     no      no      no      no      no
MBConv down-sampling             1x1 s2  pool    pool    dw s2   dw s2   dw s2   dw s2
bias: Transformer shortcut       yes     yes     no      no      no      yes     yes
norm: Transformer blocks, head   LN      LN      LN      LN      BN      LN      LN
layer scale (initial value)      no      no      no      no      no      no      1e-6
===============================  ======  ======  ======  ======  ======  ======  ======

So early SE (with ReLU) and no Transformer shortcut bias only in 0, 1 and
bn_0; stride-2 depthwise down-sampling in 1, 2, 3 and bn_0; BatchNorm in the
Transformer blocks only in bn_0; layer scale only in 3. ``coatnet_nano_rw``
follows timm's MaxViT-style defaults (``_rw_max_cfg``): no activation after the
pre-norm, SE after the depthwise BatchNorm with SiLU, and biases on the
MBConv's 1x1 convs.

Not built here: timm's trained ``coatnet_rmlp_*_rw`` models, whose relative
bias is not a table but a small MLP (2 -> 384 or 512 -> ReLU -> one output per
head) of the log-spaced offset ``sign(d) log(1 + |d|)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from coatlib.attention import RelativeAttention
from coatlib.blocks import TransformerBlock
from coatlib.layers import (
    ConvNormAct,
    DepthwiseConv,
    Downsample,
    DropPath,
    LayerNorm2d,
    SqueezeExcite,
    conv1x1,
    init_weights,
    make_pool,
)
from coatlib.models.coatnet import TIMM_OPTIONS, CoAtNetBase, StageSpec, build_stages, check_coatnet_size
from coatlib.registry import register_model


@dataclass(frozen=True)
class RwConfig:
    """One of timm's ``model_cfgs`` for an rw CoAtNet (``timm/models/maxxvit.py``)."""

    stem: tuple[int, int]  # widths of the stem's two convs
    depths: tuple[int, int, int, int]  # blocks in S1..S4 (C-C-T-T)
    widths: tuple[int, int, int, int]  # D of S1..S4
    down: str = "dw"  # where an MBConv halves the map: "pool" (2x2 average pool first) or "dw" (stride 2)
    pre_norm_act: bool = True  # SiLU after the MBConv's pre-norm BatchNorm
    se_early: bool = True  # SE between the depthwise conv and its BatchNorm (else after its SiLU)
    se_act: str = "relu"  # the activation inside SE
    conv_bias: bool = False  # a bias on the MBConv's shortcut conv and last 1x1 conv
    attn_shortcut_bias: bool = False  # a bias on the Transformer block's shortcut conv
    attn_norm: str = "layernorm"  # the Transformer blocks' and the head's norm: "layernorm" or "batchnorm"
    layer_scale: float | None = None  # initial value of the per-channel scale of each branch (None: none)
    head_dim: int = 32
    s3_conv: ClassVar[None] = None  # S3 is all Transformer blocks (for coatlib.models.coatnet.stage_plan)


RW_CONFIGS: dict[str, RwConfig] = {
    "coatnet_nano_rw": RwConfig(
        (32, 64),
        (3, 4, 6, 3),
        (64, 128, 256, 512),
        down="pool",
        pre_norm_act=False,
        se_early=False,
        se_act="silu",
        conv_bias=True,
        attn_shortcut_bias=True,
    ),
    "coatnet_0_rw": RwConfig((32, 64), (2, 3, 7, 2), (96, 192, 384, 768), down="pool"),
    "coatnet_1_rw": RwConfig((32, 64), (2, 6, 14, 2), (96, 192, 384, 768)),
    "coatnet_bn_0_rw": RwConfig((32, 64), (2, 3, 7, 2), (96, 192, 384, 768), attn_norm="batchnorm"),
    "coatnet_2_rw": RwConfig(
        (64, 128), (2, 6, 14, 2), (128, 256, 512, 1024), se_early=False, se_act="silu", attn_shortcut_bias=True
    ),
    "coatnet_3_rw": RwConfig(
        (96, 192),
        (2, 6, 14, 2),
        (192, 384, 768, 1536),
        se_early=False,
        se_act="silu",
        attn_shortcut_bias=True,
        layer_scale=1e-6,
    ),
}

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU}
NORMS = {"layernorm": LayerNorm2d, "batchnorm": nn.BatchNorm2d}

# The choices that differ between the six models: (what, the paper's choice, the model's, read from its RwConfig).
_YES = {True: "yes", False: "no"}
_NAMES = {"relu": "ReLU", "silu": "SiLU", "pool": "pool", "dw": "dw s2", "layernorm": "LN", "batchnorm": "BN"}
PER_MODEL = (
    ("SiLU after the MBConv pre-norm", "no", lambda c: _YES[c.pre_norm_act]),
    ("SE before the depthwise BN", "no", lambda c: _YES[c.se_early]),
    ("activation inside SE", "GELU", lambda c: _NAMES[c.se_act]),
    ("bias: MBConv shortcut, last 1x1", "yes", lambda c: _YES[c.conv_bias]),
    ("MBConv down-sampling", "1x1 s2", lambda c: _NAMES[c.down]),
    ("bias: Transformer shortcut", "yes", lambda c: _YES[c.attn_shortcut_bias]),
    ("norm: Transformer blocks, head", "LN", lambda c: _NAMES[c.attn_norm]),
    (
        "layer scale (initial value)",
        "no",
        lambda c: f"{c.layer_scale:.0e}".replace("e-0", "e-") if c.layer_scale else "no",
    ),
)


def per_model_table() -> str:
    """The choices that differ between timm's six rw models, one column per model and one for the
    paper, read from ``RW_CONFIGS`` (the table in this module's docstring)."""
    short = [name.removeprefix("coatnet_").removesuffix("_rw") for name in RW_CONFIGS]
    rule = "  ".join(["=" * 31, *["=" * 6] * (len(short) + 1)])
    lines = [rule, "  ".join([f"{'the choice':31s}", f"{'paper':6s}", *(f"{n:6s}" for n in short)]).rstrip(), rule]
    for what, paper, value in PER_MODEL:
        cells = [f"{value(config):6s}" for config in RW_CONFIGS.values()]
        lines.append("  ".join([f"{what:31s}", f"{paper:6s}", *cells]).rstrip())
    return "\n".join([*lines, rule])


class RwMBConv(nn.Module):
    """timm's rw MBConv (``MbConvBlock``), pre-norm:

    ``x <- Proj(Pool(x)) + Conv1x1(SE(Act(BN(DepthConv(Conv1x1(Down(Act(BN(x)))))))))``

    with the SE before or after the depthwise conv's BatchNorm (``se_early``).
    The 1x1 conv expands to ``4 x in_chs`` (the paper: ``4 x out_chs``); SE
    squeezes to a quarter of that; the activation is SiLU. A down-sampling block
    pools 2x2 before the first 1x1 conv (``down="pool"``) or strides its
    depthwise conv (``"dw"``). Its own class, not switches of the paper's
    :class:`~coatlib.blocks.MBConv`: the SE inside the depthwise unit and the
    pool before the 1x1 conv change the block's graph and its timm-mapped keys.
    """

    def __init__(self, in_chs: int, out_chs: int, config: RwConfig, stride: int = 1, drop_path: float = 0.0):
        super().__init__()
        mid_chs = 4 * in_chs
        pool_first = config.down == "pool" and stride != 1
        self.shortcut = Downsample(in_chs, out_chs, stride, TIMM_OPTIONS["pool"], bias=config.conv_bias)
        self.norm = nn.BatchNorm2d(in_chs)
        self.norm_act = nn.SiLU() if config.pre_norm_act else nn.Identity()
        self.down = make_pool(TIMM_OPTIONS["pool"], stride) if pool_first else nn.Identity()
        self.expand = ConvNormAct(in_chs, mid_chs, 1, act_layer=nn.SiLU)
        self.dw = DepthwiseConv(mid_chs, 3, 1 if pool_first else stride)
        self.se_early = config.se_early
        self.se = SqueezeExcite(mid_chs, mid_chs // 4, ACTIVATIONS[config.se_act])
        self.dw_norm = nn.Sequential(nn.BatchNorm2d(mid_chs), nn.SiLU())
        self.project = conv1x1(mid_chs, out_chs, bias=config.conv_bias)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W)
        out = self.norm_act(self.norm(x))  # pre-norm, with SiLU in timm's rw models
        out = self.down(out)  # 2x2 average pool ("pool" down-sampling)
        out = self.expand(out)  # 1x1 conv + BN + SiLU: (B, 4 C_in, H/s, W/s)
        out = self.dw(out)  # 3x3 depthwise conv (stride 2 with "dw" down-sampling)
        if self.se_early:
            out = self.se(out)
        out = self.dw_norm(out)
        if not self.se_early:
            out = self.se(out)
        out = self.project(out)  # 1x1 conv: (B, C_out, H/s, W/s)
        return self.shortcut(x) + self.drop_path(out)


class RwRelativeAttention(RelativeAttention):
    """Relative attention (Eq. 3) at the *input* width: ``dim / head_dim`` heads, and the output
    projection maps ``dim -> dim_out`` (timm's ``expand_first=False``; the paper computes q, k, v
    at the output width)."""

    def __init__(self, dim: int, dim_out: int, head_dim: int, map_size: tuple[int, int], softmax: str = "pre"):
        super().__init__(dim, dim, head_dim, map_size, softmax)
        self.proj = nn.Linear(dim, dim_out)


class RwTransformerBlock(TransformerBlock):
    """timm's rw Transformer block (``TransformerBlock2d``): the paper's
    :class:`~coatlib.blocks.TransformerBlock` with timm's switches,

    ``x <- Proj(Pool(x)) + LS(Attention(Pool(Norm(x))))``   (Eq. 4, attention at the input width)
    ``x <- x + LS(FFN(Norm(x)))``

    Pool is a 2x2 average; Norm a LayerNorm with eps 1e-6 (BatchNorm in bn_0);
    LS the layer scale of rw-3 (identity elsewhere).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        map_size: tuple[int, int],
        config: RwConfig,
        stride: int = 1,
        drop_path: float = 0.0,
    ):
        super().__init__(
            in_dim,
            out_dim,
            map_size,
            stride,
            config.head_dim,
            pool=TIMM_OPTIONS["pool"],
            norm_eps=TIMM_OPTIONS["norm_eps"],
            drop_path=drop_path,
            norm_layer=NORMS[config.attn_norm],
            shortcut_bias=config.attn_shortcut_bias,
            attn_layer=RwRelativeAttention,
            layer_scale=config.layer_scale,
        )


class RwCoAtNet(CoAtNetBase):
    """A timm rw CoAtNet: stem S0, stages S1..S4 (C-C-T-T) of :class:`RwMBConv` and
    :class:`RwTransformerBlock`, then a norm on the last map, global average pooling and a
    linear classifier. ``model.plan``, ``model.stem``, ``model.stages[i].blocks`` and the
    relative-attention modules are laid out as in the paper's :class:`~coatlib.models.coatnet.CoAtNet`.
    """

    CONFIGS = RW_CONFIGS
    layout = "C-C-T-T"

    def __init__(
        self,
        config: RwConfig,
        num_classes: int = 1000,
        image_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.config, self.in_chans = config, in_chans
        self.image_size = check_coatnet_size(image_size, self.layout)
        stem, *runs = self.plan

        def block(run: StageSpec, in_width: int, stride: int, drop_path: float) -> nn.Module:
            if run.kind == "C":
                return RwMBConv(in_width, run.width, config, stride, drop_path)
            return RwTransformerBlock(in_width, run.width, run.size, config, stride, drop_path)

        self.stem = nn.Sequential(  # S0: conv3x3 s2 + BN + SiLU, conv3x3
            ConvNormAct(in_chans, config.stem[0], 3, 2, act_layer=nn.SiLU),
            nn.Conv2d(config.stem[0], stem.width, 3, 1, padding=1, bias=False),
        )
        self.stages = build_stages(runs, block, drop_path_rate)
        self.num_features = runs[-1].width
        self.norm = NORMS[config.attn_norm](self.num_features, eps=TIMM_OPTIONS["norm_eps"])
        self.head = nn.Linear(self.num_features, num_classes)
        init_weights(self)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.forward_features(x))  # the norm acts on every position of the map
        return self.head(x.mean((2, 3)))  # global average pooling, then the classifier


def _builder(name: str):
    def build(**kwargs) -> RwCoAtNet:
        return RwCoAtNet(RW_CONFIGS[name], **kwargs)

    build.__name__ = name
    build.__doc__ = f"timm's {name}_224 (weights: coatlib.weights.PRETRAINED[{name!r}]): {RW_CONFIGS[name]}"
    build.__annotations__ = {"return": RwCoAtNet}  # create_model reads the accepted keywords from it
    return build


for _name in RW_CONFIGS:
    register_model(_builder(_name))
