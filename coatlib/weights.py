"""Pretrained weights, for a reader, in one place: which trained CoAtNets exist and how to load them.

* ``PRETRAINED``: timm's trained rw CoAtNets, where each is published and how its images were prepared;
  ``create_model(name, pretrained=True)`` downloads one (``pretrained_state_dict``);
* ``load_timm_weights`` (timm's CoAtNets, ``TIMM_OPTIONS`` for its paper configurations) and
  ``load_torchvision_weights`` (the model zoo) load another library's state dict;
* ``imagenet_classes()`` names the 1000 outputs of an ImageNet classifier.

The rules live beside the models they rename (``coatlib.models.coatnet_rw_timm``, each zoo family's
``torchvision_mapping``); reading and downloading files in ``coatlib.checkpoints``.
"""

from coatlib.artefacts import imagenet_classes
from coatlib.models.coatnet import TIMM_OPTIONS
from coatlib.models.coatnet_rw_timm import PRETRAINED, load_timm_weights, pretrained_state_dict
from coatlib.models.torchvision_weights import load_torchvision_weights

__all__ = [
    "PRETRAINED",
    "TIMM_OPTIONS",
    "pretrained_state_dict",
    "load_timm_weights",
    "load_torchvision_weights",
    "imagenet_classes",
]
