"""timm's CoAtNets -> coatlib: the names and layouts of their tensors, and where timm publishes its weights.

timm's checkpoint_filter_fn, for coatlib: ``timm_mapping(model)`` renames and converts the tensors of
timm's CoAtNets (``timm/models/maxxvit.py``) to coatlib's, for its trained rw models
(:mod:`coatlib.models.coatnet_rw`) and its paper configurations ``coatnet_N_224`` built with
``TIMM_OPTIONS``; ``load_timm_weights`` loads them (what ``create_model(name, pretrained=True)`` and
``create_model(name, checkpoint_path=...)`` use), ``closest_timm_variant`` names the timm model a state dict
of another variant comes from, and ``PRETRAINED`` says where each trained rw model's weights are.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn

from coatlib.blocks import MBConv, TransformerBlock
from coatlib.checkpoints import DERIVED, as_state_dict, download_from_hub, load_renamed
from coatlib.models.coatnet import CONFIGS, TIMM_OPTIONS, CoAtNet
from coatlib.models.coatnet_rw import RW_CONFIGS, RwCoAtNet, RwMBConv, RwTransformerBlock

# Keys only timm's CoAtNets have (its stem's ``conv1``, its blocks' ``conv2_kxk`` and ``rel_pos``).
TIMM_MARKERS = ("stem.conv1.", ".conv2_kxk.", ".rel_pos.")


def is_timm_state_dict(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state_dict`` has timm's names (``TIMM_MARKERS``), not coatlib's."""
    return any(m in k for k in state_dict for m in TIMM_MARKERS)


# timm's CoAtNet (timm/models/maxxvit.py) -> coatlib, module by module. "shortcut.proj" is the 1x1 conv
# of the shortcut Proj(Pool(x)).
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

        model = coatlib.create_model("coatnet_0", **TIMM_OPTIONS)  # downsample="dw", pool="avg", ...
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
    state_dict = as_state_dict(state_dict)
    rename, convert = timm_mapping(model)
    try:
        return load_renamed(model, state_dict, rename, convert, "timm")
    except ValueError as e:
        raise ValueError(f"{e}. {_closest_variant_hint(state_dict)}") from None


def timm_mapping(model: nn.Module):
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
TIMM_PAPER_CONFIGS = ("coatnet_0", "coatnet_1", "coatnet_2", "coatnet_3", "coatnet_4", "coatnet_5")


def timm_variants() -> dict[str, Callable[[], nn.Module]]:
    """``{timm's name: a builder of the coatlib model its state dict loads into}``."""
    variants: dict[str, Callable[[], nn.Module]] = {
        f"{name}_224": partial(RwCoAtNet, RW_CONFIGS[name], num_classes=PRETRAINED[name].num_classes)
        for name in RW_CONFIGS
    }
    for name in TIMM_PAPER_CONFIGS:
        head_dim = 32 if name == "coatnet_5" else None
        variants[f"{name}_224"] = partial(CoAtNet, CONFIGS[name], head_dim=head_dim, **TIMM_OPTIONS)
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
        rename, _ = timm_mapping(model)
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
        build = f"coatlib.create_model({name.removesuffix('_224')!r}, {_kwargs(TIMM_OPTIONS)})"
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
    return download_from_hub(hub_id, "pretrained=True", local)
