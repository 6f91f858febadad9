"""torchvision's ImageNet weights for the model zoo.

torchvision publishes ImageNet weights for ResNet, MobileNet V2/V3, EfficientNet (V1 and V2), ViT, Swin
and ConvNeXt. coatlib builds the same architectures from its shared blocks, so the tensors are the same;
only their names differ (coatlib's ``InvertedResidual`` calls torchvision's ``block.1`` ``dw``, its
attention calls ``in_proj_weight`` ``qkv.weight``, ...) and, for Swin and ConvNeXt, the layout of a few
tensors. Each family says how in its own module (``torchvision_mapping``); ``load_torchvision_weights``
picks the family's and loads::

    import torchvision, coatlib
    tv = torchvision.models.resnet50(weights="IMAGENET1K_V2")  # torchvision downloads, not coatlib
    model = coatlib.load_torchvision_weights(coatlib.create_model("resnet50"), tv.state_dict())

gives a coatlib ResNet-50 with the same ImageNet predictions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn as nn

from coatlib.checkpoints import as_state_dict, load_renamed
from coatlib.models import convnext, efficientnet, mobilenet, resnet, swin, vit

# The families torchvision has a counterpart of, each with its renaming (``torchvision_mapping``).
MAPPINGS = {
    resnet.ResNet: resnet.torchvision_mapping,
    mobilenet.MobileNetV2: mobilenet.torchvision_mapping,
    mobilenet.MobileNetV3: mobilenet.torchvision_mapping,
    efficientnet.EfficientNet: efficientnet.torchvision_mapping,
    vit.VisionTransformer: vit.torchvision_mapping,
    swin.SwinTransformer: swin.torchvision_mapping,
    convnext.ConvNeXt: convnext.torchvision_mapping,
}


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
    mapping = next((m for family, m in MAPPINGS.items() if isinstance(model, family)), None)
    if mapping is None:
        supported = (
            "ResNet, MobileNetV2, MobileNetV3, EfficientNet (B0-B7, V2), VisionTransformer, SwinTransformer, ConvNeXt"
        )
        raise TypeError(
            f"torchvision has no counterpart of {type(model).__name__}, so there are no torchvision weights "
            f"to load into it; load_torchvision_weights supports {supported}"
        )
    rename, convert = mapping(model)
    return load_renamed(model, as_state_dict(state_dict), rename, convert, "torchvision")
