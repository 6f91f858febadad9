"""CoAtNet (Dai, Liu, Le, Tan 2021, "CoAtNet: Marrying Convolution and Attention for All Data Sizes").

The network is a stem S0 and four stages S1..S4, each halving the resolution
(224 -> 112, 56, 28, 14, 7). A stage is made of MBConv blocks ("C") or
relative-attention Transformer blocks ("T"); the paper's CoAtNet is "C-C-T-T"
and section 3.2 compares it with C-C-C-C, C-C-C-T, C-T-T-T and ViT-Rel.
Configs mirror the paper's Table 3 (CoAtNet-0..4) and Table 14 (5..7).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from coatlib.attention import RelativeAttention, num_heads_for
from coatlib.layers import ConvStem, DropPath, MBConv, Mlp, check_images, init_weights, make_pool, pair
from coatlib.registry import register_model


@dataclass(frozen=True)
class CoAtNetConfig:
    """One row of the paper's Table 3 / Table 14: blocks L and width D per stage."""

    stem: int  # S0 width (always 2 conv layers)
    depths: tuple[int, int, int, int]  # L of S1..S4
    widths: tuple[int, int, int, int]  # D of S1..S4
    head_dim: int = 32  # attention head size
    s3_conv: tuple[int, int] | None = None  # (L, D) of the MBConv blocks that open S3 (CoAtNet-6/7)


CONFIGS: dict[str, CoAtNetConfig] = {
    # paper Table 3
    "coatnet_0": CoAtNetConfig(64, (2, 3, 5, 2), (96, 192, 384, 768)),
    "coatnet_1": CoAtNetConfig(64, (2, 6, 14, 2), (96, 192, 384, 768)),
    "coatnet_2": CoAtNetConfig(128, (2, 6, 14, 2), (128, 256, 512, 1024)),
    "coatnet_3": CoAtNetConfig(192, (2, 6, 14, 2), (192, 384, 768, 1536)),
    "coatnet_4": CoAtNetConfig(192, (2, 12, 28, 2), (192, 384, 768, 1536)),
    # paper Table 14 (JFT models): larger heads, and S3 of 6/7 opens with MBConv blocks
    "coatnet_5": CoAtNetConfig(192, (2, 12, 28, 2), (256, 512, 1280, 2048), head_dim=64),
    "coatnet_6": CoAtNetConfig(192, (2, 4, 42, 2), (192, 384, 1536, 2048), head_dim=128, s3_conv=(8, 768)),
    "coatnet_7": CoAtNetConfig(192, (2, 4, 42, 2), (256, 512, 2048, 3072), head_dim=128, s3_conv=(8, 1024)),
    # small configurations for teaching and tests (not in the paper)
    "coatnet_nano": CoAtNetConfig(32, (1, 2, 3, 1), (32, 64, 128, 256)),
    "coatnet_pico": CoAtNetConfig(16, (1, 1, 2, 1), (16, 32, 64, 128), head_dim=16),
}

LAYOUTS = ("C-C-C-C", "C-C-C-T", "C-C-T-T", "C-T-T-T", "ViT-Rel")


def parse_layout(layout: str) -> tuple[str, str, str, str] | None:
    """``"C-C-T-T" -> ("C", "C", "T", "T")``; ``"ViT-Rel" -> None``.

    Raises ``ValueError`` for letters other than C and T, a length other than
    four, attention in S1, or a convolution stage after an attention stage.
    """
    if layout == "ViT-Rel":
        return None
    kinds = tuple(layout.split("-"))
    bad = [k for k in kinds if k not in ("C", "T")]
    if bad or len(kinds) != 4:
        raise ValueError(
            f"invalid layout {layout!r}: expected four stage letters for S1..S4, each C (MBConv) or T "
            f"(Transformer), joined by '-', e.g. 'C-C-T-T'; or 'ViT-Rel'. Valid: {', '.join(LAYOUTS)}"
        )
    if kinds[0] != "C":
        raise ValueError(
            f"invalid layout {layout!r}: S1 is always MBConv in CoAtNet (attention at 1/4 resolution is too "
            f"expensive, paper section 3.2); start the layout with 'C'"
        )
    if "T" in kinds and "C" in kinds[kinds.index("T") :]:
        raise ValueError(
            f"invalid layout {layout!r}: attention stage before a convolution stage. Convolution stages must "
            f"come before Transformer stages (paper section 3.2); valid: {', '.join(LAYOUTS)}"
        )
    return kinds  # type: ignore[return-value]


