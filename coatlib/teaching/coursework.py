"""Coursework tools: hand out the chapters without their solutions, and grade what comes back.

Usage::

    python -m coatlib.teaching.coursework student-edition OUT_DIR [NOTEBOOK...] [--force]
    python -m coatlib.teaching.coursework grade NOTEBOOK... [--timeout S] [--json FILE] [--no-run]
    python -m coatlib.teaching.coursework grade-class SUBMISSIONS --csv FILE [--timeout S] [--no-run]

``student-edition`` writes a copy of the notebooks (default: every notebook in
``_toc.yml``, from the repository root) into ``OUT_DIR`` with the solutions removed and
the outputs cleared; it refuses to overwrite a notebook already there unless ``--force``.
It relies on the cell conventions described in :mod:`coatlib.teaching.book`: the
``{solution}`` cells and everything from ``{solution-start}`` to ``{solution-end}`` that is
not code are dropped; in each code cell the lines from ``# BEGIN SOLUTION`` to
``# END SOLUTION`` become a stub that raises ``NotImplementedError``.

``grade`` does not trust the notebook. It runs it top to bottom in a fresh kernel (a
failing cell does not stop the others; past its chapter's timeout, or when the kernel
dies, it is reported), to tell whether it runs to the end. The grades come from a fresh
Python process that defines the notebook's imports, functions and classes (nothing else
of it runs there) and calls, on each function the chapter's exercises ask for, the check
that :data:`coatlib.teaching.exercises.EXERCISES` names, from the installed package. So
check cells edited or deleted, the notebook's metadata, its outputs (forged check records
included) and monkeypatching in its cells change nothing; a function that changes
``coatlib`` or ``torch`` when it is defined or called fails. ``grade`` prints, per
exercise, ``passed`` or ``FAILED`` with the check's message, and a total; the exit status
is 1 when any exercise failed or any notebook did not run to the end.

``grade-class`` grades a folder with one sub-folder of notebooks per student into a CSV
(one row per student, one column per exercise) and a feedback file per student.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NoReturn

from coatlib.teaching.book import KERNELSPEC, find_root, toc_notebooks
from coatlib.teaching.student_edition import grading_plan, write_student_edition

# ---------------------------------------------------------------------------
# Grading

# Seconds each chapter may run when graded: about three times the run time of its hand-out measured
# on a busy two-core machine with one thread (book/instructors.md lists the measurements), at least
# two minutes; chapter 7, which trains, gets more, as a busier machine ran it in over 300 s.
TIMEOUTS = {
    "01_depthwise_convolution": 120,  # measured 14 s
    "02_self_attention": 120,  # 18 s
    "03_relative_attention": 120,  # 21 s
    "03_2_bias_experiment": 120,  # 10 s (reads the shipped results)
    "04_vertical_layouts": 120,  # 29 s
    "04_2_layout_study": 120,  # split off chapter 4: reads the shipped study record
    "05_coatnet": 120,  # the architecture half of the former chapter 5 (52 s in all)
    "05_2_family": 180,  # split off chapter 5: trains coatnet_pico for 8 epochs
    "05b_trained_coatnet": 120,  # 16 s (offline: the cells that need the weights skip)
    "05c_inside_coatnet": 120,  # 18 s, before it was split in two
    "05c_2_heads_and_fields": 120,  # 12-27 s
    "06_family_tree": 150,  # 42 s
    "07_scaling_up": 300,  # the single-process half of the 112 s chapter
    "07_2_many_processes": 600,  # the half that trains in two processes
}
CHECK_SECONDS = 300  # for the fresh process that runs the checks on a submission's functions
PRIVATE = ("_solutions", "_grade_worker")  # a notebook that mentions these is not doing the exercises


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
    errors: list[str] = field(default_factory=list)  # cells that raised when the notebook ran

    @property
    def passed(self) -> int:
        return sum(e.passed for e in self.exercises)


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


def submitted_definitions(nb) -> list[str]:
    """The submission's imports, top-level ``def``/``class`` statements and constants (``NAME = literal``),
    in the order of its code cells: what the fresh grading process defines before it runs the checks.
    Everything else (loops, prints, other assignments, attribute changes such as monkeypatching a
    check) is left out. Cells that are not
    valid Python (after IPython's ``%``/``!`` lines are dropped) are skipped; the fresh process runs each
    statement on its own, so one that fails (an import not installed there) does not stop the others."""
    import ast

    kept = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        lines = [line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!"))]
        try:
            tree = ast.parse("\n".join(lines))
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                kept.append(ast.unparse(node))
            elif _is_constant(node):
                kept.append(ast.unparse(node))
    return kept


def _is_constant(node) -> bool:
    """``NAME = literal`` (a number, a string, a tuple of them ...): a constant a function may use."""
    import ast

    if not isinstance(node, ast.Assign) or not all(isinstance(t, ast.Name) for t in node.targets):
        return False
    try:
        ast.literal_eval(node.value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _run_checks(source: list[str], exercises, timeout: float) -> dict[str, tuple[bool, str]]:
    """Run the installed checks on the functions ``source`` defines, in a fresh Python process."""
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="coatlib-grade-") as folder:
        out = os.path.join(folder, "results.json")
        job = {"source": source, "exercises": [[e.label, e.function, e.check] for e in exercises], "out": out}
        try:
            done = subprocess.run(
                [sys.executable, "-m", "coatlib.teaching._grade_worker"],
                input=json.dumps(job),
                capture_output=True,
                text=True,
                cwd=folder,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return {e.label: (False, f"the checks did not finish in {timeout:g} s") for e in exercises}
        try:
            with open(out, encoding="utf-8") as f:
                results = json.load(f)["results"]
        except (OSError, ValueError, KeyError):
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            return {e.label: (False, f"the checks could not run: {last}") for e in exercises}
    return {label: (bool(passed), str(message)) for label, passed, message in results}


def grade_notebook(path: Path, timeout: float | None = None, execute: bool = True) -> NotebookResult:
    """Grade one chapter notebook a student handed in.

    The notebook runs top to bottom in a fresh kernel (when ``execute``; its saved outputs are
    ignored), which tells whether it runs to the end. The grades come from elsewhere: a fresh
    process defines the notebook's functions (:func:`submitted_definitions`) and runs on each the
    check that :data:`coatlib.teaching.exercises.EXERCISES` names for the chapter, from the installed
    package. Check cells, the notebook's metadata and its outputs play no part."""
    import nbformat

    from coatlib.teaching.exercises import EXERCISES

    result = NotebookResult(str(path))
    chapter = EXERCISES.get(path.stem)
    if chapter is None:
        result.problem = f"{path.name} is not a chapter of the book: keep the file name of the hand-out"
        return result
    failed = lambda message: [ExerciseResult(e.label, [e.check], False, message) for e in chapter]  # noqa: E731
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:
        result.problem = f"could not read the notebook: {type(e).__name__}: {e}"
        result.exercises = failed(result.problem)
        return result
    _, result.ungraded = grading_plan(nb)
    source = submitted_definitions(nb)
    start = time.perf_counter()
    if execute:
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        result.problem = _execute(nb, path.resolve().parent, timeout or TIMEOUTS.get(path.stem, 300))
        result.errors = [
            f"cell {i}: {o.ename}"
            for i, cell in enumerate(nb.cells)
            if cell.cell_type == "code"
            for o in cell.get("outputs", [])
            if o.output_type == "error"
        ]
    if any(name in cell.source for cell in nb.cells if cell.cell_type == "code" for name in PRIVATE):
        result.exercises = failed("the notebook uses coatlib's private reference answers (_solutions)")
    else:
        verdicts = _run_checks(source, chapter, CHECK_SECONDS)
        missing = (False, "not graded: the checks returned no result")
        result.exercises = [ExerciseResult(e.label, [e.check], *verdicts.get(e.label, missing)) for e in chapter]
    result.seconds = time.perf_counter() - start
    return result


def format_report(results: list[NotebookResult]) -> str:
    """The text report: one block per notebook, one line per exercise, then the total."""
    lines = []
    for r in results:
        status = f"{r.passed} of {len(r.exercises)} exercises passed"
        lines.append(
            f"{r.path}: {status} ({r.seconds:.1f} s)" + (f"; NOT RUN TO THE END: {r.problem}" if r.problem else "")
        )
        width = max((len(e.label) for e in r.exercises), default=0)
        for e in r.exercises:
            verdict = "passed" if e.passed else "FAILED"
            detail = ", ".join(e.checks) if e.passed else e.message
            lines.append(f"  {verdict}  {e.label:<{width}}  {detail}")
        if r.errors:
            more = f" and {len(r.errors) - 3} more" if len(r.errors) > 3 else ""
            lines.append(f"  (cells that raised when the notebook ran: {', '.join(r.errors[:3])}{more})")
        if r.ungraded:
            lines.append(f"  (not graded automatically, grade by hand: {', '.join(r.ungraded)})")
    total = sum(len(r.exercises) for r in results)
    broken = sum(r.problem is not None for r in results)
    lines.append(
        f"total: {sum(r.passed for r in results)} of {total} exercises passed in {len(results)} notebook(s)"
        + (f"; {broken} notebook(s) did not run to the end" if broken else "")
    )
    return "\n".join(lines)


def grade(
    notebooks: list[Path], timeout: float | None = None, execute: bool = True
) -> tuple[list[NotebookResult], bool]:
    """Grade every notebook; ``ok`` is true when every exercise passed and every notebook ran to the end."""
    results = []
    for path in notebooks:
        print(f"grading {path} ...", file=sys.stderr, flush=True)
        results.append(grade_notebook(path, timeout, execute))
    ok = all(r.problem is None and r.passed == len(r.exercises) for r in results)
    return results, ok


def grade_class(folder: Path, csv_path: Path, timeout: float | None = None, execute: bool = True) -> list[dict]:
    """Grade a class: ``folder`` holds one sub-folder per student with the notebooks they handed in.

    Writes ``csv_path`` (one row per student, one column per exercise: 1 passed, 0 not, and the
    total) and, in a ``feedback`` folder beside it, ``STUDENT.txt`` with each student's report.
    A chapter a student did not hand in counts 0. Returns the rows."""
    import csv

    from coatlib.teaching.exercises import EXERCISES

    students = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not students:
        raise ValueError(f"{folder} has no sub-folders: put each student's notebooks in a folder of their own")
    handed_in = {s.name: {p.stem: p for p in sorted(s.glob("*.ipynb"))} for s in students}
    chapters = [c for c in EXERCISES if any(c in notebooks for notebooks in handed_in.values())]
    if not chapters:
        raise ValueError(f"no chapter notebooks in the sub-folders of {folder}: keep the hand-out's file names")
    columns = [e.label for c in chapters for e in EXERCISES[c]]
    feedback = csv_path.parent / "feedback"
    feedback.mkdir(parents=True, exist_ok=True)
    rows = []
    for student in students:
        notebooks = handed_in[student.name]
        results, _ = grade([notebooks[c] for c in chapters if c in notebooks], timeout, execute)
        passed = {e.label: int(e.passed) for r in results for e in r.exercises}
        row = {"student": student.name, **{label: passed.get(label, 0) for label in columns}}
        row["total"] = sum(row[label] for label in columns)
        rows.append(row)
        missing = [f"{c}.ipynb" for c in chapters if c not in notebooks]
        extra = [p.name for stem, p in notebooks.items() if stem not in EXERCISES]
        notes = [f"not handed in (0 points): {', '.join(missing)}"] * bool(missing)
        notes += [f"not a chapter of the book, not graded: {', '.join(extra)}"] * bool(extra)
        (feedback / f"{student.name}.txt").write_text(format_report(results) + "".join("\n" + n for n in notes) + "\n")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["student", *columns, "total"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


# ---------------------------------------------------------------------------
# Command line


def _fail(message: str) -> NoReturn:
    """Stop with a one-line error (exit status 2, as for a bad argument)."""
    print(f"coursework: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coatlib.teaching.coursework", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    edition = sub.add_parser("student-edition", help="copy the notebooks without solutions and outputs")
    edition.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder for the student notebooks")
    edition.add_argument("notebooks", nargs="*", type=Path, help="notebook files (default: every one in _toc.yml)")
    edition.add_argument("--force", action="store_true", help="overwrite notebooks already in OUT_DIR")
    timeout_help = "seconds each notebook may run (default: its chapter's, from measured run times)"
    grading = sub.add_parser("grade", help="run a student's notebooks and grade each exercise")
    grading.add_argument("notebooks", nargs="+", type=Path, help="the student's notebook files")
    grading.add_argument("--json", type=Path, help="also write the results to this JSON file")
    klass = sub.add_parser("grade-class", help="grade a folder of submissions (one sub-folder per student) to a CSV")
    klass.add_argument("folder", type=Path, help="the submissions: one sub-folder of notebooks per student")
    klass.add_argument("--csv", type=Path, required=True, help="the grades (the feedback/ folder goes beside it)")
    for command in (grading, klass):
        command.add_argument("--timeout", type=float, help=timeout_help)
        command.add_argument("--no-run", action="store_true", help="only run the checks, not the whole notebook")
    args = parser.parse_args(argv)

    if args.command == "student-edition":
        try:
            notebooks = args.notebooks or toc_notebooks(find_root())
        except FileNotFoundError as e:
            _fail(f"{e}, or name the notebooks")
        missing = [str(p) for p in notebooks if not p.is_file()]
        if missing:
            _fail(f"no such notebook: {', '.join(missing)}")
        existing = [str(args.out_dir / p.name) for p in notebooks if (args.out_dir / p.name).exists()]
        if existing and not args.force:
            _fail(f"{existing[0]} exists (a student's work?): choose another OUT_DIR, or add --force to overwrite")
        try:
            written = write_student_edition(notebooks, args.out_dir)
        except ValueError as e:
            _fail(str(e))
        print("\n".join(f"wrote {path}" for path in written))
        return 0

    if args.timeout is not None and not args.timeout > 0:
        _fail(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    if args.command == "grade-class":
        if not args.folder.is_dir():
            _fail(f"no such folder: {args.folder}")
        try:
            rows = grade_class(args.folder, args.csv, args.timeout, not args.no_run)
        except (ValueError, OSError) as e:
            _fail(str(e))
        print(f"wrote {args.csv} ({len(rows)} students) and {args.csv.parent / 'feedback'}/STUDENT.txt")
        return 0
    missing = [str(p) for p in args.notebooks if not p.is_file()]
    if missing:
        _fail(f"no such notebook: {', '.join(missing)}")
    results, ok = grade(args.notebooks, args.timeout, not args.no_run)
    print(format_report(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
