"""The shared wait helper: returns what it waited for, and fails saying what it saw."""

from __future__ import annotations

import pytest
from waiting import wait_until


def test_returns_the_conditions_value_once_truthy():
    calls = iter([0, [], [1, 2]])
    assert wait_until(lambda: next(calls), 5, "a non-empty list", interval_s=0) == [1, 2]


def test_timeout_names_what_and_the_last_value():
    seen = iter(range(10**6))
    with pytest.raises(AssertionError, match=r"waiting for three records: timed out after "
                                             r"0\.05 s; last value \[\]") as err:
        wait_until(lambda: next(seen) and [], 0.05, "three records", interval_s=0.01,
                   context=lambda: "stderr tail")
    assert str(err.value).endswith("\nstderr tail")


def test_stops_as_soon_as_the_producer_has_ended():
    calls = []
    with pytest.raises(AssertionError, match="it ended first; last value 0"):
        wait_until(lambda: calls.append(1) or 0, 60, "records", alive=lambda: False)
    assert len(calls) == 2  # once, and once more after the end: not polled for 60 s


def test_a_value_made_just_before_the_end_counts():
    values = iter([0, 7])
    assert wait_until(lambda: next(values), 60, "records", alive=lambda: False) == 7


def test_until_tests_an_observed_value_that_a_failure_shows():
    counts = iter([1, 2, 3])
    assert wait_until(lambda: next(counts), 5, "3 records", 0, until=lambda n: n >= 3) == 3
    with pytest.raises(AssertionError, match=r"last value \{4: 'detect'\}"):
        wait_until(lambda: {4: "detect"}, 0.01, "the stages to end", until=lambda s: not s)
