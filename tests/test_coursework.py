"""The coursework tools: the student edition hides every solution, the grader reports each exercise.

The grading tests execute small notebooks built here with the book's conventions
(``coatlib.teaching.book``) and real checks from ``coatlib.teaching.exercises``; one slow test
runs a real chapter, as the student edition (all fail) and as written (all pass).
"""

import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from coatlib.teaching import coursework as cw
from coatlib.teaching.book import BEGIN_SOLUTION, END_SOLUTION, INSTALL_TAG, SOLUTION_TAG, find_root, toc_notebooks

RECEPTIVE_FIELD = """\
size, step = 1, 1
for k, s in zip(kernel_sizes, strides):
    size += (k - 1) * step
    step *= s
return size"""
MBCONV_MACS = "e, r = 4 * c, c // 4\nreturn h * w * (c * e + e * k * k + e * c) + 2 * e * r"


def solution_cell(signature, answer):
    body = "\n".join("    " + line for line in [BEGIN_SOLUTION, *answer.splitlines(), END_SOLUTION])
    return new_code_cell(
        f'def {signature}:\n    """The reader writes this."""\n{body}', metadata={"tags": [SOLUTION_TAG]}
    )


def code_exercise(label, signature, answer, check, fence="```"):
    name = signature.split("(")[0]
    return [
        new_markdown_cell(
            f"Some prose.\n\n{fence}{{exercise}} Write {name}\n:label: {label}\n\nWrite `{name}`.\n{fence}"
        ),
        new_markdown_cell(f"```{{solution-start}} {label}\n:class: dropdown\n```"),
        solution_cell(signature, answer),
        new_markdown_cell("```{solution-end}\n```"),
        new_code_cell(f"{check}({name})", outputs=[new_output("stream", name="stdout", text=f"{check}: correct\n")]),
    ]


def chapter():
    """A chapter in the book's conventions: two code exercises (with checks) and a written one."""
    cells = [
        new_markdown_cell("# A chapter"),
        new_code_cell("import coatlib", metadata={"tags": [INSTALL_TAG]}),
        new_code_cell("from coatlib.teaching.exercises import check_receptive_field, check_mbconv_macs"),
        *code_exercise("ex-rf", "receptive_field(kernel_sizes, strides)", RECEPTIVE_FIELD, "check_receptive_field"),
        *code_exercise("ex-macs", "mbconv_macs(c, k, h, w)", MBCONV_MACS, "result = check_mbconv_macs", fence=":::"),
        new_markdown_cell("```{exercise} Why?\n:label: ex-why\n\nExplain.\n```"),
        new_markdown_cell(
            "````{solution} ex-why\n:class: dropdown\n\nBecause:\n```python\nprint('the answer')\n```\n````\n\nText after the solution."
        ),
    ]
    return new_notebook(
        cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    )


def write(nb, path):
    nbformat.write(nb, path)
    return path


def sources(nb):
    return [cell.source for cell in nb.cells]


# ---------------------------------------------------------------------------
# Student edition


def test_student_edition_removes_solutions_keeps_the_rest_and_clears_outputs():
    original = chapter()
    student = cw.student_notebook(original)
    text = "\n".join(sources(student))
    assert "{solution" not in text and BEGIN_SOLUTION not in text and "print('the answer')" not in text
    assert "k - 1" not in text and "k * k + c_out" not in text
    assert "Text after the solution." in text  # prose after a solution directive stays
    kept = [s for s in sources(original) if "{solution" not in s and BEGIN_SOLUTION not in s]
    assert [s for s in sources(student) if s in kept] == kept  # install, imports, exercises, checks, in order
    stubs = [cell for cell in student.cells if SOLUTION_TAG in cell.metadata.get("tags", [])]
    assert [cell.source for cell in stubs] == [
        'def receptive_field(kernel_sizes, strides):\n    """The reader writes this."""\n'
        "    # YOUR CODE HERE\n    raise NotImplementedError",
        'def mbconv_macs(c, k, h, w):\n    """The reader writes this."""\n'
        "    # YOUR CODE HERE\n    raise NotImplementedError",
    ]
    assert all(not cell.outputs and cell.execution_count is None for cell in student.cells if cell.cell_type == "code")
    assert student.metadata[cw.METADATA_KEY]["checks"] == {
        "ex-rf": ["check_receptive_field"],
        "ex-macs": ["check_mbconv_macs"],
    }
    assert original.cells[7].outputs, "the original notebook is left untouched"


