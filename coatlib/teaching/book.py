"""Authoring tools for the book: re-execute the chapter notebooks in place.

Usage, from the repository root (where ``_config.yml`` is)::

    python -m coatlib.teaching.book execute                       # every notebook listed in _toc.yml
    python -m coatlib.teaching.book execute notebooks/01_depthwise_convolution.ipynb

``execute`` first writes the install cell (below) into the notebook, then runs
it top to bottom with ``nbclient`` and saves it with its new outputs: the
outputs committed in the repository are the ones ``pytest --nbval`` compares
against, and the ones the HTML book shows (the book build never executes).

Conventions every chapter notebook follows (``tests/test_book.py`` checks
them, and the coursework tools build the student edition on them):

* **Title and goals.** The first cell is the title (``# ...``), then the learning
  goals in an ``{admonition} Learning goals`` directly under it.
* **Install cell.** The first code cell (tags ``install`` and ``remove-cell``)
  imports ``coatlib`` and, only when that fails (e.g. in Colab), pip-installs
  it from the book's repository. The URL and branch are written in one place,
  ``repository.url`` and ``repository.branch`` in ``_config.yml``; ``execute``
  stamps them in. The HTML book leaves the cell out.
* **Import cell.** The second code cell holds the chapter's imports, tagged
  ``hide-cell`` (folded away in the HTML book, shown in Jupyter and Colab), and
  calls :func:`coatlib.viz.use_book_style`.
* **Figures and numbers.** Every figure is glued (``glue("fig-...", fig,
  display=False)``) and shown by a ``{glue:figure}`` directive with a ``:name:``
  and a caption that states the figure's point. Every number the prose quotes
  from an output is glued too and written ``{glue:text}`name:.3f```;
  :mod:`coatlib.teaching.reader_checks` finds the ones still typed by hand.
* **Exercises.** A markdown cell holds a sphinx-exercise directive with a
  label, ``{exercise}`` ... ``:label: ex-...``. Its solution follows, collapsed
  (``:class: dropdown``):

  - a written answer: one markdown cell with a ``{solution} ex-...`` directive;
  - a code answer: a markdown cell ``{solution-start} ex-...``, the code cells
    of the solution, each tagged ``solution``, and a markdown cell
    ``{solution-end}``. Inside a solution cell the lines strictly between
    ``# BEGIN SOLUTION`` and ``# END SOLUTION`` are the answer; the rest (the
    ``def`` line and its docstring) is what the student gets. After
    ``{solution-end}`` a code cell calls the exercise's check from
    :mod:`coatlib.teaching.exercises`, e.g. ``check_depthwise_conv(depthwise_conv)``.

  A student edition drops the ``{solution}`` cells and the
  ``{solution-start}``/``{solution-end}`` cells, and replaces each marked block
  by a stub that raises ``NotImplementedError``.
* **Outputs.** Deterministic (fixed seeds, fixed data, rounded numbers). A cell
  whose output legitimately varies (timings, training logs) starts with the
  line ``# NBVAL_IGNORE_OUTPUT``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

INSTALL_TAG = "install"
# The install and import cells are for Colab and Jupyter; the HTML book removes the first and folds
# the second away (Jupyter Book's cell tags).
INSTALL_TAGS = [INSTALL_TAG, "remove-cell"]
IMPORT_TAG = "hide-cell"
SOLUTION_TAG = "solution"
BEGIN_SOLUTION = "# BEGIN SOLUTION"
END_SOLUTION = "# END SOLUTION"
IGNORE_OUTPUT = "# NBVAL_IGNORE_OUTPUT"
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def find_root(start: str | Path | None = None) -> Path:
    """The repository root: the nearest folder at or above ``start`` that holds ``_config.yml``."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_config.yml").is_file() and (folder / "_toc.yml").is_file():
            return folder
    raise FileNotFoundError(f"no _config.yml and _toc.yml at or above {here}: run this from the book's repository root")


def _load_yaml(path: Path) -> dict:
    import yaml  # comes with jupyter-book (the "book" extra)

    return yaml.safe_load(path.read_text(encoding="utf-8"))


def repository(root: Path) -> tuple[str, str]:
    """``(url, branch)`` of the book's repository, from ``_config.yml``."""
    repo = _load_yaml(root / "_config.yml").get("repository") or {}
    if not repo.get("url"):
        raise ValueError(f"{root / '_config.yml'} has no repository.url: add the book's git repository URL there")
    return repo["url"].rstrip("/"), repo.get("branch", "main")


def install_source(url: str, branch: str) -> str:
    """The install cell: pip-install coatlib from ``url@branch`` only when it cannot be imported.

    The URL sits in a variable that IPython expands in the ``%pip`` line, so that no line of the
    cell is longer than the book's 88 characters."""
    return (
        "try:\n"
        "    import coatlib\n"
        "except ImportError:  # e.g. in Colab: install the book's library from its repository\n"
        f'    repo = "{url}@{branch}"\n'
        '    %pip install --quiet "coatlib[chapters] @ git+{repo}"  # IPython fills in {repo}\n'
        "    import coatlib"
    )


def toc_files(root: Path) -> list[str]:
    """Every ``file:`` entry of ``_toc.yml`` (root first), without extension."""
    toc = _load_yaml(root / "_toc.yml")
    files = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in toc.items() if k != "root"})
    return files


def toc_notebooks(root: Path) -> list[Path]:
    """The notebooks listed in ``_toc.yml``, in reading order."""
    return [root / f"{f}.ipynb" for f in toc_files(root) if (root / f"{f}.ipynb").is_file()]


def stamp_install_cell(nb, source: str) -> None:
    """Make the notebook's first code cell the install cell with ``source`` (inserting it if needed)."""
    import nbformat

    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            if INSTALL_TAG in cell.metadata.get("tags", []):
                cell.source = source
                cell.metadata["tags"] = INSTALL_TAGS + [t for t in cell.metadata["tags"] if t not in INSTALL_TAGS]
                return
            break
    else:
        index = len(nb.cells)
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": list(INSTALL_TAGS)})
    nb.cells.insert(index, cell)


def execute(path: Path, install: str, timeout: int = 600) -> float:
    """Stamp the install cell, run the notebook in its folder with nbclient, save it. Returns seconds."""
    import time

    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    stamp_install_cell(nb, install)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    start = time.perf_counter()
    client = nbclient.NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=KERNELSPEC["name"],
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    elapsed = time.perf_counter() - start
    nbformat.write(nb, path)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coatlib.teaching.book", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("execute", help="re-execute notebooks in place (default: all notebooks in _toc.yml)")
    run.add_argument("notebooks", nargs="*", type=Path, help="notebook files (default: every one in _toc.yml)")
    run.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell (default 600)")
    args = parser.parse_args(argv)

    try:
        root = find_root()
    except FileNotFoundError as e:
        parser.error(str(e))
    install = install_source(*repository(root))
    notebooks = args.notebooks or toc_notebooks(root)
    missing = [str(p) for p in notebooks if not p.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    for path in notebooks:
        print(f"executing {path} ...", flush=True)
        print(f"  done in {execute(path.resolve(), install, args.timeout):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
