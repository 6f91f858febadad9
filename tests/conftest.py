"""Shared fixtures: the reference library torchvision, when it can be imported.

The import goes through ``benchmarks/peers.py`` (shared with the benchmarks): a
normal import first, then, on a CPU-only torch where the CUDA torchvision wheel
fails in ``torchvision._meta_registrations``, an empty stand-in for that module
(``../shared/REFERENCE.md`` section 5). Tests that need torchvision are skipped
when it is still not importable.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from peers import import_peer  # noqa: E402


@pytest.fixture(scope="session")
def torchvision():
    tv = import_peer("torchvision")
    if tv is None:
        pytest.skip("torchvision is not importable here")
    return tv


@pytest.fixture(scope="session")
def timm():
    """timm, the reference for CoAtNet's trained weights (imported after the torchvision stand-in)."""
    import_peer("torchvision")
    lib = import_peer("timm")
    if lib is None:
        pytest.skip("timm is not importable here")
    return lib
