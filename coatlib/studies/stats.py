"""Intervals and verdicts for the book's experiments: few seeds, a finite test set, many comparisons.

Every experiment chapter reads its numbers through these functions, so that
one rule decides what the book calls a difference:

* ``interval(values, noise_var)``: the mean over seeds with a 95% interval from
  the t distribution. ``noise_var`` is the variance of *one* run's measurement
  from its own sampling, e.g. ``p (1 - p) / n`` for an accuracy measured on a
  fixed test set of ``n`` images (``binomial_var``). A fixed test set's noise is
  the same for every seed, so the seeds' spread does not contain it; it is added
  to the mean's variance as a second, independent term.
* ``difference(a, b, ...)``: the same for ``mean(a) - mean(b)`` (Welch's
  interval, with Welch-Satterthwaite degrees of freedom from the seeds, and
  the two measurements' own noise added).
* ``verdicts(values, ordering, ...)``: for every ordered pair of a claimed
  ordering such as ``"C-C-C-C ≈ C-C-C-T ≥ C-C-T-T > C-T-T-T ≫ ViT-Rel"``, whether
  the data *agree* (the interval of the difference lies on the claimed side of
  zero), are *reversed* (on the other side), or leave it *undecided*; with
  the number of comparisons made and a Holm correction over them.

No "within two standard errors" rule: with three seeds the 95% t quantile is
4.30, not 2.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean (or a difference of means) with its 95% interval, standard error and degrees of freedom."""

    mean: float
    low: float
    high: float
    se: float
    df: float
    p: float = math.nan  # two-sided p-value of "the true value is 0" (for differences)

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __format__(self, spec: str) -> str:
        spec = spec or ".3f"
        return f"{self.mean:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def binomial_var(accuracy: float, n: int) -> float:
    """Variance of an accuracy measured on ``n`` independent test images: ``p (1 - p) / n``."""
    return accuracy * (1 - accuracy) / n


def interval(values: Sequence[float], noise_var: float | Sequence[float] = 0.0) -> Interval:
    """Mean of ``values`` (one per seed) with a 95% t interval on ``len(values) - 1`` degrees of freedom.

    ``noise_var``: the variance of one value's own measurement noise (a number, or one per value).
    The noise of a *fixed* test set is shared by every seed, so averaging over seeds does not
    shrink it: ``se² = s² / k + mean(noise_var)``.
    """
    x = _values(values, "values")
    k = len(x)
    noise = float(np.mean(noise_var))
    se = math.sqrt(x.var(ddof=1) / k + noise)
    t = stats.t.ppf(0.5 + LEVEL / 2, k - 1)
    return Interval(float(x.mean()), float(x.mean() - t * se), float(x.mean() + t * se), se, k - 1)


def difference(
    a: Sequence[float],
    b: Sequence[float],
    noise_var_a: float | Sequence[float] = 0.0,
    noise_var_b: float | Sequence[float] = 0.0,
) -> Interval:
    """``mean(a) - mean(b)`` with Welch's 95% interval, the two measurements' own noise added.

    ``se² = s_a² / k_a + s_b² / k_b + noise_a + noise_b``; the degrees of freedom are
    Welch-Satterthwaite's for the seed terms (the noise terms, known variances, count as
    infinite degrees of freedom, which the formula gives by leaving them out of the
    denominator). With no noise this is exactly ``scipy.stats.ttest_ind(a, b, equal_var=False)``.
    """
    x, y = _values(a, "a"), _values(b, "b")
    va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    noise = float(np.mean(noise_var_a)) + float(np.mean(noise_var_b))
    se = math.sqrt(va + vb + noise)
    denominator = va**2 / (len(x) - 1) + vb**2 / (len(y) - 1)
    df = (va + vb + noise) ** 2 / denominator if denominator > 0 else math.inf
    d = float(x.mean() - y.mean())
    t = stats.t.ppf(0.5 + LEVEL / 2, df)
    p = 2 * stats.t.sf(abs(d) / se, df) if se > 0 else (0.0 if d else 1.0)
    return Interval(d, d - t * se, d + t * se, se, df, float(p))


@dataclass(frozen=True)
class Verdict:
    """One ordered pair of a claimed ordering: ``ahead`` is claimed ``relation`` ``behind``."""

    ahead: str
    behind: str
    relation: str  # ">", "≥", "≫" or "≈"
    difference: Interval  # of the score "ahead" minus "behind", in the direction where larger is better
    verdict: str  # "agrees", "reversed", "undecided" (for "≈": "differs" or "undecided")
    holm: str  # the same verdict after Holm's correction over all comparisons of the call


