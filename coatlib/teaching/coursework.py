"""Coursework tools: hand out the chapters without their solutions, and grade what comes back.

Usage, from the repository root::

    python -m coatlib.teaching.coursework student-edition OUT_DIR [NOTEBOOK...]
    python -m coatlib.teaching.coursework grade NOTEBOOK... [--timeout S] [--json FILE]

``student-edition`` writes a copy of the notebooks (default: every notebook in
``_toc.yml``) into ``OUT_DIR`` with the solutions removed and the outputs
cleared. It relies on the cell conventions described in :mod:`coatlib.teaching.book`:
the ``{solution}`` cells and everything from ``{solution-start}`` to
``{solution-end}`` that is not code are dropped; in each code cell the lines
from ``# BEGIN SOLUTION`` to ``# END SOLUTION`` become a stub that raises
``NotImplementedError``. The exercise statements, the install cell and the
check cells stay. Which checks grade which exercise is written into the
notebook's metadata, so that the grader notices a check cell a student deleted.

``grade`` runs each notebook with ``nbclient`` (a failing cell does not stop
the others; a notebook that runs past ``--timeout`` seconds, or whose kernel
dies, is reported and the next notebook is graded), then prints, per exercise,
``passed`` or ``FAILED`` with the check's message, and a total. The exit
status is 1 when any exercise failed or any notebook could not be graded.

How a result is read: a cell inserted after the install cell makes every check
of :mod:`coatlib.teaching.exercises` also publish its :class:`~coatlib.teaching.exercises.CheckResult`
as a display output of type ``application/vnd.coatlib.check+json`` (nothing is
shown for it in a notebook). A check cell belongs to the exercise of the
nearest ``{exercise}`` label (or ``{solution-start}``/``{solution}`` argument)
above it; an exercise passes when every check its cells call reported
``correct``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from coatlib.teaching.book import (
    BEGIN_SOLUTION,
    END_SOLUTION,
    INSTALL_TAG,
    KERNELSPEC,
    SOLUTION_TAG,
    find_root,
    toc_notebooks,
)

RESULT_MIME = "application/vnd.coatlib.check+json"
METADATA_KEY = "coursework"
STUB = "# YOUR CODE HERE\nraise NotImplementedError"
SOLUTION_DIRECTIVES = ("solution", "solution-start", "solution-end")
EXERCISE_DIRECTIVES = ("exercise", "exercise-start")
RECORDER = "import coatlib.teaching.coursework as _coursework\n_coursework.record_checks()\ndel _coursework"

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
        "checks": {label: _checks_of(nb, cells) for label, cells in plan.items()},
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


# ---------------------------------------------------------------------------
# Grading


def record_checks() -> None:
    """Make every check of :mod:`coatlib.teaching.exercises` also publish its result as a ``RESULT_MIME``
    display output of the cell that calls it (the grader inserts a cell that calls this)."""
    from coatlib.teaching import exercises

    for name, check in list(exercises.CHECKS.items()):
        exercises.CHECKS[name] = _recording(check)
        setattr(exercises, name, exercises.CHECKS[name])


def _recording(check):
    from IPython.display import display

    @functools.wraps(check)
    def recorded(*args, **kwargs):
        result = check(*args, **kwargs)
        display({RESULT_MIME: {"name": result.name, "passed": result.passed, "message": result.message}}, raw=True)
        return result

    return recorded


@dataclass
class ExerciseResult:
    label: str
    checks: list[str]
    passed: bool
    message: str


@dataclass
class NotebookResult:
    path: str
    exercises: list[ExerciseResult] = field(default_factory=list)
    problem: str | None = None  # why the notebook did not run to the end
    ungraded: list[str] = field(default_factory=list)  # exercises without a check (written answers)
    seconds: float = 0.0

    @property
    def passed(self) -> int:
        return sum(e.passed for e in self.exercises)


def grading_plan(nb) -> tuple[dict[str, list[int]], list[str]]:
    """``({label: [indices of its check cells]}, [labels of exercises without a check cell])``.

    A check cell is a code cell, not tagged ``solution``, that calls a check; it belongs to the
    exercise named last above it (by an exercise's label or a solution's argument)."""
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


def _checks_of(nb, indices: list[int]) -> list[str]:
    """The checks called by the cells at ``indices``, each once."""
    return list(dict.fromkeys(name for i in indices for name in called_checks(nb.cells[i].source)))


def _execute(nb, folder: Path, timeout: float) -> str | None:
    """Run ``nb`` in place in ``folder``; the whole notebook gets ``timeout`` seconds. Returns the problem, if any."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    deadline = time.monotonic() + timeout
    client = NotebookClient(
        nb,
        allow_errors=True,
        kernel_name=KERNELSPEC["name"],
        record_timing=False,
        resources={"metadata": {"path": str(folder)}},
        timeout_func=lambda cell: max(deadline - time.monotonic(), 0.01),  # 0 would mean "no limit"
    )
    try:
        asyncio.run(client.async_execute())
    except CellTimeoutError:
        return f"timed out after {timeout:g} s"
    except DeadKernelError as e:
        return f"the kernel died ({str(e).splitlines()[0] if str(e) else 'no message'})"
    except Exception as e:  # e.g. no kernel could be started: the next notebook still gets graded
        return f"could not run: {type(e).__name__}: {e}"
    return None


