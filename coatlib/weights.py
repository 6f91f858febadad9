"""Pretrained weights: torchvision's for the model zoo, timm's for CoAtNet.

torchvision publishes ImageNet weights for ResNet, MobileNet V2/V3,
EfficientNet (V1 and V2), ViT, Swin and ConvNeXt. coatlib builds the same
architectures from its shared blocks, so the tensors are the same; only their
names differ (coatlib's ``InvertedResidual`` calls torchvision's ``block.1`` ``dw``, its
attention calls ``in_proj_weight`` ``qkv.weight``, ...) and, for Swin, the
layout of the relative-position bias table. ``load_torchvision_weights``
renames and reshapes a torchvision state dict and checks that every tensor
fits, so that::

    import torchvision, coatlib
    tv = torchvision.models.resnet50(weights="IMAGENET1K_V2")  # torchvision downloads, not coatlib
    model = coatlib.load_torchvision_weights(coatlib.create_model("resnet50"), tv.state_dict())

gives a coatlib ResNet-50 with the same ImageNet predictions.
``load_timm_weights`` does the same for timm's CoAtNets. Nothing is downloaded
unless asked: ``pretrained_state_dict(name)`` (what ``create_model(name,
pretrained=True)`` calls) fetches timm's trained rw CoAtNets from the Hugging
Face Hub with the optional ``pretrained`` extra; ``imagenet_classes()`` names
their 1000 outputs.
"""

from __future__ import annotations

import math
import os
import re
import socket
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

from coatlib.blocks import FusedMBConv, InvertedResidual, MBConv, TransformerBlock
from coatlib.models.coatnet import CoAtNet
from coatlib.models.coatnet_rw import RW_CONFIGS, RwCoAtNet, RwMBConv, RwTransformerBlock
from coatlib.models.convnext import ConvNeXt
from coatlib.models.efficientnet import EfficientNet
from coatlib.models.mobilenet import MobileNetV2, MobileNetV3
from coatlib.models.resnet import ResNet
from coatlib.models.swin import SwinTransformer
from coatlib.models.vit import VisionTransformer

# Buffers torchvision stores that coatlib recomputes from the window size.
DERIVED = ("relative_position_index",)

Rules = list[tuple[str, str | Callable[[re.Match], str]]]


def _apply(rules: Rules, key: str) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


RESNET: Rules = [
    (r"^conv1\.", "stem.0."),  # the 7x7 stem conv and its BN form one ConvNormAct
    (r"^bn1\.", "stem.1."),
    (r"\.conv(\d)\.", r".conv\1.0."),  # block convs: conv{k} + bn{k} -> ConvNormAct conv{k}
    (r"\.bn(\d)\.", r".conv\1.1."),
]

VIT: Rules = [
    (r"^class_token$", "cls_token"),
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.", r"blocks.\1."),
    (r"\.ln_1\.", ".norm1."),
    (r"\.ln_2\.", ".norm2."),
    (r"\.self_attention\.in_proj_", ".attn.qkv."),  # nn.MultiheadAttention's stacked q, k, v = our qkv Linear
    (r"\.self_attention\.out_proj\.", ".attn.proj."),
    (r"\.mlp\.0\.", ".mlp.fc1."),
    (r"\.mlp\.3\.", ".mlp.fc2."),
    (r"^encoder\.ln\.", "norm."),
    (r"^heads\.head\.", "head."),
]


def _stage(m: re.Match) -> str:
    """Swin and ConvNeXt: torchvision's flat ``features.k`` alternates a stage's blocks (odd k)
    and the down-sampling before the next stage (even k); coatlib groups both in ``stages.i``."""
    k = int(m[1])
    return f"stages.{k // 2}.blocks." if k % 2 else f"stages.{k // 2}.downsample."


STAGES = (r"^features\.(\d+)\.", _stage)

SWIN: Rules = [
    (r"^features\.0\.0\.", "patch_embed.proj."),
    (r"^features\.0\.2\.", "patch_embed.norm."),
    STAGES,
    (r"\.attn\.relative_position_bias_table$", ".attn.relative_bias_table"),
    (r"\.mlp\.0\.", ".mlp.fc1."),
    (r"\.mlp\.3\.", ".mlp.fc2."),
]

