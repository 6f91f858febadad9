"""Model families, one file each. Importing this package registers every model.

Beside them, how other libraries' weights map onto them: timm's CoAtNets in ``coatnet_rw_timm``, torchvision's
zoo in ``torchvision_weights`` (each family's renaming rules, ``torchvision_mapping``, in its own file).
"""

from coatlib.models import coatnet, coatnet_rw, convnext, efficientnet, mobilenet, resnet, swin, vit  # noqa: F401
