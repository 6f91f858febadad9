"""coatlib: CoAtNet from scratch, with the convolution and attention models around it."""

from coatlib.factory import create_model, list_models
from coatlib.flops import count_flops, count_macs, summary
from coatlib.fuse import fuse
from coatlib.models.coatnet_rw_timm import load_timm_weights
from coatlib.models.torchvision_weights import load_torchvision_weights
from coatlib.registry import register_model

__all__ = [
    "create_model",
    "list_models",
    "register_model",
    "count_flops",
    "count_macs",
    "summary",
    "fuse",
    "load_torchvision_weights",
    "load_timm_weights",
]
__version__ = "0.1.0"
