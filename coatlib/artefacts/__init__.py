"""The committed results the chapters read, shipped inside the package.

Every file here is package data (``[tool.setuptools.package-data]`` in ``pyproject.toml``), so an
installed ``coatlib`` (a wheel, Colab) has them without the repository. Chapters and library code
read them through :mod:`importlib.resources`, never through a path relative to a notebook::

    from coatlib.artefacts import read_json, read_text
    bench = read_json("fsdp_cpu.json")     # benchmarks/fsdp.py ... --out coatlib/artefacts/fsdp_cpu.json
    rows = read_text("zoo_cpu.txt")        # python benchmarks/zoo.py > coatlib/artefacts/zoo_cpu.txt

The benchmarks and experiments write to the folder they are given (``--out``); a file here changes
only when someone copies a new result in on purpose (CONTRIBUTING.md, "Results").
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importlib.resources.abc is new in Python 3.11
    from importlib.resources.abc import Traversable


def artefact(name: str) -> "Traversable":
    """The shipped file ``name`` (e.g. ``"fsdp_cpu.json"`` or ``"inside_coatnet/inside.json"``).

    Raises ``FileNotFoundError`` naming the file and the files that do ship when it is missing."""
    path = files(__name__)
    for part in name.split("/"):
        path = path / part
    if not path.is_file():
        shipped = sorted(p.name for p in files(__name__).iterdir() if p.is_file() and not p.name.endswith(".py"))
        raise FileNotFoundError(
            f"coatlib/artefacts/{name} is not in this installation of coatlib (it has {', '.join(shipped)}): "
            "install coatlib from the book's repository, which ships every artefact the chapters read"
        )
    return path


def read_text(name: str) -> str:
    """The text of the shipped file ``name``."""
    return artefact(name).read_text(encoding="utf-8")


def read_json(name: str):
    """The shipped JSON file ``name``, parsed; a broken file is reported with its name."""
    try:
        return json.loads(read_text(name))
    except json.JSONDecodeError as e:
        raise ValueError(f"coatlib/artefacts/{name} is not valid JSON ({e}): restore it with git") from e


def imagenet_classes() -> list[str]:
    """The names of ImageNet-1k's 1000 classes in the order of a classifier's outputs, e.g.
    ``imagenet_classes()[281] == "tabby, tabby cat"``: the lemmas of each class's WordNet synset.

    They ship with coatlib (``imagenet_classes.txt``, copied from timm's ``timm/data/_info``), so naming
    a prediction needs neither timm nor a network.
    """
    lines = read_text("imagenet_classes.txt").splitlines()
    return [line.split("\t", 1)[1] for line in lines if line and not line.startswith("#")]
