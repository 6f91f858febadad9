"""Shared fixtures: the reference library torchvision, when it can be imported.

The import goes through ``benchmarks/peers.py`` (shared with the benchmarks): a
normal import first, then, on a CPU-only torch where the CUDA torchvision wheel
fails in ``torchvision._meta_registrations``, an empty stand-in for that module
(``../shared/REFERENCE.md`` section 5). Tests that need torchvision are skipped
when it is still not importable. ``digits16`` is the small digits set the tests of ``fit`` train on.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.data import Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from peers import import_peer  # noqa: E402

from coatlib.data import load  # noqa: E402


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


@pytest.fixture(scope="module")
def digits16():
    """512 training and all 360 test digits at 16x16: 8 steps of 64 per epoch (tests of fit)."""
    return Subset(load("digits", "train", image_size=16), range(512)), load("digits", "test", image_size=16)


ROOT_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def html(tmp_path_factory):
    """The book built once per test session (HTML, warnings as errors): its _build/html folder."""
    if shutil.which("jupyter-book") is None:
        pytest.skip("jupyter-book is not installed")
    out = tmp_path_factory.mktemp("book")
    run = subprocess.run(
        ["jupyter-book", "build", str(ROOT_DIR), "--path-output", str(out), "-W", "--keep-going"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, f"the book does not build without warnings:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return out / "_build" / "html"