def test_stub_keeps_indentation_and_code_outside_the_markers():
    source = f"x = 1\nif x:\n    {BEGIN_SOLUTION}\n    y = 2\n    {END_SOLUTION}\n    z = 3\n{BEGIN_SOLUTION}\nw = 4\n{END_SOLUTION}"
    assert cw.stub_solution(source) == (
        "x = 1\nif x:\n    # YOUR CODE HERE\n    raise NotImplementedError\n    z = 3\n# YOUR CODE HERE\nraise NotImplementedError"
    )


@pytest.mark.parametrize(
    "source, error",
    [
        (f"{BEGIN_SOLUTION}\nx = 1", "never closed"),
        (f"x = 1\n{END_SOLUTION}", "without a"),
        (f"{BEGIN_SOLUTION}\n{BEGIN_SOLUTION}\n{END_SOLUTION}", "again before"),
    ],
)
def test_unbalanced_markers_are_refused(source, error):
    with pytest.raises(ValueError, match=error):
        cw.stub_solution(source)


def broken(change):
    nb = chapter()
    change(nb.cells)
    return nb


@pytest.mark.parametrize(
    "nb, error",
    [
        (broken(lambda cells: cells[5].metadata.update(tags=[])), "not tagged 'solution'"),
        (
            broken(lambda cells: setattr(cells[5], "source", "def receptive_field(ks, ss):\n    return 1")),
            "no '# BEGIN SOLUTION' marker",
        ),
        (broken(lambda cells: cells.pop(6)), "not tagged 'solution'"),
        (broken(lambda cells: cells.__delitem__(slice(11, 13))), "never closed"),
        (broken(lambda cells: cells.pop(4)), "without a {solution-start}"),
    ],
)
def test_notebooks_that_break_the_conventions_are_refused_not_leaked(nb, error):
    with pytest.raises(ValueError, match=error):
        cw.student_notebook(nb)


def test_directives_skip_plain_code_fences_and_nested_directives():
    text = "```python\n```{solution} not-a-directive\n```\n\n````{exercise} Title\n:label: ex-a\n:class: x\n```{note}\nin\n```\n````\ntail"
    [exercise] = cw.directives(text)
    assert (exercise.name, exercise.argument, exercise.options) == (
        "exercise",
        "Title",
        {"label": "ex-a", "class": "x"},
    )
    assert list(exercise.lines) == [4, 5, 6, 7, 8, 9, 10]


def test_student_edition_refuses_to_overwrite_the_originals(tmp_path):
    path = write(chapter(), tmp_path / "chapter.ipynb")
    with pytest.raises(ValueError, match="overwrite the original"):
        cw.write_student_edition([path], tmp_path)


def book_notebooks():
    return toc_notebooks(find_root(__file__))


@pytest.mark.parametrize("path", book_notebooks(), ids=lambda p: p.stem)
def test_the_book_student_edition_hides_every_answer_and_grades_the_same_exercises(path):
    original = nbformat.read(path, as_version=4)
    student = cw.student_notebook(original)
    text = nbformat.writes(student)
    answers = [
        cell.source.split(BEGIN_SOLUTION)[1].split(END_SOLUTION)[0]
        for cell in original.cells
        if BEGIN_SOLUTION in cell.source
    ]
    assert all(answer.strip() and answer not in text for answer in answers)
    assert text.count("raise NotImplementedError") == len(answers)
    assert "{solution" not in text
    plan, _ = cw.grading_plan(original)
    assert list(student.metadata[cw.METADATA_KEY]["checks"]) == list(plan), "the check cells keep their exercise"
    solved = [
        d.argument
        for cell in original.cells
        if cell.cell_type == "markdown"
        for d in cw.directives(cell.source)
        if d.name == "solution-start"
    ]
    assert set(solved) <= set(plan), "every code exercise has a check cell"


# ---------------------------------------------------------------------------
# Grading


