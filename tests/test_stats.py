"""coatlib.studies.stats: intervals against scipy and by hand, verdicts on known cases."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from coatlib.studies import stats


def test_interval_is_the_t_interval_of_the_mean():
    x = [0.61, 0.64, 0.58, 0.66]
    r = stats.interval(x)
    low, high = sps.t.interval(0.95, 3, loc=np.mean(x), scale=sps.sem(x))
    assert (r.low, r.high, r.df) == pytest.approx((low, high, 3))
    # with three seeds the quantile is 4.30, not the 2 of a "two standard errors" rule
    r3 = stats.interval([1.0, 2.0, 3.0])
    assert (r3.high - r3.mean) / r3.se == pytest.approx(4.303, abs=1e-3)


def test_a_fixed_test_sets_noise_is_added_undivided():
    # identical seeds: all the uncertainty is the test set's own, sqrt(p (1 - p) / n)
    r = stats.interval([0.5, 0.5, 0.5], stats.binomial_var(0.5, 2000))
    assert r.se == pytest.approx(math.sqrt(0.25 / 2000)) and r.se == pytest.approx(0.01118, abs=1e-5)
    assert r.low < 0.5 < r.high


def test_difference_without_noise_is_welchs_interval():
    a, b = [0.52, 0.55, 0.50, 0.57], [0.41, 0.47, 0.43]
    d = stats.difference(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert (d.low, d.high, d.p) == pytest.approx((ci.low, ci.high, ref.pvalue))


def test_difference_with_noise_is_wider_and_can_lose_significance():
    a, b = [0.025, 0.027, 0.026], [0.020, 0.021, 0.019]
    plain = stats.difference(a, b)
    noisy = stats.difference(a, b, stats.binomial_var(0.026, 2000), stats.binomial_var(0.02, 2000))
    assert plain.excludes_zero() and not noisy.excludes_zero()
    assert noisy.se**2 == pytest.approx(plain.se**2 + (0.026 * 0.974 + 0.02 * 0.98) / 2000)


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        stats.interval([0.5])
    with pytest.raises(ValueError, match="finite"):
        stats.difference([1.0, float("nan")], [1.0, 2.0])


def test_claimed_pairs_of_the_papers_orderings():
    g = stats.claimed_pairs("C-C-C-C ≈ C-C-C-T ≥ C-C-T-T > C-T-T-T ≫ ViT-Rel")
    assert ("C-C-C-C", "C-C-C-T", "≈") in g and ("C-C-C-T", "C-C-T-T", "≥") in g
    assert ("C-C-C-C", "C-T-T-T", ">") in g and ("C-C-T-T", "ViT-Rel", "≫") in g
    assert len(g) == 10 and len([p for p in g if p[2] != "≈"]) == 9
    c = stats.claimed_pairs("C-C-T-T ≈ C-T-T-T > ViT-Rel > C-C-C-T > C-C-C-C")
    assert ("C-T-T-T", "C-C-C-C", ">") in c and ("C-C-C-T", "ViT-Rel", ">") not in c


def test_verdicts_agree_reverse_or_leave_undecided():
    values = {"A": [0.9, 0.91, 0.92], "B": [0.5, 0.52, 0.51], "C": [0.5, 0.6, 0.4]}
    rows = {(r.ahead, r.behind): r for r in stats.verdicts(values, "A > B > C")}
    assert rows[("A", "B")].verdict == "agrees" and rows[("A", "C")].verdict == "agrees"
    assert rows[("B", "C")].verdict == "undecided"
    flipped = {(r.ahead, r.behind): r.verdict for r in stats.verdicts(values, "B > A")}
    assert flipped == {("B", "A"): "reversed"}
    # losses: lower is better, so a lower loss of the one claimed ahead agrees
    losses = {"A": [1.0, 1.1, 1.05], "B": [2.0, 2.1, 2.05]}
    assert [r.verdict for r in stats.verdicts(losses, "A > B", larger_is_better=False)] == ["agrees"]
    equal = stats.verdicts({"A": [1.0, 1.1, 1.05], "B": [2.0, 2.1, 2.05]}, "A ≈ B")
    assert equal[0].verdict == "differs"
    assert stats.tally(stats.verdicts(values, "A > B > C")) == {
        "agrees": 2,
        "reversed": 0,
        "undecided": 1,
        "differs": 0,
    }


def test_holm_is_the_step_down_procedure():
    assert stats.holm([0.01, 0.04, 0.03]) == [True, False, False]  # 0.01 < 0.05/3; 0.03 > 0.05/2
    assert stats.holm([0.001, 0.02, 0.04]) == [True, True, True]  # 0.001 < 0.0167, 0.02 < 0.025, 0.04 < 0.05
    assert stats.holm([0.2, 0.001]) == [False, True]
    # a verdict whose p-value does not survive the correction becomes undecided in the holm field
    values = {"A": [0.60, 0.64, 0.62], "B": [0.55, 0.60, 0.57]}
    row = stats.verdicts(values, "A > B")[0]
    assert row.holm == (row.verdict if row.difference.p <= 0.05 else "undecided")
