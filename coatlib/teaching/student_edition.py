"""Cells and directives of a chapter, and its student edition: the chapter without its solutions.

``directives(markdown)`` reads the MyST directives of a markdown cell, ``exercise_label`` names an
exercise, ``called_checks`` lists the checks a code cell calls (what the grader, ``coatlib.teaching.coursework``,
needs to know of a chapter). ``student_notebook(nb)`` drops the ``{solution}`` cells and everything from
``{solution-start}`` to ``{solution-end}`` that is not code, turns the lines from ``# BEGIN SOLUTION`` to
``# END SOLUTION`` of each code cell into a stub that raises ``NotImplementedError``, and clears the
outputs; ``write_student_edition`` writes such copies
(``python -m coatlib.teaching.coursework student-edition OUT_DIR``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from coatlib.teaching.book import BEGIN_SOLUTION, END_SOLUTION, SOLUTION_TAG

METADATA_KEY = "coursework"
STUB = "# YOUR CODE HERE\nraise NotImplementedError"
SOLUTION_DIRECTIVES = ("solution", "solution-start", "solution-end")
EXERCISE_DIRECTIVES = ("exercise", "exercise-start")

# ---------------------------------------------------------------------------
# Reading the MyST directives of a markdown cell

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,}|:{3,})[ \t]*(?:\{([\w-]+)\})?[ \t]*(.*?)[ \t]*$")
_OPTION = re.compile(r"^[ \t]*:([\w-]+):[ \t]*(.*?)[ \t]*$")
_CALL = re.compile(r"\b(check_\w+)\s*\(")


@dataclass(frozen=True)
class Directive:
    """One top-level MyST directive: ``{name} argument``, its ``:option: value`` lines and the lines it spans."""

    name: str
    argument: str
    options: dict[str, str]
    lines: range


def directives(markdown: str) -> list[Directive]:
    """The top-level directives of ``markdown``, in order (plain code fences are skipped, nested ones ignored)."""
    lines = markdown.splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, name, argument = opening.groups()
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        j, options = i + 1, {}
        while j < len(lines) and (option := _OPTION.match(lines[j])):
            options[option[1]] = option[2]
            j += 1
        while j < len(lines) and not closing.match(lines[j]):
            j += 1
        if name:
            found.append(Directive(name, argument, options, range(i, min(j, len(lines) - 1) + 1)))
        i = j + 1
    return found


def exercise_label(directive: Directive) -> str | None:
    """The exercise a directive belongs to: an exercise's ``:label:``, a solution's argument."""
    if directive.name in EXERCISE_DIRECTIVES:
        return directive.options.get("label") or f"unlabelled exercise '{directive.argument}'"
    if directive.name in ("solution", "solution-start"):
        return directive.argument or None
    return None


def called_checks(source: str) -> list[str]:
    """Names of the :mod:`coatlib.teaching.exercises` checks that ``source`` calls, in order."""
    from coatlib.teaching.exercises import CHECKS

    return list(dict.fromkeys(name for name in _CALL.findall(source) if name in CHECKS))


def grading_plan(nb) -> tuple[dict[str, list[int]], list[str]]:
    """``({label: [indices of its check cells]}, [labels of exercises without a check cell])``.

    A check cell is a code cell, not tagged ``solution``, that calls a check; it belongs to the
    exercise named last above it (by an exercise's label or a solution's argument). The student
    edition records it in its metadata; the grader does not rely on it."""
    label, plan, labels = None, {}, {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            for directive in directives(cell.source):
                if found := exercise_label(directive):
                    label = found
                    labels[label] = None  # an ordered set
        elif (
            cell.cell_type == "code"
            and SOLUTION_TAG not in cell.metadata.get("tags", [])
            and called_checks(cell.source)
        ):
            plan.setdefault(label or "(before any exercise)", []).append(index)
    return plan, [name for name in labels if name not in plan]


def checks_of(nb, indices: list[int]) -> list[str]:
    """The checks called by the cells at ``indices``, each once."""
    return list(dict.fromkeys(name for i in indices for name in called_checks(nb.cells[i].source)))


# ---------------------------------------------------------------------------
# Student edition


def stub_solution(source: str) -> str:
    """Replace each block from ``# BEGIN SOLUTION`` to ``# END SOLUTION`` by the stub, at the marker's indent."""
    lines, out, begin = source.splitlines(), [], None
    for number, line in enumerate(lines, 1):
        marker = line.strip()
        if marker == BEGIN_SOLUTION:
            if begin is not None:
                raise ValueError(f"line {number}: {BEGIN_SOLUTION!r} again before {END_SOLUTION!r} (line {begin})")
            begin = number
            indent = line[: len(line) - len(line.lstrip())]
            out += [indent + stub for stub in STUB.splitlines()]
        elif marker == END_SOLUTION:
            if begin is None:
                raise ValueError(f"line {number}: {END_SOLUTION!r} without a {BEGIN_SOLUTION!r} above it")
            begin = None
        elif begin is None:
            out.append(line)
    if begin is not None:
        raise ValueError(f"line {begin}: {BEGIN_SOLUTION!r} is never closed: add {END_SOLUTION!r} after the answer")
    return "\n".join(out)