def test_grader_passes_the_original_fails_the_student_edition_and_reports_what_is_wrong(tmp_path, capsys):
    original = write(chapter(), tmp_path / "original.ipynb")
    [handout] = cw.write_student_edition([original], tmp_path / "handout")

    work = nbformat.read(handout, as_version=4)  # a student's attempt
    work.cells[4].source = work.cells[4].source.replace("raise NotImplementedError", "return sum(kernel_sizes)")
    del work.cells[8]  # deleted the check cell of ex-macs
    attempt = write(work, tmp_path / "attempt.ipynb")

    crashing = nbformat.read(handout, as_version=4)
    crashing.cells.insert(3, new_code_cell("import os\nos._exit(1)"))
    for cell in crashing.cells:  # saved outputs that claim a pass are not trusted
        if "check_" in cell.source and "import" not in cell.source:
            fake = {"name": cell.source.split("(")[0].split()[-1], "passed": True, "message": "correct"}
            cell.outputs, cell.execution_count = [new_output("display_data", data={cw.RESULT_MIME: fake})], 1
    crash = write(crashing, tmp_path / "crash.ipynb")

    code = cw.main(["grade", str(original), str(handout), str(attempt), str(crash), "--json", str(tmp_path / "r.json")])
    report = capsys.readouterr().out
    assert code == 1
    results = {r["path"]: r for r in json.loads((tmp_path / "r.json").read_text())}
    verdicts = {path: [(e["label"], e["passed"]) for e in r["exercises"]] for path, r in results.items()}
    assert verdicts == {
        str(original): [("ex-rf", True), ("ex-macs", True)],
        str(handout): [("ex-rf", False), ("ex-macs", False)],
        str(attempt): [("ex-rf", False), ("ex-macs", False)],
        str(crash): [("ex-rf", False), ("ex-macs", False)],
    }
    messages = {path: [e["message"] for e in r["exercises"]] for path, r in results.items()}
    assert all("raises NotImplementedError" in m for m in messages[str(handout)])
    assert (
        messages[str(attempt)][0].startswith("check_receptive_field: not yet.")
        and "each layer adds k - 1" in messages[str(attempt)][0]
    )
    assert messages[str(attempt)][1] == "the check cell is missing: restore the cell that calls check_mbconv_macs"
    assert "kernel died" in results[str(crash)]["problem"] and all(
        m.startswith("not run") for m in messages[str(crash)]
    )
    assert results[str(original)]["problem"] is None and results[str(original)]["ungraded"] == ["ex-why"]
    assert f"{original}: 2 of 2 exercises passed" in report
    assert "  FAILED  ex-rf    check_receptive_field: not yet." in report
    assert report.rstrip().endswith(
        "total: 2 of 8 exercises passed in 4 notebook(s); 1 notebook(s) did not run to the end"
    )


def test_grader_reports_errors_in_check_cells_and_passes_only_when_all_pass(tmp_path, capsys):
    nb = chapter()
    nb.cells[10].source = nb.cells[10].source.replace("def mbconv_macs", "def mbconv_mac")  # typo in the name
    path = write(nb, tmp_path / "typo.ipynb")
    assert cw.main(["grade", str(path)]) == 1
    report = capsys.readouterr().out
    assert "  passed  ex-rf    check_receptive_field\n" in report
    assert "  FAILED  ex-macs  the check cell raised NameError: name 'mbconv_macs' is not defined" in report


def test_a_notebook_that_runs_too_long_is_stopped_and_reported(tmp_path):
    nb = cw.student_notebook(chapter())
    nb.cells.insert(2, new_code_cell("import time\ntime.sleep(600)"))
    result = cw.grade_notebook(write(nb, tmp_path / "slow.ipynb"), timeout=8)
    assert result.problem == "timed out after 8 s" and result.seconds < 60
    assert [(e.label, e.passed, e.message) for e in result.exercises] == [
        ("ex-rf", False, "not run: the notebook timed out after 8 s"),
        ("ex-macs", False, "not run: the notebook timed out after 8 s"),
    ]


def test_bad_arguments_get_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cw.main(["grade", str(tmp_path / "x.ipynb"), "--timeout", "0"])
    assert "--timeout must be a positive number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cw.main(["student-edition", str(tmp_path / "out"), str(tmp_path / "missing.ipynb")])
    assert "no such notebook" in capsys.readouterr().err


@pytest.mark.slow
def test_a_real_chapter_fails_as_handed_out_and_passes_as_written(tmp_path):
    chapter_path = find_root(__file__) / "notebooks" / "01_depthwise_convolution.ipynb"
    [handout] = cw.write_student_edition([chapter_path], tmp_path)
    results, ok = cw.grade([handout, chapter_path], timeout=300)
    assert not ok
    student, written = results
    assert student.problem is None and written.problem is None
    assert len(student.exercises) == len(written.exercises) >= 3
    assert not any(e.passed for e in student.exercises)
    assert all("raises NotImplementedError" in e.message for e in student.exercises)
    assert all(e.passed for e in written.exercises), cw.format_report(results)
