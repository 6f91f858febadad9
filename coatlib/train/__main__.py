"""``python -m coatlib.train``: see ``coatlib.train.command``."""

from coatlib.train.command import cli

cli()
