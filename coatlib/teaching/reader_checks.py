"""Checks of what a reader sees: the chapter notebooks and the built HTML book.

Run from the repository root (``tests/test_reader_checks.py`` runs the same checks)::

    python -m coatlib.teaching.reader_checks notebooks/07_scaling_up.ipynb   # the notebooks' checks
    jupyter-book build . && python -m coatlib.teaching.reader_checks --html _build/html

On a notebook:

* :func:`typed_numbers`: a number typed in the prose that also appears in the chapter's outputs
  must be glued instead (myst-nb ``glue``), or prose and output can drift apart. The rule: a
  *number* is a decimal with at least two significant digits (``0.73``, ``44.71``, ``77.1%``) or an
  integer of three or more digits (``375``, ``1,024``); it counts when the same number appears in a
  code cell's output and nowhere in the chapter's code (a number the code types, ``224`` or
  ``steps=1500``, is a setting, not a result). Math, inline code, roles and links are not prose.
* :func:`typed_references`: "Chapter 6", "chapter 5b" or "Exercise 7.3" typed by hand; use
  ``{doc}``, ``{numref}`` and ``{ref}``, which follow the book's numbering.
* :func:`prose_words`: the words of the markdown cells; a page holds at most :data:`MAX_WORDS`.
* :func:`wide_output_lines`: text output lines longer than :data:`MAX_LINE` characters, the width of
  the column in the book's monospace font.
* :func:`unglued_figures`: a figure drawn straight into an output has no number and no caption;
  glue it and show it with ``{glue:figure}``.

On the built HTML (:func:`check_page`): every figure inside the article has a numbered caption;
none is shown at less than :data:`MIN_SCALE` of the size it was drawn at (its inches at 96 CSS px
each, against the column of :data:`COLUMN_PX`); no ``NBVAL`` or solution marker is visible; no
output line is wider than the column; the page's prose holds at most :data:`MAX_WORDS` words.
"""

from __future__ import annotations

import argparse
import base64
import re
import struct
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

MAX_WORDS = 3000
MAX_LINE = 88
COLUMN_PX = 780  # the width of the book theme's text column at a 1,400 px window
MIN_SCALE = 0.75
MARKERS = ("NBVAL_", "BEGIN SOLUTION", "END SOLUTION")

_NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+|\d{3,})(?![\w])")
_NOT_PROSE = [
    re.compile(r"```.*?```", re.S),  # fenced blocks: directives' options and code
    re.compile(r"\$\$.*?\$\$", re.S),  # display math
    re.compile(r"\$[^$\n]+\$"),  # inline math
    re.compile(r"`[^`\n]*`"),  # inline code and role arguments
    re.compile(r"\{[\w:-]+\}"),  # role names
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"https?://\S+"),
    re.compile(r"^\s*:\w[\w-]*:.*$", re.M),  # directive options
]
_REFERENCE = re.compile(r"\b(?:[Cc]hapters?\s+\d+[a-z]?|[Ee]xercises?\s+\d+(?:\.\d+)?)\b")


def _read(path):
    import nbformat

    return nbformat.read(path, as_version=4) if isinstance(path, (str, Path)) else path


def prose(markdown: str) -> str:
    """``markdown`` without math, code, roles, directive options and links: the words a reader reads."""
    for pattern in _NOT_PROSE:
        markdown = pattern.sub(" ", markdown)
    return markdown


def _normal(number: str) -> str:
    return number.replace(",", "")


def numbers_in(text: str) -> set[str]:
    """The numbers of :func:`typed_numbers`' rule in ``text``, thousands separators removed."""
    found = set()
    for match in _NUMBER.findall(text):
        number = _normal(match)
        digits = number.replace(".", "").lstrip("0")
        if "." in number and len(digits) < 2:
            continue
        found.add(number)
    return found


def output_text(cell) -> str:
    """The text a code cell shows: streams, ``text/plain`` and ``text/html``/``text/markdown``."""
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        for mime in ("text/plain", "text/html", "text/markdown"):
            parts.append(out.get("data", {}).get(mime, ""))
    return "\n".join(parts)


def typed_numbers(nb) -> list[str]:
    """Numbers typed in the prose that are results shown in the outputs (module docstring's rule)."""
    nb = _read(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    shown = set().union(*(numbers_in(output_text(c)) for c in code)) if code else set()
    settings = set().union(*(numbers_in(c.source) for c in code)) if code else set()
    typed = set().union(*(numbers_in(prose(c.source)) for c in nb.cells if c.cell_type == "markdown"))
    return sorted((typed & shown) - settings, key=lambda n: (float(n), n))


def typed_references(text: str) -> list[str]:
    """Chapter and exercise numbers typed by hand in ``text`` (markdown)."""
    return _REFERENCE.findall(prose(text))


def prose_words(nb) -> int:
    """Words in the markdown cells of ``nb``, math, code and directive options left out."""
    return sum(len(prose(c.source).split()) for c in _read(nb).cells if c.cell_type == "markdown")


def wide_output_lines(nb, limit: int = MAX_LINE) -> list[str]:
    """Lines of text output (streams and ``text/plain``) longer than ``limit`` characters."""
    wide = []
    for cell in _read(nb).cells:
        for out in cell.get("outputs", []):
            text = out.get("text", "") + out.get("data", {}).get("text/plain", "")
            wide += [line for line in text.splitlines() if len(line) > limit]
    return wide


def unglued_figures(nb) -> list[str]:
    """The first line of each code cell that draws a figure straight into its output."""
    return [
        cell.source.splitlines()[0] if cell.source else "(empty cell)"
        for cell in _read(nb).cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {}) and "scrapbook" not in out.get("metadata", {})
    ]


