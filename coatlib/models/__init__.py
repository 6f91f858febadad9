"""Model families, one file each. Importing this package registers every model."""

from coatlib.models import coatnet, coatnet_rw, convnext, efficientnet, mobilenet, resnet, swin, vit  # noqa: F401