CONVNEXT: Rules = [
    (r"^features\.0\.", "stem."),
    STAGES,
    (r"\.block\.0\.", ".dwconv."),
    (r"\.block\.2\.", ".norm."),
    (r"\.block\.3\.", ".mlp.fc1."),
    (r"\.block\.5\.", ".mlp.fc2."),
    (r"^classifier\.0\.", "norm."),
    (r"^classifier\.2\.", "head."),
]


def _mbconv_rules(model: nn.Module, block_pattern: str, split_project: bool = False) -> Rules:
    """torchvision keeps an inverted-residual block's layers in one ``nn.Sequential``
    (``<block>.<j>.``) holding only the layers that exist; coatlib's ``InvertedResidual`` and
    ``FusedMBConv`` name them
    ``expand``, ``dw``, ``se``, ``project`` and leaves missing ones as ``nn.Identity``.
    MobileNetV2 keeps the projection's conv and BN as two entries (``split_project``)."""

    def rename(m: re.Match) -> str:
        try:
            block = model.get_submodule(m[1])
        except AttributeError:
            block = None
        if not isinstance(
            block, (InvertedResidual, FusedMBConv)
        ):  # no such block: leave the key, it is reported as not fitting
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


def _rules_for(model: nn.Module) -> Rules:
    if isinstance(model, ResNet):
        return RESNET
    if isinstance(model, MobileNetV2):
        return _mbconv_rules(model, r"^(features\.\d+)\.conv\.(\d+)\.", split_project=True)
    if isinstance(model, MobileNetV3):
        return _mbconv_rules(model, r"^(features\.\d+)\.block\.(\d+)\.")
    if isinstance(model, EfficientNet):
        return _mbconv_rules(model, r"^(features\.\d+\.\d+)\.block\.(\d+)\.")
    if isinstance(model, VisionTransformer):
        return VIT
    if isinstance(model, SwinTransformer):
        return SWIN
    if isinstance(model, ConvNeXt):
        return CONVNEXT
    supported = (
        "ResNet, MobileNetV2, MobileNetV3, EfficientNet (B0-B7, V2), VisionTransformer, SwinTransformer, ConvNeXt"
    )
    raise TypeError(
        f"torchvision has no counterpart of {type(model).__name__}, so there are no torchvision weights "
        f"to load into it; load_torchvision_weights supports {supported}"
    )


def _convert(key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Layouts that differ: Swin's bias table is ``((2w-1)^2, heads)`` in torchvision and
    ``(heads, 2w-1, 2w-1)`` here; ConvNeXt's layer scale is ``(C, 1, 1)`` there and ``(C,)`` here."""
    if key.endswith("relative_bias_table") and value.ndim == 2:
        side = round(value.shape[0] ** 0.5)
        return value.T.reshape(value.shape[1], side, side)
    if key.endswith("layer_scale"):
        return value.reshape(target.shape) if value.numel() == target.numel() else value
    return value


def _fits(key: str, value: torch.Tensor, target: torch.Tensor) -> bool:
    """Same shape, or a table that the model resizes when it loads it (made for another
    window or image size): Swin's bias table with the same heads, ViT's position
    embedding with the same width."""
    if value.shape == target.shape:
        return True
    if key.endswith("relative_bias_table"):  # (heads, 2w-1, 2w-1)
        return value.ndim == 3 and value.shape[0] == target.shape[0]
    if key.endswith("pos_embed"):  # (1, 1 + patches, D)
        return value.ndim == 3 and value.shape[-1] == target.shape[-1]
    return False


def load_torchvision_weights(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor] | nn.Module | str | os.PathLike
) -> nn.Module:
    """Load a torchvision state dict of the same architecture into a coatlib ``model``.

    ``state_dict`` is a torchvision model's ``state_dict()``, the torchvision
    model itself, or the path of a saved state dict (read with
    ``torch.load(..., weights_only=True)``). Every tensor is renamed (and
    reshaped where the layouts differ) and must fit: a tensor with no place in
    the model, a shape that differs, or a model tensor that the state dict
    lacks raises a ``ValueError`` naming the first such key. ViT position
    embeddings and Swin bias tables made for another image / window size are
    resized. Returns ``model``.
    """
    rules = _rules_for(model)
    return _load(model, _as_state_dict(state_dict), lambda key: _apply(rules, key), _convert, "torchvision")


