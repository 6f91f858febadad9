"""What a reader sees (issue 22): the rules of ``coatlib.teaching.reader_checks`` on known cases,
then every chapter notebook and every page of the built HTML book against them.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from coatlib.teaching import book, reader_checks  # noqa: E402
from coatlib.teaching.display import Table  # noqa: E402

nbformat = pytest.importorskip("nbformat")
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = book.toc_notebooks(ROOT)


def notebook(markdown: str, code: str = "x = 1", output: str = "") -> nbformat.NotebookNode:
    cell = new_code_cell(code, outputs=[new_output("stream", name="stdout", text=output)] if output else [])
    return new_notebook(cells=[new_markdown_cell(markdown), cell])


# --- the rules, on known cases --------------------------------------------------------------------


def test_a_typed_result_is_found_and_a_glued_one_is_not():
    nb = notebook("Accuracy reached 0.731 after 1,024 steps.", output="acc 0.731 after 1024 steps\n")
    assert reader_checks.typed_numbers(nb) == ["0.731", "1024"]
    glued = notebook("Accuracy reached {glue:text}`acc:.3f` after many steps.", output="acc 0.731\n")
    assert reader_checks.typed_numbers(glued) == []


def test_settings_math_code_and_small_numbers_are_not_results():
    nb = notebook(
        "Images of 224 pixels, $0.731$ in math, `0.731` in code, 12 heads, 0.5 dropout, [a](x/0.731).",
        code="size = 224",
        output="224 0.731 12 0.5\n",
    )
    assert reader_checks.typed_numbers(nb) == []


def test_a_number_that_differs_from_the_output_is_not_flagged_as_typed():
    # the drift itself cannot be found by the rule; gluing is what prevents it
    assert reader_checks.typed_numbers(notebook("about 375 steps", output="370 steps\n")) == []


def test_typed_references_are_found_and_roles_are_not():
    text = "As Chapter 6 and chapter 5b showed (see Exercise 7.3), and {doc}`06_family_tree`, paper section 2.2."
    assert reader_checks.typed_references(text) == ["Chapter 6", "chapter 5b", "Exercise 7.3"]
    assert reader_checks.typed_references("see {numref}`fig-ch1-kernels` and {ref}`ex-depthwise`") == []


def test_prose_words_leave_out_code_math_and_options():
    nb = notebook("One two three.\n\n```{figure} x.png\n:name: fig-x\n```\n\n$$a + b$$ `code here`")
    assert reader_checks.prose_words(nb) == 3


def test_wide_output_lines_and_unglued_figures():
    nb = notebook("text", output="x" * 89 + "\nshort\n")
    assert reader_checks.wide_output_lines(nb) == ["x" * 89]
    nb.cells[1].outputs.append(new_output("display_data", data={"image/png": "iVBOR", "text/plain": "<Figure>"}))
    assert reader_checks.unglued_figures(nb) == ["x = 1"]
    nb.cells[1].outputs[-1].metadata = {"scrapbook": {"name": "fig-x"}}
    assert reader_checks.unglued_figures(nb) == []


def _png(width_in: float, dpi: int) -> bytes:
    fig = plt.figure(figsize=(width_in, 2), dpi=dpi)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def test_figure_scale_reads_the_png_and_finds_figures_drawn_too_wide():
    pixels, dpi = reader_checks.png_size(_png(7.5, 150))
    assert pixels == 1125 and dpi == pytest.approx(150, abs=0.1)
    assert reader_checks.figure_scale(_png(7.5, 150)) > 1.0  # 720 CSS px drawn, 780 shown
    assert reader_checks.figure_scale(_png(12, 110)) == pytest.approx(780 / 1152, abs=0.01)
    assert reader_checks.figure_scale(_png(7.5, 150), width_attr="360px") == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="not a PNG"):
        reader_checks.png_size(b"GIF89a")


def test_check_page_finds_each_problem(tmp_path):
    import base64

    png = base64.b64encode(_png(12, 110)).decode()
    page = tmp_path / "page.html"
    page.write_text(
        "<html><body><article>"
        f'<figure><img src="data:image/png;base64,{png}"><figcaption>no number</figcaption></figure>'
        '<div class="cell_output"><pre># NBVAL_IGNORE_OUTPUT\n' + "y" * 100 + "</pre></div>"
        "<p>" + "word " * 3001 + "</p></article></body></html>"
    )
    problems = "\n".join(reader_checks.check_page(page))
    for expected in ("no numbered caption", "shown at 0.68", "'NBVAL_' is visible", "100 characters", "3003 words"):
        assert expected in problems


def test_table_is_html_in_the_book_and_aligned_text_elsewhere():
    table = Table([("coatnet_0", 25.04), ("coatnet_1", 42.25)], ["model", "params (M)"], formats=["", ".1f"])
    assert repr(table).splitlines() == [
        "model      params (M)",
        "---------  ----------",
        "coatnet_0        25.0",
        "coatnet_1        42.2",
    ]
    assert '<th style="text-align: right">params (M)</th>' in table._repr_html_()
    assert "<td>coatnet_0</td>" in table._repr_html_()
    with pytest.raises(ValueError, match="one value per column"):
        Table([(1,)], ["a", "b"])


# --- the chapters and the built book ---------------------------------------------------------------


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_reads_well(path):
    problems = reader_checks.check_notebook(path)
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


def test_book_pages_type_no_chapter_numbers():
    for page in sorted((ROOT / "book").glob("*.md")):
        assert reader_checks.typed_references(page.read_text(encoding="utf-8")) == [], page.name


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_built_page_reads_well(html, path):
    page = (html / path.relative_to(ROOT)).with_suffix(".html")
    problems = reader_checks.check_page(page)
    assert not problems, f"{page.name}:\n" + "\n".join(problems)


def test_mathematics_is_served_by_the_book(html):
    page = (html / "notebooks" / CHAPTERS[0].name).with_suffix(".html").read_text(encoding="utf-8")
    assert 'src="../_static/mathjax/tex-mml-chtml.js"' in page and "cdn.jsdelivr.net" not in page
    assert (html / "_static" / "mathjax" / "tex-mml-chtml.js").stat().st_size > 500_000
    assert any((html / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
