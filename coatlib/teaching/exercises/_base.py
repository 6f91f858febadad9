"""What every check shares: the report, the registry ``CHECKS`` and the comparisons."""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

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


def _check(body: Callable[[Callable], None]) -> Callable[..., CheckResult]:
    """Turn ``body(fn)``, which raises :class:`Wrong`, into a check that prints and returns a report."""
    name = body.__name__

    @functools.wraps(body)
    def check(fn: Callable, verbose: bool = True) -> CheckResult:
        try:
            if not callable(fn):
                raise Wrong(
                    f"expected your function, got {type(fn).__name__}: pass the function itself, without calling it."
                )
            body(fn)
            result = CheckResult(name, True, "correct")
        except Wrong as e:
            result = CheckResult(name, False, f"not yet. {e}")
        if verbose:
            print(result)
        return result

    CHECKS[name] = check
    return check


def _call(fn: Callable, *args):
    """Call the reader's function; turn any exception into a report that names the call."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise Wrong(f"{_name(fn)} raises NotImplementedError: replace the stub with your code.") from None
    except Exception as e:  # the reader's bug, reported, not raised
        raise Wrong(f"{_name(fn)}({_describe(args)}) raised {type(e).__name__}: {e}") from None


def _name(fn: Callable) -> str:
    return getattr(fn, "__name__", "your function")


def _describe(args) -> str:
    return ", ".join(f"tensor of shape {tuple(a.shape)}" if isinstance(a, torch.Tensor) else repr(a) for a in args)


Hint = tuple[torch.Tensor, str] | Callable[[torch.Tensor, torch.Tensor], str | None]


def _compare(got, want: torch.Tensor, call: str, axes: Sequence[str], hints: Sequence[Hint] = (), atol: float = 1e-5):
    """Raise :class:`Wrong` naming the first difference between ``got`` and ``want``.

    ``hints`` are ``(mistaken_output, hint)`` pairs, whose hint is given when
    ``got`` equals that mistaken output, or functions ``(got, bad_mask) -> hint | None``.
    """
    if not isinstance(got, torch.Tensor):
        raise Wrong(f"{call} returned a {type(got).__name__}; return a torch.Tensor of shape {tuple(want.shape)}.")
    got = got.detach().cpu()
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
        raise Wrong(msg + _hint(got, bad, hints))


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


def _compare_number(got, want: int, call: str, hints: Sequence[tuple[int, str]] = ()) -> None:
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if not isinstance(got, numbers.Real) or isinstance(got, bool):
        raise Wrong(f"{call} returned a {type(got).__name__}; return a number.")
    if got != want:
        hint = next((" Hint: " + text for value, text in hints if got == value), "")
        raise Wrong(f"{call} returned {got:,}, expected {want:,}.{hint}")


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=g)
