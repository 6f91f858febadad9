"""Model families, one file each. Importing this package registers every model."""
from coatlib.models import coatnet, convnext, efficientnet, mobilenet, resnet, swin, vit  # noqa: F401
