"""server.runs.statistics against scipy.stats: the t-interval of a mean, the paired
t-test and its interval, and Holm's correction against its step-down definition."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from server.runs.statistics import holm, paired_difference, spread

scores = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=2, max_size=12)


@settings(max_examples=60, deadline=None)
@given(scores)
def test_spread_matches_scipys_t_interval(values: list[float]) -> None:
    got = spread(values)
    assert got.n == len(values)
    assert got.mean == pytest.approx(np.mean(values), abs=1e-12)
    assert got.sd == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    if got.sd > 1e-9:
        low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values),
                                     scale=stats.sem(values))
        assert got.ci95 == pytest.approx((high - low) / 2, rel=1e-9)


def test_spread_of_one_seed_has_no_interval() -> None:
    got = spread([0.7])
    assert (got.mean, got.sd, got.ci95) == (0.7, None, None)
    with pytest.raises(ValueError):
        spread([])


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 12).flatmap(lambda n: st.tuples(
    st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=n, max_size=n),
    st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=n, max_size=n))))
def test_paired_difference_matches_scipys_paired_t_test(pair) -> None:
    x, y = pair
    got = paired_difference(x, y)
    diffs = np.subtract(x, y)
    assert got.mean == pytest.approx(diffs.mean(), abs=1e-12)
    if np.std(diffs, ddof=1) < 1e-9:
        return  # scipy's t over a zero sd is nan or inf: covered below
    oracle = stats.ttest_rel(x, y)
    assert got.p_value == pytest.approx(oracle.pvalue, rel=1e-7, abs=1e-12)
    low, high = oracle.confidence_interval(0.95)
    assert got.mean - got.ci95 == pytest.approx(low, abs=1e-9)
    assert got.mean + got.ci95 == pytest.approx(high, abs=1e-9)


def test_paired_difference_edge_cases() -> None:
    assert paired_difference([0.5, 0.6], [0.5, 0.6]).p_value == 1.0  # identical runs
    assert paired_difference([0.6, 0.7], [0.5, 0.6]).p_value is None  # constant gap: no test
    assert paired_difference([0.6], [0.5]).ci95 is None
    with pytest.raises(ValueError):
        paired_difference([0.1, 0.2], [0.1])


def holm_by_definition(p: list[float]) -> list[float]:
    """Holm's adjusted p-value of hypothesis i: the smallest level at which the
    step-down procedure rejects it, found by scanning the levels p_(j) * (m - j)."""
    m, order = len(p), sorted(range(len(p)), key=lambda i: p[i])

    def rejected(alpha: float) -> set[int]:
        out: set[int] = set()
        for rank, i in enumerate(order):
            if p[i] * (m - rank) > alpha:
                break
            out.add(i)
        return out

    levels = sorted({min(1.0, p[i] * (m - rank)) for rank, i in enumerate(order)} | {1.0})
    return [next(a for a in levels if i in rejected(a) or a == 1.0) for i in range(m)]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(1e-6, 1.0, allow_nan=False), min_size=1, max_size=8))
def test_holm_matches_its_step_down_definition(p: list[float]) -> None:
    assert holm(p) == pytest.approx(holm_by_definition(p), rel=1e-12)


def test_holm_known_values_and_untested_entries() -> None:
    # m = 3: 0.01 * 3, max(0.03, 0.02 * 2), max(0.04, 0.04 * 1)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.3, None, 0.6]) == [0.6, None, 0.6]
    adjusted = holm([0.5, 0.9, 0.8, 0.7])
    assert all(a >= p for a, p in zip(adjusted, [0.5, 0.9, 0.8, 0.7], strict=True))
    assert max(adjusted) <= 1.0
    assert all(math.isclose(a, 1.0) for a in holm([0.9, 0.95]))
    assert list(itertools.chain(holm([]))) == []
