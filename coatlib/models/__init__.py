"""Model families, one file each. Importing this package registers every model."""
from coatlib.models import coatnet  # noqa: F401
