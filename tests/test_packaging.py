"""coatlib as an installed package: every third-party import is declared in ``pyproject.toml``, the
chapters read only files that ship inside the package, and those files are read through
``coatlib.artefacts`` (``importlib.resources``).

``.ci/wheel_check`` proves the same end to end: it builds the wheel, installs it into a fresh virtual
environment and executes every chapter from a folder outside the repository (the ``wheel`` job of
``.github/workflows/tests.yml``).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import tomllib

from coatlib import artefacts

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def normalise(distribution: str) -> str:
    """A distribution's name as PEP 503 compares them: scikit_image, Scikit.Image -> scikit-image."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def requirement_name(requirement: str) -> str:
    return normalise(re.match(r"[A-Za-z0-9_.-]+", requirement).group())


def declared() -> dict[str, str]:
    """Every distribution pyproject.toml declares -> where: "dependencies" or the extra's name."""
    found = {requirement_name(r): "dependencies" for r in PYPROJECT["dependencies"]}
    for extra, requirements in PYPROJECT["optional-dependencies"].items():
        for r in requirements:
            found.setdefault(requirement_name(r), f"[{extra}]")
    return found


def code_cells(path: Path) -> list[str]:
    """The code of a notebook's cells, without IPython's %magic and !shell lines."""
    cells = nbformat.read(path, as_version=4).cells
    return [
        "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        for cell in cells
        if cell.cell_type == "code"
    ]


def top_level_imports(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> the files of coatlib/ and notebooks/ that import it (not stdlib, not coatlib)."""
    sources = {p: [p.read_text(encoding="utf-8")] for p in sorted((ROOT / "coatlib").rglob("*.py"))}
    sources |= {p: code_cells(p) for p in NOTEBOOKS}
    found: dict[str, set[str]] = {}
    for path, codes in sources.items():
        for code in codes:
            for name in top_level_imports(code) - set(sys.stdlib_module_names) - {"coatlib"}:
                found.setdefault(name, set()).add(path.relative_to(ROOT).as_posix())
    return found


def test_every_third_party_import_is_declared_in_pyproject():
    imports = third_party_imports()
    assert {"torch", "einops", "skimage", "myst_nb", "nbformat"} <= set(imports)  # the scan sees them
    providers = importlib.metadata.packages_distributions()
    known = declared()
    undeclared = []
    for module, files in sorted(imports.items()):
        distributions = {normalise(d) for d in providers.get(module, [])}
        if not distributions:
            undeclared.append(f"{module} (not installed here, so its distribution is unknown) in {sorted(files)}")
        elif not distributions & set(known):
            undeclared.append(f"{module} (distribution {', '.join(sorted(distributions))}) in {sorted(files)}")
    assert not undeclared, (
        "imported but declared neither in [project] dependencies nor in an extra of pyproject.toml:\n"
        + "\n".join(undeclared)
    )


def test_the_scan_catches_an_undeclared_import():
    assert top_level_imports("import yaml\nfrom sklearn.datasets import load_digits\nfrom . import x") == {
        "yaml",
        "sklearn",
    }
    assert "pandas" not in declared()  # so an `import pandas` in a chapter would fail the test above


def test_the_torch_floor_has_fully_shard():
    # coatlib.train.distributed: `from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard`, public since 2.6
    torch_requirement = next(r for r in PYPROJECT["dependencies"] if requirement_name(r) == "torch")
    assert torch_requirement == "torch>=2.6"
    assert "from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard" in (
        ROOT / "coatlib" / "train" / "distributed.py"
    ).read_text(encoding="utf-8")


def test_coursework_extra_has_what_the_grader_and_student_edition_import():
    coursework = {requirement_name(r) for r in PYPROJECT["optional-dependencies"]["coursework"]}
    assert {"nbformat", "nbclient", "ipykernel", "pyyaml"} <= coursework


def test_requirements_pin_every_dependency():
    pinned = {
        requirement_name(line)
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    extras = PYPROJECT["optional-dependencies"]
    needed = {requirement_name(r) for r in PYPROJECT["dependencies"]}
    needed |= {requirement_name(r) for name in ("test", "chapters", "coursework", "peers") for r in extras[name]}
    assert needed - pinned == set(), "add these to requirements.txt (exact versions CI tests with)"


# ---------------------------------------------------------------------------- what the chapters read

# A read of a file by a path: relative to the notebook ("../results/..."), or any literal path.
READS_A_PATH = re.compile(r"""\.\./|\bPath\(\s*["']|\bopen\(\s*["']""")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapters_read_no_file_outside_the_package(path):
    """A chapter run from the installed package (Colab, the wheel check) has no repository around it."""
    reads = [
        f"code cell {i}: {line.strip()}"
        for i, code in enumerate(code_cells(path))
        for line in code.splitlines()
        if READS_A_PATH.search(line)
    ]
    assert not reads, (
        f"{path.name} reads files by path; ship them in coatlib/artefacts/ and use coatlib.artefacts:\n"
        + ("\n".join(reads))
    )


def test_the_path_check_catches_a_repository_read():
    assert READS_A_PATH.search('zoo = Path("../results/zoo_cpu.txt").read_text()')
    assert READS_A_PATH.search('json.load(open("results/fsdp_cpu.json"))')
    assert not READS_A_PATH.search('RUNS = Path(tempfile.mkdtemp(prefix="coatlib-scaling-"))')
    assert not READS_A_PATH.search('bench = read_json("fsdp_cpu.json")')


def test_artefacts_are_read_from_the_package():
    bench = artefacts.read_json("fsdp_cpu.json")
    assert set(bench["median_step_s"]) == {"DDP", "FSDP"}
    assert "| resnet50 |" in artefacts.read_text("zoo_cpu.txt")
    assert artefacts.artefact("inside_coatnet/inside.json").is_file()


def test_a_missing_artefact_is_named_with_what_ships():
    with pytest.raises(FileNotFoundError, match=r"coatlib/artefacts/results/zoo_cpu\.txt .*fsdp_cpu\.json"):
        artefacts.read_text("results/zoo_cpu.txt")


def test_a_broken_artefact_is_named(monkeypatch):
    monkeypatch.setattr(artefacts, "read_text", lambda name: "{not json")
    with pytest.raises(ValueError, match=r"coatlib/artefacts/fsdp_cpu\.json is not valid JSON"):
        artefacts.read_json("fsdp_cpu.json")
