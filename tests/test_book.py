"""The book: table of contents, install cells, exercises and their solutions, committed outputs,
figures, and an HTML build without warnings or broken internal links.

The conventions checked here are described in ``coatlib/book.py``.
"""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from coatlib.teaching import book
from coatlib.teaching.exercises import CHECKS

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
DIRECTIVE = re.compile(r"^```\{(exercise|solution|solution-start|solution-end)\}[ \t]*([^\n]*)\n(.*?)^```", re.M | re.S)


def read(path: Path):
    return nbformat.read(path, as_version=4)


def directives(nb) -> list[tuple[int, str, str, str]]:
    """``(cell index, kind, argument, body)`` of every sphinx-exercise directive in markdown cells."""
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            found += [(index, kind, arg.strip(), body) for kind, arg, body in DIRECTIVE.findall(cell.source)]
    return found


def option(body: str, name: str) -> str | None:
    match = re.search(rf"^:{name}:[ \t]*(.*)$", body, re.M)
    return match.group(1).strip() if match else None


def test_notebooks_and_table_of_contents_agree():
    files = book.toc_files(ROOT)
    listed = {ROOT / f"{f}.ipynb" for f in files if (ROOT / f"{f}.ipynb").is_file()}
    assert NOTEBOOKS and set(NOTEBOOKS) == listed, "every notebook in notebooks/ must be listed in _toc.yml"
    for f in files:
        assert any((ROOT / f"{f}{ext}").is_file() for ext in (".md", ".ipynb")), (
            f"_toc.yml lists {f}, which does not exist"
        )
    assert book.toc_notebooks(ROOT) == [ROOT / f"{f}.ipynb" for f in files if (ROOT / f"{f}.ipynb") in listed]


def test_config():
    config = book._load_yaml(ROOT / "_config.yml")
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["only_build_toc_files"] is True
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert "sphinx_exercise" in config["sphinx"]["extra_extensions"]
    assert all((ROOT / f).is_file() for f in config["bibtex_bibfiles"])
    url, branch = book.repository(ROOT)
    assert url.startswith("https://github.com/") and branch


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_code_cell_is_the_stamped_install_cell(path):
    code = [c for c in read(path).cells if c.cell_type == "code"]
    install = book.install_source(*book.repository(ROOT))
    assert code[0].source == install, f"run `python -m coatlib.teaching.book execute {path.relative_to(ROOT)}`"
    assert book.INSTALL_TAG in code[0].metadata.get("tags", [])
    assert not any(book.INSTALL_TAG in c.metadata.get("tags", []) for c in code[1:])
    assert not code[0].get("outputs"), "the install cell prints nothing where coatlib is installed"


def test_install_cell_is_stamped_into_a_notebook_without_one():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# T"), nbformat.v4.new_code_cell("x = 1")])
    book.stamp_install_cell(nb, "SOURCE")
    assert [c.source for c in nb.cells] == ["# T", "SOURCE", "x = 1"]
    book.stamp_install_cell(nb, "NEW")
    assert [c.source for c in nb.cells] == ["# T", "NEW", "x = 1"]


def test_execute_stamps_the_install_cell_and_stores_the_outputs(tmp_path):
    path = tmp_path / "chapter.ipynb"
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("# T"), nbformat.v4.new_code_cell("print(6 * 7)")]
    )
    nbformat.write(nb, path)
    book.execute(path, book.install_source("https://example.org/repo", "main"), timeout=120)
    cells = read(path).cells
    assert cells[1].source == book.install_source("https://example.org/repo", "main") and not cells[1].outputs
    assert [c.execution_count for c in cells[1:]] == [1, 2] and cells[2].outputs[0]["text"] == "42\n"


