"""``python -m coatlib.studies``: see ``coatlib.studies.command``."""

from coatlib.studies.command import main

main()