class TransformerBlock(nn.Module):
    """Pre-norm Transformer block with relative attention (paper section 3.2, appendix A.1).

    ``x <- Proj(Pool(x)) + Attention(Pool(LN(x)))`` then ``x <- x + FFN(LN(x))``.
    Pool (2x2 stride 2) and Proj (a linear map, i.e. a 1x1 conv) appear only in
    the first block of a stage. Works on channels-last maps ``(B, H, W, C)``;
    ``map_size`` is the size after pooling.
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
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.pool = make_pool(pool, stride) if stride != 1 else None
        self.proj = nn.Linear(in_dim, out_dim) if in_dim != out_dim else nn.Identity()
        self.norm1 = nn.LayerNorm(in_dim)
        self.attn = RelativeAttention(in_dim, out_dim, head_dim, map_size, softmax)
        self.norm2 = nn.LayerNorm(out_dim)
        self.ffn = Mlp(out_dim, ffn_ratio * out_dim)
        self.drop_path = DropPath(drop_path)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is None:
            return x
        return self.pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(self._pool(x)) + self.drop_path(self.attn(self._pool(self.norm1(x))))
        return x + self.drop_path(self.ffn(self.norm2(x)))


class CoAtNet(nn.Module):
    """CoAtNet: conv stem S0, stages S1..S4 of MBConv ("C") or Transformer ("T") blocks, then
    the head: global average pooling, LayerNorm, a ``D x D`` pre-logits layer with tanh, and
    a linear classifier.

    Choices where the paper is silent (tested, and discussed in the book):

    * MBConv expands to ``4 x out_chs`` and its squeeze-excitation squeezes to
      ``0.25 x out_chs`` (the paper: "expansion rate 4, SE shrink rate 0.25";
      the official TF code takes both from the block's output width).
    * A LayerNorm follows the global pooling: the residual stream of a pre-norm
      network is never normalised otherwise.
    * The head has a ``D x D`` pre-logits layer with tanh, as in the official TF
      code and timm's paper configs: the paper's parameter counts include it
      (CoAtNet-0: 24.45M without, 25.04M with it; the paper says 25M).
    * CoAtNet-6 as written in Table 14 has 1.35B parameters, not the stated
      1.47B (9% fewer; the Keras re-implementation gets 1.34B too): the table's
      L and D do not add up to the stated count, and we follow the table.
      CoAtNet-7 matches (2.44B).
    * ``layout="ViT-Rel"`` replaces S0..S2 by a 16x16 patch stem at S3's width
      and keeps only Transformer blocks (S3's blocks plus as many as make up
      S1+S2+S4's depth), so it has a size similar to the C-C-T-T model.

    ``downsample="conv"`` puts the stride of a down-sampling MBConv on its first
    1x1 conv (Eq. 5, default); ``"dw"`` on the depthwise conv (Table 9).
    ``pool`` is the shortcut's 2x2 pooling: ``"max"`` (paper) or ``"avg"``.
    """

    def __init__(
        self,
        config: CoAtNetConfig,
        num_classes: int = 1000,
        image_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        layout: str = "C-C-T-T",
        softmax: str = "pre",
        downsample: str = "conv",
        pool: str = "max",
        drop_path_rate: float = 0.0,
        head_dim: int | None = None,
    ):
        super().__init__()
        kinds = parse_layout(layout)
        self.config, self.layout, self.in_chans = config, layout, in_chans
        self.image_size = pair(image_size)
        multiple = 16 if kinds is None else 32
        if any(s <= 0 or s % multiple for s in self.image_size):
            raise ValueError(
                f"image_size {self.image_size} is not supported by layout {layout!r}: height and width must be "
                f"positive multiples of {multiple} (the network down-samples {multiple}x), e.g. 224 or 384"
            )
        head_dim = head_dim or config.head_dim
        H, W = self.image_size

        # every block: (kind, in, out, stride, feature-map size after it)
        plan: list[tuple[str, int, int, int, tuple[int, int]]] = []
        if kinds is None:  # ViT-Rel: one 16x16 patch stem, then only Transformer blocks at 1/16
            width = config.widths[2]
            self.stem = nn.Conv2d(in_chans, width, 16, 16)
            n_blocks = sum(config.depths) + (config.s3_conv[0] if config.s3_conv else 0)
            plan = [("T", width, width, 1, (H // 16, W // 16))] * n_blocks
            self.stage_ends = [n_blocks]
        else:
            self.stem = ConvStem(in_chans, config.stem)
            segments = [[(kinds[i], config.depths[i], config.widths[i])] for i in range(4)]
            if config.s3_conv is not None:
                segments[2].insert(0, ("C", *config.s3_conv))
            c, self.stage_ends = config.stem, []
            for s, stage in enumerate(segments):
                size = (H // 2 ** (s + 2), W // 2 ** (s + 2))
                for seg_i, (kind, depth, width) in enumerate(stage):
                    for b in range(depth):
                        stride = 2 if seg_i == 0 and b == 0 else 1
                        plan.append((kind, c, width, stride, size))
                        c = width
                self.stage_ends.append(len(plan))
        self.num_features = plan[-1][2]

        rates = [drop_path_rate * i / max(len(plan) - 1, 1) for i in range(len(plan))]
        self.blocks = nn.ModuleList()
        for (kind, cin, cout, stride, size), dp in zip(plan, rates):
            if kind == "C":
                block = MBConv(
                    cin, cout, mid_chs=4 * cout, stride=stride, se_chs=cout // 4,
                    stride_on="expand" if downsample == "conv" else "dw", pool=pool, drop_path=dp,
                )
            else:
                num_heads_for(cout, head_dim)  # validate before building
                block = TransformerBlock(cin, cout, size, stride, head_dim, softmax, pool=pool, drop_path=dp)
            block.kind = kind
            self.blocks.append(block)
        if downsample not in ("conv", "dw"):
            raise ValueError(f"downsample must be 'conv' (Eq. 5) or 'dw' (Table 9), got {downsample!r}")

        self.norm = nn.LayerNorm(self.num_features)
        self.pre_logits = nn.Sequential(nn.Linear(self.num_features, self.num_features), nn.Tanh())
        self.head = nn.Linear(self.num_features, num_classes)
        init_weights(self)
        # Convolutions run on NHWC memory (faster with oneDNN and cuDNN), so the switch to
        # the Transformer stages' (B, H, W, C) view is a free permute, not a copy.
        self.to(memory_format=torch.channels_last)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, C, H, W)`` -> final feature map, channels-last ``(B, H/32, W/32, D)``."""
        self._check_input(x)
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        channels_last = False
        for block in self.blocks:
            if block.kind == "T" and not channels_last:
                x, channels_last = x.permute(0, 2, 3, 1), True
            x = block(x)
        return x if channels_last else x.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x).mean((1, 2))
        return self.head(self.pre_logits(self.norm(x)))

    def _check_input(self, x: torch.Tensor) -> None:
        check_images(x, self.in_chans, min_size=1)
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(
                f"this model was built for {self.image_size[0]}x{self.image_size[1]} images but got "
                f"{x.shape[-2]}x{x.shape[-1]}: rebuild it with create_model(..., image_size={tuple(x.shape[-2:])}) "
                f"(a state dict from another size loads and its bias tables are resized) or call "
                f"model.set_image_size({tuple(x.shape[-2:])})"
            )

    def set_image_size(self, image_size: int | tuple[int, int]) -> None:
        """Adapt a built model to another input size: every relative-bias table is resized bilinearly."""
        new = pair(image_size)
        multiple = 16 if self.layout == "ViT-Rel" else 32
        if any(s <= 0 or s % multiple for s in new):
            raise ValueError(f"image_size {new} must be positive multiples of {multiple}")
        for m in self.modules():
            if isinstance(m, RelativeAttention):
                h, w = m.map_size
                m.resize_bias_table((h * new[0] // self.image_size[0], w * new[1] // self.image_size[1]))
        self.image_size = new

    def stages(self) -> list[tuple[str, list[nn.Module]]]:
        """Blocks grouped by stage, named ``s1..s4`` (one group for ViT-Rel)."""
        starts = [0] + self.stage_ends[:-1]
        return [(f"s{i + 1}", list(self.blocks[a:b])) for i, (a, b) in enumerate(zip(starts, self.stage_ends))]


def _builder(name: str, config: str, layout: str = "C-C-T-T"):
    def build(**kwargs) -> CoAtNet:
        return CoAtNet(CONFIGS[config], **{"layout": layout, **kwargs})

    build.__name__ = name
    build.__doc__ = f"{config} with layout {layout}: {CONFIGS[config]}"
    return build


for _name in CONFIGS:
    register_model(_builder(_name, _name))

# Registered small layout variants for experiments (paper section 3.2 on small data),
# e.g. coatnet_pico_cttt, coatnet_nano_vitrel.
for _size in ("coatnet_pico", "coatnet_nano"):
    for _layout in LAYOUTS:
        _variant = f"{_size}_{_layout.replace('-', '').lower()}"
        register_model(_builder(_variant, _size, _layout))