def _strip_markdown(source: str, inside: bool) -> tuple[str | None, bool]:
    """Drop the solution directives of a markdown cell, and every line inside a ``{solution-start}``
    block. Returns the cell's new source (``None``: drop the cell) and whether a block is still open."""
    lines = source.splitlines(keepends=True)
    kept, position = [], 0
    for directive in directives(source):
        if not inside:
            kept += lines[position : directive.lines.start]
            if directive.name not in SOLUTION_DIRECTIVES:
                kept += lines[directive.lines.start : directive.lines.stop]
        if directive.name == "solution-start":
            if inside:
                raise ValueError("a {solution-start} opens before the previous one is closed with {solution-end}")
            inside = True
        elif directive.name == "solution-end":
            if not inside:
                raise ValueError("a {solution-end} without a {solution-start} before it")
            inside = False
        position = directive.lines.stop
    if not inside:
        kept += lines[position:]
    if len(kept) == len(lines):
        return source, inside
    return "".join(kept).strip() or None, inside


def _student_cell(cell, inside: bool):
    """The student's version of one cell (``None``: drop it), and whether a solution block is still open."""
    if cell.cell_type == "markdown":
        cell.source, inside = _strip_markdown(cell.source, inside)
        return (cell if cell.source is not None else None), inside
    if cell.cell_type == "code":
        is_solution = SOLUTION_TAG in cell.metadata.get("tags", [])
        if inside and not is_solution:
            raise ValueError(
                f"it sits between {{solution-start}} and {{solution-end}} but is not tagged {SOLUTION_TAG!r}: "
                f"tag it and mark its answer with {BEGIN_SOLUTION!r} / {END_SOLUTION!r}"
            )
        if is_solution and BEGIN_SOLUTION not in cell.source:
            raise ValueError(f"it is tagged {SOLUTION_TAG!r} but has no {BEGIN_SOLUTION!r} marker: mark its answer")
        cell.source = stub_solution(cell.source)
        cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    return cell, inside


def student_notebook(nb):
    """A copy of notebook ``nb`` without its solutions and outputs (see the module docstring)."""
    import copy

    nb = copy.deepcopy(nb)
    cells, inside = [], False
    for index, cell in enumerate(nb.cells):
        try:
            cell, inside = _student_cell(cell, inside)
        except ValueError as e:
            raise ValueError(f"cell {index} ({cell.get('id', 'no id')}): {e}") from None
        if cell is not None:
            cells.append(cell)
    if inside:
        raise ValueError("a {solution-start} is never closed: add a {solution-end} cell after the solution")
    nb.cells = cells
    plan, _ = grading_plan(nb)
    nb.metadata[METADATA_KEY] = {
        "edition": "student",
        "checks": {label: checks_of(nb, cells) for label, cells in plan.items()},
    }
    return nb


def write_student_edition(notebooks: list[Path], out_dir: Path) -> list[Path]:
    """Write the student edition of each notebook into ``out_dir`` (same file names). Returns the new paths."""
    import nbformat

    targets = [out_dir / path.name for path in notebooks]
    for path, target in zip(notebooks, targets):
        if target.resolve() == path.resolve():
            raise ValueError(f"{target} would overwrite the original notebook: choose another OUT_DIR")
    if len(set(targets)) < len(targets):
        raise ValueError("two notebooks share a file name; they would overwrite each other in OUT_DIR")
    editions = []
    for path in notebooks:
        try:
            editions.append(student_notebook(nbformat.read(path, as_version=4)))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    for nb, target in zip(editions, targets):
        nbformat.write(nb, target)
    return targets