def parse_ordering(ordering: str) -> list[tuple[list[str], str]]:
    """``"A ≈ B > C"`` -> ``[(["A", "B"], ">"), (["C"], "")]``: tiers of names, and the relation to the next tier."""
    parts = re.split(r"\s+(≈|≥|>|≫)\s+", ordering.strip())
    tiers: list[tuple[list[str], str]] = []
    names, relations = parts[0::2], parts[1::2] + [""]
    current: list[str] = []
    for name, relation in zip(names, relations):
        current.append(name)
        if relation != "≈":
            tiers.append((current, relation))
            current = []
    return tiers


def claimed_pairs(ordering: str) -> list[tuple[str, str, str]]:
    """Every pair the ordering claims something about: ``(ahead, behind, relation)``.

    Names in one tier ("≈") are claimed equal; a name is claimed ahead of every name in
    every later tier, with the relation to the next tier (the strongest one on the way counts).
    """
    tiers = parse_ordering(ordering)
    pairs = []
    for i, (names, _) in enumerate(tiers):
        pairs += [(a, b, "≈") for j, a in enumerate(names) for b in names[j + 1 :]]
        for j in range(i + 1, len(tiers)):
            between = [tiers[k][1] for k in range(i, j)]
            relation = "≫" if "≫" in between else ">" if ">" in between else "≥"
            pairs += [(a, b, relation) for a in names for b in tiers[j][0]]
    return pairs


def verdicts(
    values: dict[str, Sequence[float]],
    ordering: str,
    noise_var: dict[str, float] | None = None,
    larger_is_better: bool = True,
) -> list[Verdict]:
    """Compare the measured ``values`` (name -> one value per seed) with a claimed ``ordering``.

    For each pair of ``claimed_pairs(ordering)`` the interval of the difference (ahead minus
    behind, sign-flipped when ``larger_is_better`` is False, e.g. for losses) gives the verdict:
    ``agrees`` when it lies above zero, ``reversed`` when below, ``undecided`` when it holds
    zero; a claimed equality ("≈") is ``differs`` when the interval excludes zero. The ``holm``
    field repeats the verdict after Holm's step-down correction at 5% family-wise error over all
    the pairs of this call (a difference is called only if its p-value survives).
    """
    noise_var = noise_var or {}
    sign = 1.0 if larger_is_better else -1.0
    rows = []
    for ahead, behind, relation in claimed_pairs(ordering):
        d = difference(values[ahead], values[behind], noise_var.get(ahead, 0.0), noise_var.get(behind, 0.0))
        if sign < 0:
            d = Interval(-d.mean, -d.high, -d.low, d.se, d.df, d.p)
        rows.append((ahead, behind, relation, d, _verdict(relation, d.low > 0, d.high < 0)))
    survives = holm([d.p for *_, d, _ in rows])
    return [
        Verdict(a, b, rel, d, v, v if keep or v == "undecided" else "undecided")
        for (a, b, rel, d, v), keep in zip(rows, survives)
    ]


def holm(p_values: Sequence[float], alpha: float = 1 - LEVEL) -> list[bool]:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise error ``alpha``."""
    order = np.argsort(p_values)
    rejected = [False] * len(p_values)
    for rank, i in enumerate(order):
        if p_values[i] > alpha / (len(p_values) - rank):
            break
        rejected[i] = True
    return rejected


def tally(rows: Sequence[Verdict], holm_corrected: bool = False) -> dict[str, int]:
    """How many verdicts of each kind (``agrees``, ``reversed``, ``undecided``, ``differs``)."""
    counts = {"agrees": 0, "reversed": 0, "undecided": 0, "differs": 0}
    for r in rows:
        counts[r.holm if holm_corrected else r.verdict] += 1
    return counts


def _verdict(relation: str, above: bool, below: bool) -> str:
    if relation == "≈":
        return "differs" if above or below else "undecided"
    return "agrees" if above else "reversed" if below else "undecided"


def _values(values: Sequence[float], name: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2:
        raise ValueError(f"{name}: need one value per seed and at least 2 seeds for an interval, got {values!r}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: values must be finite, got {values!r}")
    return x