def _exercise_result(nb, label: str, cells: list[int], names: list[str], problem: str | None) -> ExerciseResult:
    """Grade one exercise from the outputs of its check cells (at ``cells``) in the executed ``nb``."""
    outputs = [output for i in cells for output in nb.cells[i].outputs]
    records = [o.data[RESULT_MIME] for o in outputs if o.output_type == "display_data" and RESULT_MIME in o.data]
    failed = [r for r in records if not r["passed"]]
    errors = [o for o in outputs if o.output_type == "error"]
    missing = [name for name in names if name not in {r["name"] for r in records}]
    if failed:
        message = f"{failed[0]['name']}: {failed[0]['message']}"
    elif errors:
        message = f"the check cell raised {errors[0].ename}: {errors[0].evalue}"
    elif not cells:
        message = f"the check cell is missing: restore the cell that calls {', '.join(names)}"
    elif all(nb.cells[i].execution_count is None for i in cells):
        message = f"not run: the notebook {problem or 'stopped before this cell'}"
    elif missing:
        message = f"{', '.join(missing)} did not run: restore the check cell's call"
    else:
        message = "correct"
    return ExerciseResult(label, names, message == "correct", message)


def grade_notebook(path: Path, timeout: float = 300) -> NotebookResult:
    """Execute one notebook (its saved outputs are discarded first) and grade each exercise with a check cell."""
    import nbformat

    result = NotebookResult(str(path))
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:
        result.problem = f"could not read the notebook: {type(e).__name__}: {e}"
        return result
    plan, ungraded = grading_plan(nb)
    expected = nb.metadata.get(METADATA_KEY, {}).get("checks", {})
    for label in expected:  # a check cell the student deleted still counts
        plan.setdefault(label, [])
    result.ungraded = [label for label in ungraded if label not in plan]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    after_install = next((i + 1 for i, c in enumerate(nb.cells) if INSTALL_TAG in c.metadata.get("tags", [])), 0)
    nb.cells.insert(after_install, nbformat.v4.new_code_cell(RECORDER))
    plan = {label: [i + (i >= after_install) for i in cells] for label, cells in plan.items()}

    start = time.perf_counter()
    result.problem = _execute(nb, path.resolve().parent, timeout)
    result.seconds = time.perf_counter() - start
    for label, cells in plan.items():
        names = list(dict.fromkeys([*expected.get(label, []), *_checks_of(nb, cells)]))
        result.exercises.append(_exercise_result(nb, label, cells, names, result.problem))
    return result


def format_report(results: list[NotebookResult]) -> str:
    """The text report: one block per notebook, one line per exercise, then the total."""
    lines = []
    for r in results:
        status = f"{r.passed} of {len(r.exercises)} exercises passed"
        lines.append(
            f"{r.path}: {status} ({r.seconds:.1f} s)" + (f"; NOT GRADED TO THE END: {r.problem}" if r.problem else "")
        )
        width = max((len(e.label) for e in r.exercises), default=0)
        for e in r.exercises:
            verdict = "passed" if e.passed else "FAILED"
            detail = ", ".join(e.checks) if e.passed else e.message
            lines.append(f"  {verdict}  {e.label:<{width}}  {detail}")
        if r.ungraded:
            lines.append(f"  (not graded automatically, no check: {', '.join(r.ungraded)})")
    total = sum(len(r.exercises) for r in results)
    broken = sum(r.problem is not None for r in results)
    lines.append(
        f"total: {sum(r.passed for r in results)} of {total} exercises passed in {len(results)} notebook(s)"
        + (f"; {broken} notebook(s) did not run to the end" if broken else "")
    )
    return "\n".join(lines)


def grade(notebooks: list[Path], timeout: float = 300) -> tuple[list[NotebookResult], bool]:
    """Grade every notebook; ``ok`` is true when every exercise passed and every notebook ran to the end."""
    results = []
    for path in notebooks:
        print(f"grading {path} ...", file=sys.stderr, flush=True)
        results.append(grade_notebook(path, timeout))
    ok = all(r.problem is None and r.passed == len(r.exercises) for r in results)
    return results, ok


# ---------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coatlib.teaching.coursework", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    edition = sub.add_parser("student-edition", help="copy the notebooks without solutions and outputs")
    edition.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder for the student notebooks")
    edition.add_argument("notebooks", nargs="*", type=Path, help="notebook files (default: every one in _toc.yml)")
    grading = sub.add_parser("grade", help="execute notebooks and report each exercise's check")
    grading.add_argument("notebooks", nargs="+", type=Path, help="the student's notebook files")
    grading.add_argument("--timeout", type=float, default=300, help="seconds allowed per notebook (default 300)")
    grading.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    if args.command == "student-edition":
        notebooks = args.notebooks or toc_notebooks(find_root())
        missing = [str(p) for p in notebooks if not p.is_file()]
        if missing:
            parser.error(f"no such notebook: {', '.join(missing)}")
        try:
            written = write_student_edition(notebooks, args.out_dir)
        except ValueError as e:
            parser.error(str(e))
        print("\n".join(f"wrote {path}" for path in written))
        return 0

    if args.timeout <= 0:
        parser.error(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    results, ok = grade(args.notebooks, args.timeout)
    print(format_report(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
