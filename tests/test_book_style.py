"""The book reads well and says true things: code fits the page, every name it cites exists, and
the errors found in issue 13 stay fixed.

Every notebook listed in ``_toc.yml`` is checked (chapter 7 included).
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from coatlib.teaching import book
from coatlib.teaching.exercises import CHECKS

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]
TOC_NOTEBOOKS = book.toc_notebooks(ROOT)
PAGES = sorted((ROOT / "book").glob("*.md"))
MAX_CODE_LINE = 88  # characters: longer lines are clipped in the HTML book at 1,280 px


def cells(path: Path):
    return nbformat.read(path, as_version=4).cells


def text_of(path: Path) -> str:
    """Every cell's source (markdown and code) of a notebook, or a page's text."""
    if path.suffix == ".ipynb":
        return "\n".join(cell.source for cell in cells(path))
    return path.read_text(encoding="utf-8")


def markdown_of(path: Path) -> str:
    return "\n".join(c.source for c in cells(path) if c.cell_type == "markdown")


def cell_by_id(path: Path, cell_id: str):
    return next(c for c in cells(path) if c.get("id") == cell_id)


def chapter(number: int) -> Path:
    return next(p for p in TOC_NOTEBOOKS if p.name.startswith(f"{number:02d}_"))


ALL_SOURCES = TOC_NOTEBOOKS + PAGES


# ---------------------------------------------------------------------------- code fits the page


@pytest.mark.parametrize("path", TOC_NOTEBOOKS, ids=lambda p: p.name)
def test_code_lines_fit_the_page(path):
    long = [
        f"cell {i} line {n}: {len(line)} characters: {line.strip()[:60]}..."
        for i, cell in enumerate(cells(path))
        if cell.cell_type == "code"
        for n, line in enumerate(cell.source.splitlines(), start=1)
        if len(line) > MAX_CODE_LINE
    ]
    assert not long, f"{path.name}: {len(long)} code lines over {MAX_CODE_LINE} characters:\n" + "\n".join(long)


# ---------------------------------------------------------------------------- every name cited exists


def defined_labels() -> set[str]:
    labels = set()
    for path in ALL_SOURCES:
        text = text_of(path)
        labels |= set(re.findall(r"^:label:\s*(\S+)", text, re.M))
        labels |= set(re.findall(r"^:name:\s*(\S+)", text, re.M))
        labels |= set(re.findall(r"^\(([\w-]+)\)=\s*$", text, re.M))
    return labels


@pytest.mark.parametrize("path", ALL_SOURCES, ids=lambda p: p.name)
def test_every_exercise_label_and_check_named_exists(path):
    text = text_of(path)
    labels = defined_labels()
    named = set(re.findall(r"\bex-[a-z0-9]+(?:-[a-z0-9]+)*", text))
    assert not named - labels, f"{path.name} names exercises that do not exist: {sorted(named - labels)}"
    checks = set(re.findall(r"\bcheck_[a-z0-9_]+", text))
    assert not checks - set(CHECKS), f"{path.name} names checks that do not exist: {sorted(checks - set(CHECKS))}"
    for target in re.findall(r"\{(?:ref|numref)\}`(?:[^`<]*<)?([^`>]+)>?`", text):
        assert target in labels, f"{path.name}: {{ref}} to {target!r}, which no page defines"
    for target in re.findall(r"\{doc\}`(?:[^`<]*<)?([^`>]+)>?`", text):
        base = path.parent / target
        assert base.with_suffix(".md").is_file() or base.with_suffix(".ipynb").is_file(), (
            f"{path.name}: {{doc}} to {target!r}, which does not exist"
        )


def test_instructors_handout_lists_every_chapter():
    page = (ROOT / "book" / "instructors.md").read_text(encoding="utf-8")
    block = page.split("student-edition handout/\n```", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    written = re.findall(r"wrote handout/(\S+)", block)
    assert written == [p.name for p in TOC_NOTEBOOKS]


def preface_commands() -> list[str]:
    """The commands the preface tells the reader to run: its ``bash`` blocks' lines (comments cut) and the
    ``python -m ...`` commands of its text, each command of an ``a && b`` line on its own."""
    preface = (ROOT / "book" / "preface.md").read_text(encoding="utf-8")
    lines = [
        line.split("#")[0] for block in re.findall(r"```bash\n(.*?)```", preface, re.S) for line in block.splitlines()
    ]
    lines += re.findall(r"`(python -m [^`]+)`", preface)
    return [part.strip() for line in lines for part in line.split("&&") if part.strip()]


def command_problem(command: str) -> str | None:
    """Why ``command`` cannot run in this installation, or None: its program must exist, its subcommand
    (``lab``, ``build``, ``execute``, ...) must answer ``--help``, and that help must name each of its options."""
    import shlex
    import shutil
    import subprocess
    import sys

    program, *args = shlex.split(command.replace("<chapter>", "chapter"))
    if program == "cd":  # the shell's own
        return None
    if program == "python" and args[:1] == ["-m"]:
        argv, program, args = [sys.executable, "-m", args[1]], f"python -m {args[1]}", args[2:]
    elif program == "pip":
        argv = [sys.executable, "-m", "pip"]
    elif shutil.which(program) is None:
        return f"{program} is not installed (pip install -r requirements.txt brings the Python ones)"
    else:
        argv = [program]
    if program == "git":  # git clone URL: git's own, nothing of this installation to check
        return None
    sub = [a for a in args[:1] if a.isidentifier() and not (ROOT / a).exists()]  # a subcommand, not a path
    found = subprocess.run([*argv, *sub, "--help"], cwd=ROOT, capture_output=True, text=True)
    if found.returncode != 0:
        return f"{' '.join([program, *sub])} --help failed: {(found.stderr or found.stdout).strip()[-300:]}"
    options = [a.split("=")[0] for a in args if a.startswith("-")]
    unknown = [o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", found.stdout)]
    return f"{' '.join([program, *sub])} has no option {', '.join(unknown)}" if unknown else None


def test_preface_commands_exist():
    """Every command the preface tells the reader to run is one this installation provides."""
    commands = preface_commands()
    assert "jupyter lab notebooks/" in commands and "python -m coatlib.teaching.book execute" in " ".join(commands)
    problems = {command: command_problem(command) for command in commands}
    assert {c: p for c, p in problems.items() if p} == {}


def test_a_broken_preface_command_is_caught():
    assert command_problem("python -m coatlib.teaching.book execute notebooks/x.ipynb") is None
    assert "No module named 'coatlib.teching'" in command_problem("python -m coatlib.teching.book execute")
    assert "has no option --keep-goin" in command_problem("jupyter-book build . -W --keep-goin")
    assert "has no option --nbval-sanitise-with" in command_problem("python -m pytest --nbval-sanitise-with x.cfg")
    assert "is not installed" in command_problem("jupyterr lab notebooks/")


def test_preface_install_instructions_bring_jupyterlab():
    """The preface says ``jupyter lab notebooks/`` after ``pip install -r requirements.txt``."""
    preface = (ROOT / "book" / "preface.md").read_text(encoding="utf-8")
    assert "pip install -r requirements.txt" in preface
    if "jupyter lab" in preface:
        requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8").lower()
        assert re.search(r"^jupyterlab\b", requirements, re.M), "requirements.txt must bring JupyterLab"


# ---------------------------------------------------------------------------- issue 13's errors stay fixed

# (where, wrong statement) pairs: the text of the book must not say these again.
FIXED = [
    (6, r"compares itself with[^.]*ConvNeXt"),  # 1: ConvNeXt (2022) is later than CoAtNet
    (2, r"256 times fewer tokens|65\{,\}536"),  # 2: 3136 / 196 = 16
    (3, r"Every diagonal of the index matrix holds one number"),  # 3: block-Toeplitz
    (3, r"different for every query near the border"),  # 4
    (3, r"rests on 300-epoch"),  # 5: not in the paper
    (3, r"2 \\cdot 10\^\{-3\}"),  # 5: fit's default is 3e-3
    (5, r"last width is written \*\*1026\*\*"),  # 7: the paper's own typo
    (6, r"9 pieces\"\)"),  # 8: the old hand-made Swin panel
    (1, r"counts\s+both MACs and measured throughput"),  # 11: the paper's tables have no throughput
]


@pytest.mark.parametrize("number,pattern", FIXED, ids=[f"ch{n}-{p[:24]}" for n, p in FIXED])
def test_issue_13_errors_stay_fixed(number, pattern):
    assert not re.search(pattern, text_of(chapter(number))), f"chapter {number} says again: {pattern}"


def test_eq3_bias_is_not_credited_to_shaw_alone():
    """Shaw et al.'s relative embeddings are vectors that meet the query; Eq. 3's bias is a scalar (error 6)."""
    for path in (chapter(3), ROOT / "book" / "glossary.md"):
        text = text_of(path) if path.suffix == ".ipynb" else path.read_text(encoding="utf-8")
        for paragraph in re.split(r"\n\s*\n", text):
            if "shaw2018relative" in paragraph:
                assert "vector" in paragraph, f"{path.name}: cites Shaw et al. without saying theirs are vectors"
    intro = text_of(chapter(3))
    assert "Eq. 3, post-softmax" in intro and "Eq. 3, pre-softmax" in intro  # Eq. 3 holds both forms
    assert "adapted from" in markdown_of(chapter(3))  # the book's Table 1 is not the paper's


def test_chapter_3_quotes_fits_learning_rate():
    from coatlib.train import fit

    lr = inspect.signature(fit).parameters["lr"].default
    mantissa, exponent = f"{lr:.0e}".split("e")
    pages = [p for p in TOC_NOTEBOOKS if p.name.startswith("03_")]  # the chapter and its sub-pages
    assert f"{mantissa} \\cdot 10^{{{int(exponent)}}}" in "\n".join(markdown_of(p) for p in pages)


def test_relative_index_is_block_toeplitz_and_post_softmax_rows_differ():
    """What chapter 3 says about the index matrix and the post-softmax row sums (errors 3 and 4)."""
    import torch

    from coatlib.attention import relative_position_index

    H, W = 3, 4
    index = relative_position_index(H, W)
    assert torch.diagonal(index, 1).tolist() == [16, 16, 16, 13] * 2 + [16, 16, 16]
    blocks = index.view(H, W, H, W).permute(0, 2, 1, 3)  # (row i, row j, col i, col j)
    for a in range(H):
        for b in range(H):
            block = blocks[a, b]
            assert all(torch.diagonal(block, k).unique().numel() == 1 for k in range(-W + 1, W))
    torch.manual_seed(0)
    row_sums = torch.randn(2 * H - 1, 2 * W - 1).flatten()[index].sum(-1)
    assert row_sums.unique().numel() == H * W


def test_chapter_5_table_3_is_the_configuration_with_1024():
    """Chapter 5 prints the paper's Table 3 from CONFIGS (a Table, so no width is typed by hand)."""
    from coatlib.models.coatnet import CONFIGS

    nb = nbformat.read(chapter(5), as_version=4)
    printed = "\n".join(
        out.get("data", {}).get("text/plain", "") for c in nb.cells if c.cell_type == "code" for out in c.outputs
    )
    for stage, column in (("S1", 0), ("S2", 1), ("S3", 2), ("S4", 3)):
        row = re.search(rf"^{stage} .*$", printed, re.M).group(0)
        cells_ = re.split(r"\s{2,}", row.strip())[3:]
        for i, cell in enumerate(cells_):
            config = CONFIGS[f"coatnet_{i}"]
            assert cell == f"{config.depths[column]} / {config.widths[column]}", (stage, i, cell)
    md = markdown_of(chapter(5))
    assert "1026" in md and "typo" in md  # the book says why its table differs from the paper's


def _chapter_6_dict(name: str) -> dict:
    source = cell_by_id(chapter(6), "7f2e950a").source
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
            return ast.literal_eval(node.value)
    raise AssertionError(f"chapter 6 has no {name}")


def test_chapter_6_accuracies_are_torchvisions_v1_weights(torchvision):
    """One recipe per line (error 9): every torchvision accuracy is its IMAGENET1K_V1 weight's."""
    from torchvision.models import get_model_weights

    top1 = _chapter_6_dict("TOP1")
    for name, value in top1.items():
        if name in ("mobilenet_v1", "vit_ti_16", "vit_s_16"):
            continue  # not in torchvision: from the papers
        meta = get_model_weights(name).IMAGENET1K_V1.meta
        assert value == pytest.approx(meta["_metrics"]["ImageNet-1K"]["acc@1"]), name
    v2 = _chapter_6_dict("RECIPE_V2")
    assert v2["resnet50"] == pytest.approx(
        get_model_weights("resnet50").IMAGENET1K_V2.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    )
