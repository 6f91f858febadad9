"""coatlib: CoAtNet from scratch, with the convolution and attention models around it."""

from coatlib.flops import count_flops, count_macs, summary
from coatlib.fuse import fuse
from coatlib.registry import create_model, list_models, register_model
from coatlib.weights import load_timm_weights, load_torchvision_weights

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