def check_notebook(path: Path) -> list[str]:
    """Every notebook problem as one line each (empty: none)."""
    nb = _read(path)
    problems = [f"typed number {n}: glue it" for n in typed_numbers(nb)]
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            problems += [
                f"typed reference {r!r}: use {{doc}}/{{numref}}/{{ref}}" for r in typed_references(cell.source)
            ]
    words = prose_words(nb)
    if words > MAX_WORDS:
        problems.append(f"{words} words of prose (at most {MAX_WORDS}): split the page")
    problems += [f"output line of {len(line)} characters: {line[:60]!r}..." for line in wide_output_lines(nb)]
    problems += [f"figure without number or caption, drawn by {first!r}: glue it" for first in unglued_figures(nb)]
    return problems


# --- the built HTML ----------------------------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, float | None]:
    """Pixel width and dots per inch (``None`` without a pHYs chunk) of a PNG file's bytes."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    width, dpi, offset = None, None, 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        body = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            width = struct.unpack(">I", body[:4])[0]
        elif kind == b"pHYs" and body[8] == 1:  # pixels per metre
            dpi = struct.unpack(">I", body[:4])[0] * 0.0254
        elif kind == b"IDAT":
            break
        offset += 12 + length
    return width, dpi


def figure_scale(data: bytes, width_attr: str | None = None, column: int = COLUMN_PX) -> float:
    """The size a figure is shown at over the size it was drawn at (inches x 96 CSS px)."""
    pixels, dpi = png_size(data)
    drawn = pixels / dpi * 96 if dpi else pixels
    shown = min(float(width_attr.rstrip("px")) if width_attr and width_attr.endswith("px") else pixels, column)
    return shown / drawn


def _image_bytes(src: str, page: Path) -> bytes:
    if src.startswith("data:"):
        return base64.b64decode(src.split(",", 1)[1])
    return (page.parent / unquote(urlsplit(src).path)).read_bytes()


def check_page(page: Path) -> list[str]:
    """Every reader problem of one built HTML page, one line each (module docstring)."""
    from bs4 import BeautifulSoup  # comes with the book's theme (pydata-sphinx-theme)

    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    article = soup.find("article") or soup
    problems = []
    for number, img in enumerate(article.find_all("img"), 1):
        figure = img.find_parent("figure")
        if figure is None or figure.find(class_="caption-number") is None:
            problems.append(f"figure {number} ({img.get('src', '')[:40]}) has no numbered caption")
        if img.get("src", "").lower().split("?")[0].endswith(".png") or img.get("src", "").startswith("data:image/png"):
            scale = figure_scale(_image_bytes(img["src"], page), img.get("width"))
            if scale < MIN_SCALE:
                problems.append(f"figure {number} shown at {scale:.2f} of its drawn size (at least {MIN_SCALE})")
    text = article.get_text(" ")
    problems += [f"marker {m!r} is visible" for m in MARKERS if m in text]
    for output in article.select("div.cell_output pre, div.output pre"):
        problems += [
            f"output line of {len(line)} characters: {line[:60]!r}..."
            for line in output.get_text().splitlines()
            if len(line) > MAX_LINE
        ]
    for hidden in article.select("div.cell, pre, script, style, .math, .MathJax, div.highlight"):
        hidden.decompose()
    words = len(article.get_text(" ").split())
    if words > MAX_WORDS:
        problems.append(f"{words} words of prose (at most {MAX_WORDS}): split the page")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coatlib.teaching.reader_checks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("notebooks", nargs="*", type=Path, help="chapter notebooks to check")
    parser.add_argument("--html", type=Path, help="a built book (_build/html): check its chapter pages")
    args = parser.parse_args(argv)
    targets = [(p, check_notebook) for p in args.notebooks]
    if args.html:
        targets += [(p, check_page) for p in sorted((args.html / "notebooks").glob("*.html"))]
    if not targets:
        parser.error("name notebooks, or a built book with --html")
    failed = 0
    for path, check in targets:
        problems = check(path)
        failed += bool(problems)
        print(f"{path}: {'ok' if not problems else f'{len(problems)} problems'}")
        for problem in problems:
            print(f"  {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
