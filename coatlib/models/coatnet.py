"""CoAtNet (Dai, Liu, Le, Tan 2021, "CoAtNet: Marrying Convolution and Attention for All Data Sizes").

The network is a stem S0 (``model.stem``) and four stages S1..S4
(``model.stages[0..3]``), each halving the resolution (224 -> 112, 56, 28, 14,
7). A stage is made of MBConv blocks ("C") or relative-attention Transformer
blocks ("T"); the paper's CoAtNet is "C-C-T-T" and section 2.2 compares it with
C-C-C-C, C-C-C-T, C-T-T-T and ViT-Rel. Configs mirror the paper's Table 3
(CoAtNet-0..4) and Table 14 (5..7). The blocks themselves are in
:mod:`coatlib.blocks`.

:func:`stage_plan` turns a config, a layout and an image size into the stages
(:class:`StageSpec`: kind, L, D, map size, stride); every CoAtNet (the paper's and
timm's rw variants) is built from it, and the diagrams and stage tables are drawn
from it, so that they cannot disagree.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn as nn

from coatlib.attention import RelativeAttention, num_heads_for
from coatlib.blocks import MBConv, TransformerBlock
from coatlib.layers import ConvNormAct, check_images, drop_path_rates, init_weights, nearest_multiples, pair
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

# The layouts of the paper's section 2.2, in one order for the whole library (the layout study
# runs and shows them in it): ViT-Rel, then the conv stem with ever more attention stages at the end.
LAYOUTS = ("ViT-Rel", "C-C-C-C", "C-C-C-T", "C-C-T-T", "C-T-T-T")
# The kinds of run in a stage plan ("C" and "T" as in a layout's letters) and what their blocks are.
BLOCK_NAMES = {"stem": "conv", "C": "MBConv", "T": "TFMRel"}
# timm's choices for its coatnet_N_224 models where the paper is silent or differs (see CoAtNet's docstring):
# CoAtNet(config, **TIMM_OPTIONS) is timm's model; the rw variants share pool and norm_eps.
TIMM_OPTIONS = {"downsample": "dw", "pool": "avg", "se_act": "silu", "norm_eps": 1e-6}


def parse_layout(layout: str) -> tuple[str, str, str, str] | None:
    """``"C-C-T-T" -> ("C", "C", "T", "T")``; ``"ViT-Rel" -> None``.

    Raises ``ValueError`` for letters other than C and T, a length other than
    four, attention in S1, or a convolution stage after an attention stage.
    """
    if layout == "ViT-Rel":
        return None
    kinds = tuple(layout.split("-")) if isinstance(layout, str) else ()
    bad = [k for k in kinds if k not in ("C", "T")]
    if bad or len(kinds) != 4:
        raise ValueError(
            f"invalid layout {layout!r}: expected four stage letters for S1..S4, each C (MBConv) or T "
            f"(Transformer), joined by '-', e.g. 'C-C-T-T'; or 'ViT-Rel'. Valid: {', '.join(LAYOUTS)}"
        )
    if kinds[0] != "C":
        raise ValueError(
            f"invalid layout {layout!r}: S1 is always MBConv in CoAtNet (attention at 1/4 resolution is too "
            f"expensive, paper section 2.2); start the layout with 'C'"
        )
    if "T" in kinds and "C" in kinds[kinds.index("T") :]:
        raise ValueError(
            f"invalid layout {layout!r}: attention stage before a convolution stage. Convolution stages must "
            f"come before Transformer stages (paper section 2.2); valid: {', '.join(LAYOUTS)}"
        )
    return kinds  # type: ignore[return-value]


@dataclass(frozen=True)
class StageSpec:
    """One run of equal blocks: a row of the paper's Table 3 (a stage, or part of one).

    The first block of the run takes ``in_width`` channels and the ``stride``; the
    others keep ``width`` channels and stride 1. S3 of CoAtNet-6/7 is two runs
    (MBConv, then Transformer blocks); ViT-Rel's single stage is named ``"S1-S4"``.
    """

    stage: str  # "S0" .. "S4"
    kind: str  # "stem", "C" (MBConv) or "T" (Transformer with relative attention): BLOCK_NAMES
    blocks: int  # L (the stem: its convs)
    width: int  # D, the channels after the run
    size: tuple[int, int]  # (H, W) of the feature map after the run's first block
    in_width: int  # channels into the run
    stride: int  # the first block's stride (the stem's: the whole down-sampling it does)
    head_dim: int | None = None  # attention head size, in a "T" run

    @property
    def heads(self) -> int | None:
        """Attention heads of a "T" run: ``width / head_dim``."""
        return None if self.head_dim is None else self.width // self.head_dim


def stage_plan(
    config, layout: str = "C-C-T-T", image_size: int | tuple[int, int] = 224, in_chans: int = 3
) -> tuple[StageSpec, ...]:
    """The stages of a CoAtNet: the stem S0, then S1..S4 as runs of blocks (:class:`StageSpec`).

    ``config`` gives ``stem`` (the stem's width, or its two convs' widths), ``depths``,
    ``widths``, ``head_dim`` and ``s3_conv`` (the MBConv run that opens S3 in CoAtNet-6/7);
    a :class:`CoAtNetConfig` or an rw model's ``RwConfig``. Every CoAtNet is built from
    this plan, and the figures and stage tables are drawn from it. Raises ``ValueError``
    for an invalid layout, image size or head size.
    """
    kinds = parse_layout(layout)
    H, W = check_coatnet_size(image_size, layout)
    head_dim = config.head_dim
    if kinds is None:  # ViT-Rel: one 16x16 patch stem at S3's width, then only Transformer blocks at 1/16
        width, size = config.widths[2], (H // 16, W // 16)
        depth = sum(config.depths) + (config.s3_conv[0] if config.s3_conv else 0)
        plan = [
            StageSpec("S0", "stem", 1, width, size, in_chans, 16),
            StageSpec("S1-S4", "T", depth, width, size, width, 1, head_dim),
        ]
    else:
        stem = config.stem if isinstance(config.stem, int) else config.stem[-1]
        plan = [StageSpec("S0", "stem", 2, stem, (H // 2, W // 2), in_chans, 2)]
        for s, (kind, depth, width) in enumerate(zip(kinds, config.depths, config.widths), start=1):
            runs = [(kind, depth, width)]
            if s == 3 and config.s3_conv is not None:  # CoAtNet-6/7 open S3 with MBConv blocks
                runs.insert(0, ("C", *config.s3_conv))
            size = (H // 2 ** (s + 1), W // 2 ** (s + 1))
            for i, (k, d, w) in enumerate(runs):
                head = head_dim if k == "T" else None
                plan.append(StageSpec(f"S{s}", k, d, w, size, plan[-1].width, 2 if i == 0 else 1, head))
    for run in plan:
        if run.kind == "T":
            num_heads_for(run.width, head_dim)  # a clear error before anything is built
    return tuple(plan)


def build_stages(runs: list[StageSpec], block: Callable[..., nn.Module], drop_path_rate: float) -> nn.ModuleList:
    """The stages S1..S4 of a plan: ``block(run, in_width, stride, drop_path)`` for every block of every
    run, with stochastic depth growing linearly over all blocks."""
    rates = iter(drop_path_rates(drop_path_rate, sum(run.blocks for run in runs)))
    stages: dict[str, list[nn.Module]] = {}
    for run in runs:
        for i in range(run.blocks):
            in_width, stride = (run.in_width, run.stride) if i == 0 else (run.width, 1)
            stages.setdefault(run.stage, []).append(block(run, in_width, stride, next(rates)))
    return nn.ModuleList(Stage(name, blocks) for name, blocks in stages.items())


class ConvStem(nn.Sequential):
    """CoAtNet's stage S0: conv3x3 stride 2 -> BN -> GELU -> conv3x3 (section 3.3).

    The second conv has no norm and no bias: the first S1 block normalises its
    input (pre-activation).
    """

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__(
            ConvNormAct(in_chs, out_chs, 3, 2, act_layer=nn.GELU),
            nn.Conv2d(out_chs, out_chs, 3, 1, padding=1, bias=False),
        )


class Stage(nn.Module):
    """One stage S1..S4: its blocks applied in order; the first one down-samples."""

    def __init__(self, name: str, blocks: list[nn.Module]):
        super().__init__()
        self.name = name
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


class PatchStem(nn.Conv2d):
    """ViT-Rel's stem: a 16x16 stride-16 conv, one token per 16x16 patch (Dosovitskiy et al. 2021)."""

    def __init__(self, in_chs: int, out_chs: int, patch: int = 16):
        super().__init__(in_chs, out_chs, patch, patch)