def test_execute_command_rejects_missing_notebooks(capsys, monkeypatch):
    monkeypatch.chdir(ROOT / "notebooks")  # the root is found above the working directory
    with pytest.raises(SystemExit):
        book.main(["execute", str(ROOT / "notebooks" / "no_such_chapter.ipynb")])
    assert "no such notebook" in capsys.readouterr().err


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_exercises_have_collapsed_solutions_and_checks(path):
    nb = read(path)
    found = directives(nb)
    exercises = [option(body, "label") for _, kind, _, body in found if kind == "exercise"]
    assert 3 <= len(exercises) <= 5, f"{len(exercises)} exercises; each chapter has 3 to 5"
    assert all(label and label.startswith("ex-") for label in exercises) and len(set(exercises)) == len(exercises)

    solved = {}
    for position, (index, kind, arg, body) in enumerate(found):
        if kind in ("solution", "solution-start"):
            assert arg in exercises, f"solution for unknown exercise {arg!r}"
            assert option(body, "class") == "dropdown", f"the solution of {arg} must be collapsed (:class: dropdown)"
            assert arg not in solved, f"two solutions for {arg}"
            solved[arg] = kind
        if kind == "solution-start":
            end = found[position + 1]
            assert end[1] == "solution-end", f"{{solution-start}} {arg} has no {{solution-end}}"
            inside = [c for c in nb.cells[index + 1 : end[0]] if c.cell_type == "code"]
            assert inside, f"the code solution of {arg} has no code cell"
            for cell in inside:
                assert book.SOLUTION_TAG in cell.metadata.get("tags", []), (
                    f"solution code of {arg} must be tagged 'solution'"
                )
                lines = [line.strip() for line in cell.source.splitlines()]
                assert lines.count(book.BEGIN_SOLUTION) == lines.count(book.END_SOLUTION) >= 1
                assert lines.index(book.BEGIN_SOLUTION) < lines.index(book.END_SOLUTION)
                names = re.findall(r"^def (\w+)\(", cell.source, re.M)
                check = next(c for c in nb.cells[end[0] + 1 :] if c.cell_type == "code")
                call = re.fullmatch(r"(check_\w+)\((\w+)\)", check.source.strip())
                assert call and call.group(1) in CHECKS and call.group(2) in names, (
                    f"after the solution of {arg}, a code cell must call its check on the solution's function"
                )
                assert check.outputs[0]["text"] == f"{call.group(1)}: correct\n"
    assert set(solved) == set(exercises), f"exercises without a solution: {set(exercises) - set(solved)}"
    tagged = [i for i, c in enumerate(nb.cells) if book.SOLUTION_TAG in c.metadata.get("tags", [])]
    ranges = [(i, e[0]) for (i, k, *_), e in zip(found, found[1:]) if k == "solution-start"]
    assert all(any(a < t < b for a, b in ranges) for t in tagged), (
        "a 'solution' cell outside {solution-start}/{solution-end}"
    )


def test_every_check_is_used_in_a_chapter():
    sources = "\n".join(c.source for path in NOTEBOOKS for c in read(path).cells if c.cell_type == "code")
    assert {name for name in CHECKS if f"{name}(" not in sources} == set()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_come_from_one_clean_run(path):
    code = [c for c in read(path).cells if c.cell_type == "code"]
    skipped = [c for c in code if "skip-execution" in c.metadata.get("tags", [])]
    ran = [c for c in code if c not in skipped]
    assert [c.execution_count for c in ran] == list(range(1, len(ran) + 1)), (
        f"not executed top to bottom in one run: `python -m coatlib.teaching.book execute {path.relative_to(ROOT)}`"
    )
    for cell in skipped:  # shown but not run offline (e.g. downloads in Colab): nbval must skip it too
        assert cell.source.startswith("# NBVAL_SKIP") and not cell.outputs, f"skipped cell {cell.source[:60]!r}"
    for cell in code:
        for out in cell.outputs:
            assert out.output_type != "error", f"error output in {cell.source[:60]!r}"
            assert out.get("name") != "stderr", (
                f"stderr output (a warning?) in {cell.source[:60]!r}: {out.get('text', '')[:200]}"
            )
            text = out.get("text") or out.get("data", {}).get("text/plain", "")
            assert text.count("\n") <= 40, f"output longer than a screen (40 lines) in {cell.source[:60]!r}"
        if book.IGNORE_OUTPUT in cell.source:
            assert cell.source.startswith(book.IGNORE_OUTPUT), "put # NBVAL_IGNORE_OUTPUT on the first line"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_figures_are_opaque_and_present(path):
    import base64

    import matplotlib.image

    glued = "application/papermill.record/image/png"  # a figure glued with myst_nb.glue
    images = [
        out.data.get("image/png") or out.data[glued]
        for c in read(path).cells
        if c.cell_type == "code"
        for out in c.outputs
        if "image/png" in out.get("data", {}) or glued in out.get("data", {})
    ]
    assert images, "each chapter has figures"
    for png in images:
        pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(png)), format="png")
        if pixels.shape[-1] == 4:  # a transparent background would vanish in the dark theme
            assert pixels[..., 3].min() == 1.0


# --- the HTML book -------------------------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        for key in ("href", "src"):
            if attrs.get(key) and not (tag == "link" and attrs.get("rel") == "preconnect"):
                self.links.append(attrs[key])


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_internal_links_resolve(html):
    pages = {p: _parse(p) for p in html.rglob("*.html") if "_static" not in p.relative_to(html).parts}
    broken = []
    for page, parsed in pages.items():
        for link in parsed.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("mailto:", "data:", "javascript:")):
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(html)}: {link}")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{page.relative_to(html)}: {link} (no such anchor)")
    assert not broken, "broken internal links:\n" + "\n".join(broken[:20])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_pages_have_colab_button_math_figures_and_exercises(html, path):
    url, branch = book.repository(ROOT)
    page = (html / path.relative_to(ROOT)).with_suffix(".html").read_text(encoding="utf-8")
    colab = f"https://colab.research.google.com/github/{urlsplit(url).path.strip('/')}/blob/{branch}/{path.relative_to(ROOT).as_posix()}"
    assert colab in page
    assert 'class="math' in page
    assert "<img" in page
    assert page.count('class="exercise') >= 3 and 'class="solution dropdown' in page
