"""The toolkit of the exercise checks: what every chapter's checks (``ch1_depthwise`` ... ``ch7_scaling``) use.

A check is a function ``body(fn)`` that calls the reader's function and raises :class:`Wrong` with a
message for the reader; ``@register_check`` turns it into ``check_xxx(fn, verbose=True)``, which prints
and returns a :class:`CheckResult` and is listed in ``CHECKS`` (by name, for the grader)::

    @register_check
    def check_double(fn):
        x = randn(torch.Generator().manual_seed(0), 3)
        compare_tensors(call_reader(fn, x), 2 * x, f"{function_name(fn)}(x)", axes=("i",))

* calling: ``call_reader(fn, *args, forbidden=...)`` calls the reader's function, turning its exceptions
  (and a call of a ``Forbidden`` library function, or of the book's reference answers) into ``Wrong``;
  ``counters()`` forbids the MAC counters in counting exercises;
* comparing: ``compare_tensors`` (the first wrong value, by axis, with ``Hint``s), ``compare_number``,
  ``plain_number``, ``factor_hint``;
* reporting: ``function_name``, ``describe_args``; inputs: ``randn``.
"""

from __future__ import annotations

import contextlib
import functools
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch


class Wrong(Exception):
    """Raised inside a check; its message tells the reader what is wrong."""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ``bool(result)`` is ``passed``; ``str(result)`` is the report."""

    name: str
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return f"{self.name}: {self.message}"

    def _ipython_display_(self) -> None:
        """Show nothing in a notebook: the check printed its report when it ran."""


CHECKS: dict[str, Callable[..., CheckResult]] = {}


def register_check(body: Callable[[Callable], None]) -> Callable[..., CheckResult]:
    """Turn ``body(fn)``, which raises :class:`Wrong`, into a check that prints and returns a report."""
    name = body.__name__

    @functools.wraps(body)
    def check(fn: Callable, verbose: bool = True) -> CheckResult:
        try:
            if not callable(fn):
                raise Wrong(
                    f"expected your function, got {type(fn).__name__}: pass the function itself, without calling it."
                )
            _refuse_library_function(fn)
            body(fn)
            result = CheckResult(name, True, "correct")
        except Wrong as e:
            result = CheckResult(name, False, f"not yet. {e}")
        if verbose:
            print(result)
        return result

    CHECKS[name] = check
    return check


def _refuse_library_function(fn: Callable) -> None:
    """A check grades the reader's function: one of coatlib's or PyTorch's own is refused by name."""
    module = getattr(fn, "__module__", None) or ""
    if module.split(".")[0] in ("coatlib", "torch"):
        raise Wrong(
            f"{module}.{function_name(fn)} is the library's function, not yours: write your own and pass that to the check."
        )


@dataclass(frozen=True)
class Forbidden:
    """A library call an exercise asks the reader not to use: ``owner.attr`` (``owner=None``: a name in the
    reader's own namespace, e.g. a function the chapter defined), unless ``allowed(*args, **kwargs)``."""

    owner: Any
    attr: str
    label: str
    allowed: Callable[..., bool] | None = None


class _ForbiddenCall(Exception):
    def __init__(self, label: str):
        super().__init__(label)
        self.label = label


@contextlib.contextmanager
def _forbidding(fn: Callable, forbidden: Sequence[Forbidden]):
    """Replace each forbidden function, and every name in ``fn``'s globals bound to it, by one that raises."""
    names = getattr(fn, "__globals__", {})
    undo = []
    for rule in forbidden:
        original = getattr(rule.owner, rule.attr, None) if rule.owner is not None else names.get(rule.attr)
        if original is None:
            continue

        def refuse(*args, _original=original, _rule=rule, **kwargs):
            if _rule.allowed is not None and _rule.allowed(*args, **kwargs):
                return _original(*args, **kwargs)
            raise _ForbiddenCall(_rule.label)

        if rule.owner is not None:
            undo.append((rule.owner, rule.attr, original))
            setattr(rule.owner, rule.attr, refuse)
        for name, value in list(names.items()):
            if value is original:
                undo.append((names, name, value))
                names[name] = refuse
    try:
        yield
    finally:
        for owner, attr, value in reversed(undo):
            if isinstance(owner, dict):
                owner[attr] = value
            else:
                setattr(owner, attr, value)


def _references() -> list[Forbidden]:
    """The private reference answers: a reader's function may not call them either."""
    import inspect

    from coatlib.teaching.exercises import _solutions

    label = "the book's reference answer (coatlib.teaching.exercises._solutions)"
    return [
        Forbidden(_solutions, name, label)
        for name, value in vars(_solutions).items()
        if inspect.isfunction(value) and value.__module__ == _solutions.__name__
    ]


def call_reader(fn: Callable, *args, forbidden: Sequence[Forbidden] = ()):
    """Call the reader's function (with the ``forbidden`` library calls made to raise); turn any exception
    into a report that names the call."""
    try:
        with _forbidding(fn, [*forbidden, *_references()]):
            return fn(*args)
    except _ForbiddenCall as e:
        raise Wrong(
            f"{function_name(fn)} calls {e.label}, which this exercise asks you not to use: compute it yourself."
        ) from None
    except NotImplementedError:
        raise Wrong(f"{function_name(fn)} raises NotImplementedError: replace the stub with your code.") from None
    except Exception as e:  # the reader's bug, reported, not raised
        raise Wrong(f"{function_name(fn)}({describe_args(args)}) raised {type(e).__name__}: {e}") from None