class CoAtNetBase(nn.Module):
    """What every CoAtNet shares, the paper's and timm's rw variants: a stage plan
    (``model.plan``, from ``config``, ``layout`` and ``image_size``), the stem S0
    (``model.stem``) and the stages S1..S4 (``model.stages``) built from it, the input
    check, resizing to another image size and loading by stage. A subclass builds the
    modules and writes ``forward`` (its head)."""

    CONFIGS: dict = {}  # the registered configs, to name a model's config in messages

    @property
    def plan(self) -> tuple[StageSpec, ...]:
        """The stages of this model at its current image size (:func:`stage_plan`)."""
        return stage_plan(self.config, self.layout, self.image_size, self.in_chans)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> the last feature map ``(B, D, H/32, W/32)``."""
        self._check_input(x)
        x = self.stem(x.contiguous(memory_format=torch.channels_last))  # S0: (B, D0, H/2, W/2)
        for stage in self.stages:  # S1..S4, each halves the size
            x = stage(x)
        return x

    def _check_input(self, x: torch.Tensor) -> None:
        check_images(x, self.in_chans, min_size=1, dtype=next(self.parameters()).dtype)
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(
                f"this model was built for {self.image_size[0]}x{self.image_size[1]} images but got "
                f"{x.shape[-2]}x{x.shape[-1]}: rebuild it with create_model(..., image_size={tuple(x.shape[-2:])}) "
                f"(a state dict from another size loads and its bias tables are resized) or call "
                f"model.set_image_size({tuple(x.shape[-2:])})"
            )

    def set_image_size(self, image_size: int | tuple[int, int]) -> None:
        """Adapt a built model to another input size: every relative-bias table is resized bilinearly."""
        new = check_coatnet_size(image_size, self.layout)
        for m in self.modules():
            if isinstance(m, RelativeAttention):
                h, w = m.map_size
                m.resize_bias_table((h * new[0] // self.image_size[0], w * new[1] // self.image_size[1]))
        self.image_size = new

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``; with ``strict=True`` a state dict of another model is refused
        with its missing and unexpected keys grouped by stage (``stem``, ``stages.0`` ...)."""
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        if strict and (result.missing_keys or result.unexpected_keys):
            raise RuntimeError(
                f"this state dict does not fit {type(self).__name__} {self.config_name()}:\n"
                + _grouped("missing", result.missing_keys)
                + _grouped("unexpected", result.unexpected_keys)
                + "is it from another model, layout or variant? Build the model it was saved from "
                "(create_model(name, ...)), or pass strict=False to load only the matching keys."
            )
        return result

    def config_name(self) -> str:
        name = next((f"{n!r}" for n, c in self.CONFIGS.items() if c == self.config), repr(self.config))
        return f"{name} with layout {self.layout!r}"

    def __prepare_scriptable__(self):
        raise RuntimeError(
            "torch.jit.script does not support coatlib's CoAtNet (einops and keyword arguments in its forward); "
            "TorchScript is deprecated: use torch.compile(model) for speed or torch.export.export(model, (x,)) "
            "to export a graph"
        )


