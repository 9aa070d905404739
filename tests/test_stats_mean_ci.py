"""``mean_ci``: the Student-t interval on samples whose interval is known from printed t tables;
``difference_verdict`` only calls a difference when its interval excludes 0."""

from __future__ import annotations

import math

import pytest

from mtoframe.bench.stats import difference_verdict as verdict
from mtoframe.bench.stats import mean_ci
from mtoframe.errors import MtoError

# t quantiles from printed tables (two-sided 95%: 0.975 quantile), 4 and 2 degrees of freedom
T975_DF4, T975_DF2 = 2.7764451052, 4.3026527297


def test_five_values_match_the_t_table() -> None:
    mean, (low, high) = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    half = T975_DF4 * math.sqrt(2.5) / math.sqrt(5)  # sample variance of 1..5 is 2.5
    assert mean == 3.0
    assert (low, high) == pytest.approx((3.0 - half, 3.0 + half), rel=1e-9)


def test_paired_differences_three_seeds() -> None:
    ew, stack = [70.0, 72.0, 71.0], [71.0, 74.0, 72.5]
    diffs = [s - e for s, e in zip(stack, ew)]  # 1, 2, 1.5: mean 1.5, sd 0.5
    mean, (low, high) = mean_ci(diffs)
    half = T975_DF2 * 0.5 / math.sqrt(3)
    assert mean == pytest.approx(1.5)
    assert (low, high) == pytest.approx((1.5 - half, 1.5 + half), rel=1e-9)
    assert verdict((low, high)) == "better"  # 1.5 ± 1.24 excludes 0


def test_level_widens_the_interval() -> None:
    xs = [0.3, -0.1, 0.4, 0.2]
    _, (l95, h95) = mean_ci(xs)
    _, (l99, h99) = mean_ci(xs, confidence=0.99)
    assert l99 < l95 < h95 < h99


def test_one_value_has_no_interval_and_no_verdict() -> None:
    mean, ci = mean_ci([2.0])
    assert mean == 2.0 and all(math.isnan(c) for c in ci)
    assert verdict(ci) == "no difference"


def test_verdicts_need_the_interval_to_exclude_zero() -> None:
    assert verdict((0.1, 2.0)) == "better"
    assert verdict((-2.0, -0.1)) == "worse"
    assert verdict((-0.1, 2.0)) == "no difference"
    assert verdict((0.0, 2.0)) == "no difference"
    assert verdict((0.1, 2.0), higher_is_better=False) == "worse"


@pytest.mark.parametrize(("values", "confidence", "match"), [([], 0.95, "non-empty"), ([1.0, math.nan], 0.95, "finite"),
                                                             ([1.0, 2.0], 1.0, "confidence")])
def test_bad_input_is_an_error(values, confidence, match) -> None:
    with pytest.raises(MtoError, match=match):
        mean_ci(values, confidence=confidence)

