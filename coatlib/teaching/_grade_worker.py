"""The grader's fresh process: define a submission's functions, run the installed checks on them.

``python -m coatlib.teaching._grade_worker`` reads a job from stdin (JSON: the submission's
imports and definitions, one statement each, the exercises ``[label, function, check]`` and the file to
write the results to) and writes ``{"results": [[label, passed, message], ...]}`` there. The checks
and their records come from this process's own import of :mod:`coatlib.teaching.exercises`, made
before any submitted code runs; a submission that changes them, or PyTorch, while it is defined or
while a check calls it, fails with the name of what it changed.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

WATCHED = ("coatlib", "torch", "builtins", "math", "numbers", "functools", "contextlib", "json")


def snapshot() -> dict[tuple[str, str], int]:
    """Identity of every value in the modules (and the tensor classes) a check relies on."""
    import torch

    seen = {}
    for name, module in list(sys.modules.items()):
        parts = name.split(".")
        private = parts[0] == "torch" and any(part.startswith("_") for part in parts)  # torch's own caches
        if module is not None and parts[0] in WATCHED and not private:
            for key, value in list(vars(module).items()):
                seen[name, key] = id(value)
    for cls in (torch.Tensor, torch._C.TensorBase if hasattr(torch._C, "TensorBase") else torch._C._TensorBase):
        for key, value in list(vars(cls).items()):
            seen[f"{cls.__module__}.{cls.__name__}", key] = id(value)
    return seen


def changes(before: dict, after: dict) -> list[str]:
    """What a submission replaced or deleted (or added to the checks' own modules)."""
    changed = [f"{m}.{k}" for (m, k), v in before.items() if after.get((m, k)) != v]
    # a module imported only now (e.g. coatlib.teaching.display, for a chapter's tables) is not a change:
    # neither its own names nor its entry in its package
    new_modules = {m for m, _ in after} - {m for m, _ in before}
    added = [
        f"{m}.{k}"
        for (m, k) in after.keys() - before.keys()
        if m.startswith("coatlib.teaching") and m not in new_modules and f"{m}.{k}" not in new_modules
    ]
    return sorted(changed + added)


def _stub(*args):
    raise NotImplementedError


def grade(source: list[str], exercises: list[list[str]]) -> list[list]:
    from coatlib.teaching.exercises import CHECKS

    checks = dict(CHECKS)  # kept before any submitted code runs
    for _, _, check in exercises:  # import what the checks import, before the snapshot
        checks[check](_stub, verbose=False)
    import coatlib.teaching.display  # noqa: F401  (the chapters' import cells take Table from it)

    before = snapshot()
    namespace: dict = {"__name__": "__main__"}
    problem, failures = None, []
    for statement in source:  # one by one: an import that fails here does not stop the others
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(statement, "<submission>", "exec"), namespace)
        except Exception as e:  # the submission's error, reported with a missing function
            failures.append(f"{statement.splitlines()[0]!r} raised {type(e).__name__}: {e}")
    results = []
    for label, function, check in exercises:
        fn = namespace.get(function)
        if problem is None and (altered := changes(before, snapshot())):
            problem = f"the submission changed {', '.join(altered[:3])}: its code may not alter coatlib or torch"
        if problem:
            results.append([label, False, problem])
        elif fn is None:
            failed = f" ({failures[0]})" if failures else ""
            results.append([label, False, f"no function {function} defined with def{failed}: write it in its cell"])
        else:
            with contextlib.redirect_stdout(io.StringIO()):
                result = checks[check](fn, verbose=False)
            altered = changes(before, snapshot())
            if altered:
                problem = f"{function} changed {', '.join(altered[:3])} when called: it may not alter coatlib or torch"
                results.append([label, False, problem])
            else:
                results.append([label, result.passed, str(result)])
    return results


def main() -> None:
    job = json.loads(sys.stdin.read())
    out = job["out"]  # read before any submitted code runs
    results = grade(job["source"], job["exercises"])
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"results": results}, f)


if __name__ == "__main__":
    main()