class CoAtNet(CoAtNetBase):
    """CoAtNet: conv stem S0, stages S1..S4 of MBConv ("C") or Transformer ("T") blocks, then
    the head: global average pooling, LayerNorm, a ``D x D`` pre-logits layer with tanh, and
    a linear classifier.

    Choices where the paper is silent (tested, and discussed in the book, chapter 5):

    * MBConv expands to ``4 x out_chs`` and its squeeze-excitation squeezes to
      ``0.25 x out_chs`` (the paper: "expansion rate 4, SE shrink rate 0.25";
      the official TF code takes both from the block's output width).
    * A LayerNorm follows the global pooling: the residual stream of a pre-norm
      network is never normalised otherwise.
    * The head has a ``D x D`` pre-logits layer with tanh, as in the official TF
      code and timm's paper configs: the paper's parameter counts include it
      (CoAtNet-0: 24.45M without, 25.04M with it; the paper says 25M).
    * The activation inside squeeze-excitation is GELU (``se_act="gelu"``, the
      paper's "GELU everywhere"); timm and the official code use SiLU
      (``se_act="silu"``).
    * LayerNorm epsilon 1e-5, PyTorch's default (``norm_eps``; timm uses 1e-6).
    * CoAtNet-6 as written in Table 14 has 1.35B parameters, not the stated
      1.47B (9% fewer; the Keras re-implementation gets 1.34B too): the table's
      L and D do not add up to the stated count, and we follow the table.
      CoAtNet-7 matches (2.44B). CoAtNet-5 uses the paper's head size 64; timm's
      ``coatnet_5_224`` uses 32 (more heads, so 419,056 more bias-table parameters).
    * ``layout="ViT-Rel"`` replaces S0..S2 by a 16x16 patch stem at S3's width
      and keeps only Transformer blocks (S3's blocks plus as many as make up
      S1+S2+S4's depth), in one stage, so it has a size similar to the C-C-T-T model.

    ``downsample="conv"`` puts the stride of a down-sampling MBConv on its first
    1x1 conv (Eq. 5, default); ``"dw"`` on the depthwise conv (Table 9).
    ``pool`` is the shortcut's 2x2 pooling: ``"max"`` (paper) or ``"avg"``.
    timm's ``coatnet_N_224`` is ``CoAtNet(config, **TIMM_OPTIONS)``.
    """

    CONFIGS = CONFIGS

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
        se_act: str = "gelu",
        norm_eps: float = 1e-5,
        drop_path_rate: float = 0.0,
        head_dim: int | None = None,
    ):
        super().__init__()
        if se_act not in SE_ACTIVATIONS:
            raise ValueError(f"se_act must be one of {', '.join(map(repr, SE_ACTIVATIONS))}, got {se_act!r}")
        self.config = config if head_dim is None else replace(config, head_dim=head_dim)
        self.layout, self.in_chans = layout, in_chans
        self.image_size = check_coatnet_size(image_size, layout)
        stem, *runs = self.plan

        def block(run: StageSpec, in_width: int, stride: int, drop_path: float) -> nn.Module:
            if run.kind == "C":
                se_act_layer = SE_ACTIVATIONS[se_act]
                return MBConv(
                    in_width,
                    run.width,
                    stride,
                    downsample=downsample,
                    pool=pool,
                    se_act_layer=se_act_layer,
                    drop_path=drop_path,
                )
            return TransformerBlock(
                in_width,
                run.width,
                run.size,
                stride,
                run.head_dim,
                softmax,
                pool=pool,
                norm_eps=norm_eps,
                drop_path=drop_path,
            )

        self.stem = PatchStem(in_chans, stem.width) if layout == "ViT-Rel" else ConvStem(in_chans, stem.width)
        self.stages = build_stages(runs, block, drop_path_rate)
        self.num_features = runs[-1].width
        self.norm = nn.LayerNorm(self.num_features, eps=norm_eps)
        self.pre_logits = nn.Sequential(nn.Linear(self.num_features, self.num_features), nn.Tanh())
        self.head = nn.Linear(self.num_features, num_classes)
        init_weights(self)
        # Maps are stored channels-last (NHWC) in memory: faster convolutions with oneDNN and
        # cuDNN, and the Transformer blocks' switch to tokens (B, H*W, C) is a view, not a copy.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x).mean((2, 3))  # global average pooling: (B, D)
        return self.head(self.pre_logits(self.norm(x)))