# timm's CoAtNet (timm/models/maxxvit.py) -> coatlib, module by module.
TIMM_MBCONV = {
    "shortcut.expand": "shortcut.proj",
    "pre_norm": "norm",  # BN(x) ->
    "conv1_1x1": "expand.0",  # 1x1 conv (+ BN + act) ->
    "norm1": "expand.1",
    "conv2_kxk": "dw.0",  # 3x3 depthwise conv (+ BN + act) ->
    "norm2": "dw.1",
    "se.fc1": "se.fc1",  # SE ->
    "se.fc2": "se.fc2",
    "conv3_1x1": "project",  # 1x1 conv
}
TIMM_TRANSFORMER = {
    "shortcut.expand": "shortcut.proj",
    "norm1.norm": "norm1",  # in a down-sampling block timm's norm1 is LN then pool
    "norm1": "norm1",
    "attn": "attn",  # the relative bias table
    "attn.qkv": "attn.qkv",
    "attn.proj": "attn.proj",
    "norm2": "norm2",
    "mlp.fc1": "ffn.fc1",
    "mlp.fc2": "ffn.fc2",
}
TIMM_OUTSIDE_BLOCKS = {
    "stem.conv1": "stem.0.0",  # S0: conv3x3 s2 + BN (one ConvNormAct), then conv3x3
    "stem.norm1": "stem.0.1",
    "stem.conv2": "stem.1",
    "head.norm": "norm",  # head: pool -> LN -> Linear + tanh -> Linear
    "head.pre_logits.fc": "pre_logits.0",
    "head.fc": "head",
}
# timm's rw CoAtNets (coatlib.models.coatnet_rw): the same stem names, their own blocks and head.
TIMM_RW_MBCONV = {
    "shortcut.expand": "shortcut.proj",
    "pre_norm": "norm",  # BN (+ SiLU) ->
    "conv1_1x1": "expand.0",  # [pool ->] 1x1 conv + BN + SiLU ->
    "norm1": "expand.1",
    "conv2_kxk": "dw",  # 3x3 depthwise conv ->
    "se_early.fc1": "se.fc1",  # [SE ->] (rw-0, rw-1, bn_0)
    "se_early.fc2": "se.fc2",
    "norm2": "dw_norm.0",  # BN + SiLU ->
    "se.fc1": "se.fc1",  # [SE ->] (nano, rw-2, rw-3)
    "se.fc2": "se.fc2",
    "conv3_1x1": "project",  # 1x1 conv
}
TIMM_RW_TRANSFORMER = {
    **TIMM_TRANSFORMER,
    "ls1": "ls1",  # layer scale (rw-3)
    "ls2": "ls2",
}
TIMM_RW_OUTSIDE_BLOCKS = {
    "stem.conv1": "stem.0.0",
    "stem.norm1": "stem.0.1",
    "stem.conv2": "stem.1",
    "norm": "norm",  # head: LN (bn_0: BN) on the map -> pool -> Linear
    "head.fc": "head",
}