def function_name(fn: Callable) -> str:
    """The reader's function's name, for a report."""
    return getattr(fn, "__name__", "your function")


def describe_args(args) -> str:
    """The arguments of a call, for a report: a tensor by its shape, anything else by its ``repr``."""
    return ", ".join(f"tensor of shape {tuple(a.shape)}" if isinstance(a, torch.Tensor) else repr(a) for a in args)


Hint = tuple[torch.Tensor, str] | Callable[[torch.Tensor, torch.Tensor], str | None]


def compare_tensors(
    got, want: torch.Tensor, call: str, axes: Sequence[str], hints: Sequence[Hint] = (), atol: float = 1e-5
):
    """Raise :class:`Wrong` naming the first difference between ``got`` and ``want``.

    ``hints`` are ``(mistaken_output, hint)`` pairs, whose hint is given when
    ``got`` equals that mistaken output, or functions ``(got, bad_mask) -> hint | None``.
    """
    if not isinstance(got, torch.Tensor):
        raise Wrong(f"{call} returned a {type(got).__name__}; return a torch.Tensor of shape {tuple(want.shape)}.")
    if type(got) is not torch.Tensor and not isinstance(got, torch.nn.Parameter):
        raise Wrong(f"{call} returned a {type(got).__name__}; return a plain torch.Tensor.")
    got = torch.Tensor.detach(got).cpu()
    exact = not want.is_floating_point()
    if exact and got.is_floating_point():
        raise Wrong(f"{call} returned a {got.dtype} tensor; return integers (torch.long) that can index a table.")
    if got.shape != want.shape:
        msg = f"{call} returned shape {tuple(got.shape)}; expected {tuple(want.shape)} ({', '.join(axes)})."
        raise Wrong(msg + _hint(got, None, hints))
    got = got.to(want.dtype)
    bad = got != want if exact else ~torch.isclose(got, want, rtol=1e-4, atol=atol)
    if bad.any():
        pos = tuple(int(i) for i in bad.nonzero()[0])
        where = ", ".join(f"{a}={p}" for a, p in zip(axes, pos))
        g, w = got[pos].item(), want[pos].item()
        msg = (
            f"{call}: {int(bad.sum())} of {bad.numel()} values are wrong; the first at [{where}] is "
            f"{g:.5g}, expected {w:.5g}."
        )
        raise Wrong(msg + _hint(got, bad, [*hints, _tensor_factor(want)]))


def _hint(got: torch.Tensor, bad: torch.Tensor | None, hints: Sequence[Hint]) -> str:
    for hint in hints:
        if callable(hint):
            text = hint(got, bad) if bad is not None else None
        else:
            mistaken, text = hint
            if mistaken.shape != got.shape or not torch.allclose(got.to(mistaken.dtype), mistaken, atol=1e-5):
                text = None
        if text:
            return " Hint: " + text
    return ""


def factor_hint(got: float, want: float) -> str:
    """A hint when the answer is the expected one times a factor (halved, doubled, negated...)."""
    if not want or not got:
        return ""
    return f" Hint: your answer is {got / want:.4g} times the expected one: look for a factor you added or left out."


def _tensor_factor(want: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], str | None]:
    """A hint function: every value is ``want`` times the same factor."""

    def hint(got: torch.Tensor, bad: torch.Tensor) -> str | None:
        nonzero = want.abs() > 1e-6
        if not nonzero.any() or not want.is_floating_point():
            return None
        ratio = (got[nonzero] / want[nonzero]).median()
        if ratio.isfinite() and abs(ratio - 1) > 1e-3 and torch.allclose(got, want * ratio, rtol=1e-4, atol=1e-6):
            return f"every value is {ratio.item():.4g} times the expected one: look for a factor you added or left out."
        return None

    return hint


def compare_number(got, want: int, call: str, hints: Sequence[tuple[int, str]] = ()) -> None:
    """Raise :class:`Wrong` unless ``got`` is the number ``want``; ``hints`` are ``(mistaken value, hint)`` pairs."""
    got = plain_number(got, call)
    if got != want:
        hint = next((text for value, text in hints if got == value), None)
        raise Wrong(
            f"{call} returned {got:,}, expected {want:,}." + (" Hint: " + hint if hint else factor_hint(got, want))
        )


def plain_number(got, call: str) -> float | int:
    """``got`` as a plain int or float (a subclass could redefine ``==``)."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if not isinstance(got, numbers.Real) or isinstance(got, bool):
        raise Wrong(f"{call} returned a {type(got).__name__}; return a number.")
    return int(got) if isinstance(got, numbers.Integral) else float(got)


def counters() -> tuple[Forbidden, ...]:
    """The MAC counters a counting exercise must not ask: the reader counts, the check measures."""
    from torch.utils.flop_counter import FlopCounterMode

    import coatlib
    import coatlib.flops

    return (
        *(Forbidden(owner, "count_macs", "coatlib's count_macs") for owner in (coatlib, coatlib.flops)),
        *(Forbidden(owner, "count_flops", "coatlib's count_flops") for owner in (coatlib, coatlib.flops)),
        Forbidden(FlopCounterMode, "__init__", "PyTorch's FlopCounterMode"),
    )


def randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    """Standard normal numbers of ``shape`` from the generator ``g``: a check's inputs, the same every time."""
    return torch.randn(shape, generator=g)
