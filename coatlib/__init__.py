"""coatlib: CoAtNet from scratch, with the convolution and attention models around it."""
from coatlib.registry import create_model, list_models, register_model
from coatlib.flops import count_flops, summary

__all__ = ["create_model", "list_models", "register_model", "count_flops", "summary"]
__version__ = "0.1.0"