def load_timm_weights(
    model: CoAtNet | RwCoAtNet, state_dict: Mapping[str, torch.Tensor] | nn.Module | str | os.PathLike
) -> CoAtNet | RwCoAtNet:
    """Load a timm CoAtNet state dict into the matching coatlib model.

    **timm's trained rw models** (``coatnet_nano_rw_224``, ``coatnet_0_rw_224``, ...,
    ``coatnet_3_rw_224``) load into the coatlib model of the same name without
    ``_224``::

        model = coatlib.create_model("coatnet_0_rw")
        coatlib.load_timm_weights(model, timm.create_model("coatnet_0_rw_224").state_dict())

    (``coatlib.create_model("coatnet_0_rw", pretrained=True)`` downloads and loads them.)

    **timm's paper configurations** ``coatnet_N_224`` (N = 0..5) differ from
    coatlib's defaults in four choices, so build the model as timm does::

        model = coatlib.create_model("coatnet_0", downsample="dw", pool="avg", se_act="silu", norm_eps=1e-6)
        coatlib.load_timm_weights(model, timm.create_model("coatnet_0_224").state_dict())

    (``coatnet_5``: also ``head_dim=32``; timm uses 32 where the paper uses 64.)
    The stage and block numbers are the same (``stages.2.blocks.3``); inside a
    block the names differ (``TIMM_MBCONV``, ``TIMM_TRANSFORMER``, ``TIMM_RW_*``), and two
    layouts: timm's Transformer blocks use 1x1 convs where coatlib uses
    ``nn.Linear`` for q, k, v, the output projection and the FFN (the same
    numbers with a trailing ``1 x 1``) and order the q, k, v rows ``(heads, 3, d)`` where
    coatlib has ``(3, heads, d)``; timm stores a bias table as
    ``((2H-1)(2W-1), heads)``, coatlib as ``(heads, 2H-1, 2W-1)``. Every tensor
    must fit; tables made for another image size are resized. A state dict of
    another variant is refused with a ``ValueError`` that names the variant it
    looks like. ``state_dict`` may also be a file (``.safetensors``, or a
    ``torch.save`` file read with ``weights_only=True``). Returns ``model``.
    """
    state_dict = _as_state_dict(state_dict)
    rename, convert = _timm_mapping(model)
    try:
        return _load(model, state_dict, rename, convert, "timm")
    except ValueError as e:
        raise ValueError(f"{e}. {_closest_variant_hint(state_dict)}") from None