SE_ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU}


def check_coatnet_size(image_size: int | tuple[int, int], layout: str) -> tuple[int, int]:
    """``(H, W)``, or a ``ValueError`` naming the nearest valid sizes: CoAtNet halves the map five
    times (multiples of 32); ViT-Rel cuts 16x16 patches (multiples of 16)."""
    H, W = pair(image_size)
    multiple = 16 if layout == "ViT-Rel" else 32
    if any(s <= 0 or s % multiple for s in (H, W)):
        raise ValueError(
            f"image_size {(H, W)} is not supported by layout {layout!r}: height and width must be positive "
            f"multiples of {multiple} (the network down-samples {multiple}x); nearest valid: height "
            f"{nearest_multiples(max(H, 1), multiple)}, width {nearest_multiples(max(W, 1), multiple)}"
        )
    return H, W


def _grouped(what: str, keys: list[str]) -> str:
    """``"missing keys: stem (2), stages.2 (40): stages.2.blocks.0.norm1.weight, ..."``, one line per group."""
    if not keys:
        return ""
    groups: dict[str, list[str]] = defaultdict(list)
    for k in keys:
        parts = k.split(".")
        groups[".".join(parts[:2]) if parts[0] == "stages" else parts[0]].append(k)
    lines = [f"  {g} ({len(ks)}): {', '.join(ks[:3])}{', ...' if len(ks) > 3 else ''}" for g, ks in groups.items()]
    return f"{len(keys)} {what} keys:\n" + "\n".join(lines) + "\n"


def _builder(name: str, config: str, layout: str = "C-C-T-T"):
    def build(**kwargs) -> CoAtNet:
        return CoAtNet(CONFIGS[config], **{"layout": layout, **kwargs})

    build.__name__ = name
    build.__doc__ = f"{config} with layout {layout}: {CONFIGS[config]}"
    build.__annotations__ = {"return": CoAtNet}  # create_model reads the accepted keywords from it
    return build


for _name in CONFIGS:
    register_model(_builder(_name, _name))

# Registered small layout variants for experiments (paper section 2.2 on small data),
# e.g. coatnet_pico_cttt, coatnet_nano_vitrel.
for _size in ("coatnet_pico", "coatnet_nano"):
    for _layout in LAYOUTS:
        _variant = f"{_size}_{_layout.replace('-', '').lower()}"
        register_model(_builder(_variant, _size, _layout))
