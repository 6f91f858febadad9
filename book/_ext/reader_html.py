"""The book's own Sphinx extension: what the HTML shows a reader (``_config.yml`` loads it).

* **Mathematics offline.** MathJax is served from the built book, not from a CDN: at the end of
  an HTML build the MathJax 3 files of the ``django-static-mathjax`` package (a copy of the MathJax
  release on the Python package index; it needs no Django) are copied to ``_static/mathjax`` and
  Sphinx's ``mathjax_path`` points there, so the equations read without a network.
* **No markers.** The lines ``# NBVAL_...`` (nbval's cell markers) and ``# BEGIN SOLUTION`` /
  ``# END SOLUTION`` (the student edition's markers, ``coatlib.teaching.coursework``) are for the
  tools; they are removed from the code shown in the HTML. The notebooks keep them.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from docutils import nodes

MATHJAX_PATH = "mathjax/tex-mml-chtml.js"  # relative to _static
# tex-mml-chtml.js loads these at run time: TeX extensions, fonts, the menu and accessibility.
MATHJAX_PARTS = ("tex-mml-chtml.js", "input/tex/extensions", "output/chtml/fonts/woff-v2", "ui", "a11y", "sre")
MARKER_LINE = re.compile(r"^[ \t]*# (?:NBVAL_[A-Z_]+|BEGIN SOLUTION|END SOLUTION)[ \t]*\n?", re.M)


def mathjax_source() -> Path:
    try:
        import mathjax
    except ImportError as error:
        raise RuntimeError(
            "the book serves MathJax itself: pip install django-static-mathjax (it is in requirements.txt)"
        ) from error
    return Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"


def use_local_mathjax(app, config) -> None:
    config.mathjax_path = MATHJAX_PATH


def copy_mathjax(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    source, target = mathjax_source(), Path(app.outdir) / "_static" / "mathjax"
    for part in MATHJAX_PARTS:
        if (source / part).is_dir():
            shutil.copytree(source / part, target / part, dirs_exist_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / part, target / part)


def strip_markers(app, doctree) -> None:
    for block in doctree.findall(nodes.literal_block):
        text = block.astext()
        if MARKER_LINE.search(text):
            block.children = [nodes.Text(MARKER_LINE.sub("", text))]
            block.rawsource = block.astext()


def setup(app):
    app.connect("config-inited", use_local_mathjax)
    app.connect("doctree-read", strip_markers)
    app.connect("build-finished", copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