def _timm_mapping(model: nn.Module):
    """``(rename, convert)`` from timm's names and layouts to ``model``'s (see ``load_timm_weights``)."""
    if isinstance(model, RwCoAtNet):
        outside, tables = TIMM_RW_OUTSIDE_BLOCKS, {RwTransformerBlock: TIMM_RW_TRANSFORMER, RwMBConv: TIMM_RW_MBCONV}
    elif isinstance(model, CoAtNet) and model.layout == "C-C-T-T":
        outside, tables = TIMM_OUTSIDE_BLOCKS, {TransformerBlock: TIMM_TRANSFORMER, MBConv: TIMM_MBCONV}
    else:
        got = f"{type(model).__name__}" + (f" with layout {model.layout!r}" if isinstance(model, CoAtNet) else "")
        raise TypeError(f"load_timm_weights loads timm's C-C-T-T CoAtNets into a coatlib CoAtNet, got {got}")

    def rename(key: str) -> str:
        key = key.replace(".rel_pos.relative_position_bias_table", ".relative_bias_table")
        in_block = re.match(r"(stages\.\d+\.blocks\.\d+)\.(.+)\.(\w+)$", key)
        if in_block is None:
            module, param = key.rsplit(".", 1)
            return f"{outside.get(module, module)}.{param}"
        prefix, module, param = in_block.groups()
        try:
            block = model.get_submodule(prefix)
        except AttributeError:
            return key  # no such block: reported as not fitting
        table = tables.get(type(block), {})
        if module not in table:
            return key
        return f"{prefix}.{table[module]}.{param}"

    def convert(key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if key.endswith("relative_bias_table") and value.ndim == 2:  # ((2H-1)(2W-1), heads) -> (heads, 2H-1, 2W-1)
            return value.T.reshape(value.shape[1], *_table_shape(value.shape[0], target.shape[1:]))
        if key.endswith(("attn.qkv.weight", "attn.qkv.bias")):  # rows (heads, 3, d) -> (3, heads, d)
            heads = model.get_submodule(key.rsplit(".", 2)[0]).num_heads
            value = value.reshape(heads, 3, -1, *value.shape[1:]).transpose(0, 1).reshape(value.shape)
        if (".attn." in key or ".ffn." in key) and value.ndim == 4 and target.ndim == 2:  # 1x1 conv -> nn.Linear
            return value.flatten(1)
        return value

    return rename, convert


# The timm CoAtNets coatlib can load: the rw models by name, and timm's paper configurations
# coatnet_N_224 built with timm's choices (see load_timm_weights).
TIMM_PAPER_OPTIONS = dict(downsample="dw", pool="avg", se_act="silu", norm_eps=1e-6)
TIMM_PAPER_CONFIGS = ("coatnet_0", "coatnet_1", "coatnet_2", "coatnet_3", "coatnet_4", "coatnet_5")


def timm_variants() -> dict[str, Callable[[], nn.Module]]:
    """``{timm's name: a builder of the coatlib model its state dict loads into}``."""
    from coatlib.registry import create_model

    variants: dict[str, Callable[[], nn.Module]] = {
        f"{name}_224": partial(create_model, name, num_classes=PRETRAINED[name].num_classes) for name in RW_CONFIGS
    }
    for name in TIMM_PAPER_CONFIGS:
        head_dim = 32 if name == "coatnet_5" else None
        variants[f"{name}_224"] = partial(create_model, name, head_dim=head_dim, **TIMM_PAPER_OPTIONS)
    return variants


def closest_timm_variant(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The timm CoAtNet whose tensors (names and sizes, tables aside) ``state_dict`` shares most of.

    Every candidate is built on the meta device (no memory, no arithmetic) and scored by the
    fraction of the state dict's tensors that its renaming puts on a tensor of the same size.
    """
    tensors = {k: v for k, v in state_dict.items() if not k.endswith(DERIVED)}
    scores = {}
    for timm_name, build in timm_variants().items():
        with torch.device("meta"):
            model = build()
        rename, _ = _timm_mapping(model)
        target = model.state_dict()
        hits = sum(
            1
            for k, v in tensors.items()
            if (t := target.get(rename(k))) is not None and (t.numel() == v.numel() or k.endswith("bias_table"))
        )
        scores[timm_name] = hits / max(len(tensors), len(target))
    return max(scores, key=scores.get)


def _closest_variant_hint(state_dict: Mapping[str, torch.Tensor]) -> str:
    name = closest_timm_variant(state_dict)
    if name.removesuffix("_224") in RW_CONFIGS:
        build = f"coatlib.create_model({name.removesuffix('_224')!r})"
    else:
        build = f"coatlib.create_model({name.removesuffix('_224')!r}, {_kwargs(TIMM_PAPER_OPTIONS)})"
    return f"The state dict looks like timm's {name}: load it into {build}"


def _kwargs(options: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in options.items())


def _table_shape(cells: int, target: tuple[int, int]) -> tuple[int, int]:
    """The ``(2H-1, 2W-1)`` of a flattened table of ``cells`` entries: the model's own shape, or a
    square one (timm's models are built for square images; coatlib then resizes the table)."""
    if cells == target[0] * target[1]:
        return tuple(target)
    side = math.isqrt(cells)
    if side * side != cells:
        raise ValueError(
            f"a flattened bias table of {cells} entries fits neither this model's {target[0]}x{target[1]} table "
            f"nor a square one: build the coatlib model at the image size the weights were made for"
        )
    return side, side


def _as_state_dict(state_dict: Mapping[str, torch.Tensor] | nn.Module | str | os.PathLike) -> Mapping:
    if isinstance(state_dict, (str, os.PathLike)):
        return read_checkpoint(state_dict)
    if isinstance(state_dict, nn.Module):
        return state_dict.state_dict()
    return state_dict


@dataclass(frozen=True)
class PretrainedWeights:
    """Where timm publishes a model's weights and how its images were prepared."""

    hub_id: str  # the Hugging Face Hub repository (its file model.safetensors)
    num_classes: int
    mean: tuple[float, float, float]  # per-channel normalisation of the input, after scaling to [0, 1]
    std: tuple[float, float, float]
    crop_pct: float  # resize to image_size / crop_pct, then center-crop image_size
    top1: float | None  # ImageNet-1k top-1 (%) at 224 px that timm published, None where it has none here


# timm's trained rw CoAtNets (pretrained_cfg in timm/models/maxxvit.py). top1: the release notes of
# timm's "v0.1-weights-maxx" weights, https://github.com/huggingface/pytorch-image-models/releases/tag/v0.1-weights-maxx;
# coatnet_2_rw's (ImageNet-12k pre-training, ImageNet-1k fine-tuning) is on its model card; coatnet_3_rw's
# weights have an ImageNet-12k head (11821 classes), so there is no ImageNet-1k accuracy.
_HALF, _IMAGENET_MEAN, _IMAGENET_STD = (0.5, 0.5, 0.5), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PRETRAINED: dict[str, PretrainedWeights] = {
    "coatnet_nano_rw": PretrainedWeights("timm/coatnet_nano_rw_224.sw_in1k", 1000, _HALF, _HALF, 0.9, 81.7),
    "coatnet_0_rw": PretrainedWeights("timm/coatnet_0_rw_224.sw_in1k", 1000, _HALF, _HALF, 0.95, 82.4),
    "coatnet_1_rw": PretrainedWeights("timm/coatnet_1_rw_224.sw_in1k", 1000, _HALF, _HALF, 0.95, 83.6),
    "coatnet_bn_0_rw": PretrainedWeights(
        "timm/coatnet_bn_0_rw_224.sw_in1k", 1000, _IMAGENET_MEAN, _IMAGENET_STD, 0.95, 82.4
    ),
    "coatnet_2_rw": PretrainedWeights("timm/coatnet_2_rw_224.sw_in12k_ft_in1k", 1000, _HALF, _HALF, 0.95, None),
    "coatnet_3_rw": PretrainedWeights("timm/coatnet_3_rw_224.sw_in12k", 11821, _HALF, _HALF, 0.95, None),
}
INSTALL_HINT = "pip install 'coatlib[pretrained]'"


def imagenet_classes() -> list[str]:
    """The names of ImageNet-1k's 1000 classes in the order of a classifier's outputs, e.g.
    ``imagenet_classes()[281] == "tabby, tabby cat"``: the lemmas of each class's WordNet synset.

    They ship with coatlib (``coatlib/artefacts/imagenet_classes.txt``, copied from timm's
    ``timm/data/_info``), so naming a prediction needs neither timm nor a network.
    """
    from importlib.resources import files

    text = (files("coatlib") / "artefacts" / "imagenet_classes.txt").read_text(encoding="utf-8")
    return [line.split("\t", 1)[1] for line in text.splitlines() if line and not line.startswith("#")]


def pretrained_state_dict(name: str) -> dict[str, torch.Tensor]:
    """timm's state dict of ``name`` (a key of ``PRETRAINED``), downloaded from the Hugging Face Hub
    (cached by ``huggingface_hub``) and read with ``safetensors``: the ``pretrained`` extra.

    Fails at once, with a one-line message saying what to do, when the extra is not installed
    (``ImportError``) or the download is impossible, e.g. offline (``ConnectionError``).
    """
    if name not in PRETRAINED:
        raise ValueError(
            f"coatlib has no pretrained weights for {name!r}: the paper's authors never released CoAtNet "
            f"weights; timm's trained CoAtNets are {', '.join(PRETRAINED)}"
        )
    hub_id = PRETRAINED[name].hub_id
    local = (
        f"download https://huggingface.co/{hub_id}/resolve/main/model.safetensors and pass "
        f"create_model({name!r}, checkpoint_path='model.safetensors')"
    )
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
        from safetensors.torch import load_file  # noqa: F401 (read_checkpoint needs it)
    except ImportError:
        raise ImportError(
            f"pretrained=True downloads timm's weights with huggingface_hub and safetensors, which are not "
            f"installed: {INSTALL_HINT} (and be online), or {local}"
        ) from None
    offline = ConnectionError(
        f"pretrained=True needs the network ({INSTALL_HINT} is there) and could not download {hub_id} from the "
        f"Hugging Face Hub: connect and retry, or {local}"
    )
    try:  # a copy downloaded before, in huggingface_hub's cache
        return read_checkpoint(hf_hub_download(hub_id, "model.safetensors", local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if constants.is_offline_mode() or not hub_reachable(constants.ENDPOINT):
        raise offline  # at once: huggingface_hub itself would retry for half a minute
    try:
        return read_checkpoint(hf_hub_download(hub_id, "model.safetensors"))
    except (OSError, HfHubHTTPError):
        raise offline from None


def hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub's host (``https://huggingface.co``) opens within ``timeout`` s."""
    url = urllib.parse.urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, or of a ``torch.save`` file read with
    ``weights_only=True`` (tensors and containers only: no code runs)."""
    if Path(path).is_dir():
        raise ValueError(
            f"{path} is a folder, the checkpoint of a sharded run (fit(fsdp=True)): load it with "
            f"coatlib.train.load_checkpoint({str(path)!r}, model)"
        )
    if str(path).endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError(f"reading a .safetensors file needs safetensors: {INSTALL_HINT}") from None
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


# Keys only timm's CoAtNets have (its stem's ``conv1``, its blocks' ``conv2_kxk`` and ``rel_pos``).
TIMM_MARKERS = ("stem.conv1.", ".conv2_kxk.", ".rel_pos.")
# Prefixes the wrappers of a training loop add to every key: DDP's ``module.``, torch.compile's ``_orig_mod.``.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def unwrap_state_dict(checkpoint: Mapping, path: str | os.PathLike = "the checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside ``checkpoint``: itself, or its ``"model"`` entry (``fit``'s ``checkpoint.pt``,
    and the common ``{'model': ...}`` wrapper) or ``"state_dict"`` entry; the prefixes of DDP
    (``module.``) and ``torch.compile`` (``_orig_mod.``) removed."""
    for key in ("model", "state_dict"):
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        entries = list(checkpoint)[:6] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(
            f"{path} holds no state dict (tensors by name) where one is looked for: itself, its 'model' or its "
            f"'state_dict' entry; it holds {entries}. Save the weights with torch.save(model.state_dict(), path)"
        )
    state_dict = dict(checkpoint)
    for prefix in WRAPPER_PREFIXES:
        if state_dict and all(k.startswith(prefix) for k in state_dict):
            state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items()}
    return state_dict


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a local file into ``model``: a coatlib state dict (``torch.save(model.state_dict(), path)``),
    ``fit``'s ``checkpoint.pt``, a ``{'model': ...}`` or ``{'state_dict': ...}`` wrapper or, for a CoAtNet,
    timm's state dict (e.g. its ``model.safetensors``, recognised by timm's names), converted by
    ``load_timm_weights``. Anything else must fit ``model`` exactly; if it does not, the ``ValueError``
    lists the missing, unexpected and wrong-shape tensors by stage, with the likely fix
    (``num_classes=``, ``layout=``, ``image_size=``)."""
    state_dict = unwrap_state_dict(read_checkpoint(path), path)
    if isinstance(model, (CoAtNet, RwCoAtNet)) and any(m in k for k in state_dict for m in TIMM_MARKERS):
        return load_timm_weights(model, state_dict)
    check_state_dict_fits(model, state_dict, path)
    model.load_state_dict(state_dict)
    return model


def check_state_dict_fits(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source="the state dict") -> None:
    """Raise a ``ValueError`` unless ``state_dict`` has exactly ``model``'s tensors and shapes, listing the
    missing, unexpected and wrong-shape tensors by stage (``S3`` for ``stages.2``) with the likely fix."""
    target = model.state_dict()
    missing = [k for k in target if k not in state_dict]
    unexpected = [k for k in state_dict if k not in target]
    wrong = [k for k in target if k in state_dict and state_dict[k].shape != target[k].shape]
    if not (missing or unexpected or wrong):
        return
    groups: dict[str, list[str]] = {}
    for kind, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)):
        for group in dict.fromkeys(map(_stage_of, keys)):
            inside = [k for k in keys if _stage_of(k) == group]
            shown = [_shapes(k, state_dict, target) if kind == "of another shape" else k for k in inside[:2]]
            more = f", ... {len(inside) - 2} more" if len(inside) > 2 else ""
            groups.setdefault(group, []).append(f"{len(inside)} {kind} ({'; '.join(shown)}{more})")
    report = "\n".join(f"  {group}: {', '.join(parts)}" for group, parts in groups.items())
    raise ValueError(
        f"{source} does not fit this {type(model).__name__} ({len(missing)} tensors missing, {len(unexpected)} "
        f"unexpected, {len(wrong)} of another shape):\n{report}\n{_fix_hint(model, state_dict, target, wrong)}"
    )


def _stage_of(key: str) -> str:
    """``"S3"`` for a key under ``stages.2``; the first part of the name (``stem``, ``head``, ...) otherwise."""
    found = re.match(r"stages\.(\d+)\.", key)
    return f"S{int(found[1]) + 1}" if found else key.split(".")[0]


def _shapes(key: str, state_dict: Mapping, target: Mapping) -> str:
    return f"{key}: {tuple(state_dict[key].shape)} in the file, {tuple(target[key].shape)} in the model"


def _fix_hint(model: nn.Module, state_dict: Mapping, target: Mapping, wrong: list[str]) -> str:
    """The likely fix: another number of classes, another CoAtNet layout, another image size, or another model."""
    shared = set(state_dict) & set(target)
    if len(shared) < len(target) / 2:
        return (
            f"Hint: the file shares only {len(shared)} of its {len(state_dict)} tensor names with this model: the "
            f"weights are of another architecture; build the model they come from"
        )
    classifier = next(reversed([k for k in target if k.endswith(".weight") and target[k].ndim == 2]), None)
    hints = []
    if classifier in wrong and state_dict[classifier].shape[1:] == target[classifier].shape[1:]:
        hints.append(f"num_classes={state_dict[classifier].shape[0]} (the file's classifier has that many outputs)")
    if isinstance(model, CoAtNet) and len(model.stages) == 4:  # not ViT-Rel's single stage
        layout = _layout_of(state_dict, len(model.stages))
        if layout != model.layout:
            hints.append(f"layout={layout!r} (the file's stages; this model is {model.layout!r})")
        sizes = {_image_size_of(k, state_dict[k]) for k in wrong if k.endswith("relative_bias_table")}
        if len(sizes) == 1:
            hints.append(f"image_size={sizes.pop()} (the size its bias tables were made for)")
    if any(k.endswith(("relative_bias_table", "pos_embed")) for k in wrong) and not hints:
        hints.append("image_size= the size the weights were trained at (their position tables differ)")
    if not hints:
        return "Hint: build the model with the options the weights were trained with (width, depth, head)"
    return "Hint: build the model with " + " and ".join(hints)


def _layout_of(state_dict: Mapping, stages: int) -> str:
    """The CoAtNet layout of a state dict: ``T`` for a stage with attention tensors, ``C`` otherwise."""
    return "-".join(
        "T" if any(k.startswith(f"stages.{i}.") and ".attn." in k for k in state_dict) else "C" for i in range(stages)
    )


def _image_size_of(key: str, table: torch.Tensor) -> int:
    """The image size a CoAtNet bias table ``(heads, 2H-1, 2W-1)`` of ``stages.i`` was made for: the stem
    and every stage halve the map, so stage ``S{i+1}``'s map is the image over ``2 ** (i + 2)``."""
    stage = int(re.match(r"stages\.(\d+)\.", key)[1])
    return (table.shape[-2] + 1) // 2 * 2 ** (stage + 2)


def _load(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    rename: Callable[[str], str],
    convert: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor],
    source: str,
) -> nn.Module:
    """Rename and convert every tensor of ``state_dict``, check that each fits ``model``, load them."""
    name = type(model).__name__
    target = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(DERIVED):
            continue
        new_key = rename(key)
        if new_key not in target:
            raise ValueError(
                f"{source} key {key!r} does not fit this {name}: it would go to {new_key!r}, which the model "
                f"does not have. The weights come from a different architecture (another depth or family); "
                f"build the coatlib model that matches them"
            )
        value = convert(new_key, value, target[new_key])
        if not _fits(new_key, value, target[new_key]):
            raise ValueError(
                f"{source} key {key!r} does not fit this {name}: shape {tuple(value.shape)} but {new_key!r} "
                f"has shape {tuple(target[new_key].shape)}. The weights come from a different architecture "
                f"(another width or depth) or another number of classes: build the coatlib model that matches "
                f"them (to fine-tune on other classes, load into the 1000-class model, then replace its classifier)"
            )
        converted[new_key] = value
    missing = [k for k in target if k not in converted]
    if missing:
        raise ValueError(
            f"the state dict does not fit this {name}: it has nothing for {missing[0]!r} ({len(missing)} model "
            f"tensors missing in all). The weights come from a smaller architecture; build the coatlib model "
            f"that matches them"
        )
    model.load_state_dict(converted)
    return model
