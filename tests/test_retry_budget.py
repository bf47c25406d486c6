"""RetryBudget: ratio with a floor over a bucketed window, checked against a model."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dwcp_resilience.policies.retry_budget import RetryBudget
from dwcp_resilience.testing import FakeClock


def test_floor_lets_a_quiet_service_retry() -> None:
    """One request, ratio 0.2: the floor (1/s over 10 s = 10 retries) still allows retries."""
    budget = RetryBudget(ratio=0.2, min_retries_per_second=1.0, window=10.0)
    budget.record_request(0.0)
    granted = sum(budget.try_acquire_retry(0.0) for _ in range(50))
    assert granted == 10
    assert budget.floor == 10.0


def test_ratio_caps_retries_under_heavy_traffic() -> None:
    budget = RetryBudget(ratio=0.1, min_retries_per_second=0.0, window=10.0)
    for i in range(1000):
        budget.record_request(i * 0.005)
    granted = sum(budget.try_acquire_retry(5.0) for _ in range(500))
    assert granted == 100
    stats = budget.statistics(5.0)
    assert (stats.requests, stats.retries, stats.allowed, stats.remaining) == (1000, 100, 100.0, 0)
    assert (stats.total_requests, stats.total_retries, stats.total_rejected) == (1000, 100, 400)


def test_zero_ratio_and_zero_floor_allow_nothing() -> None:
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.0)
    budget.record_request(0.0)
    assert not budget.try_acquire_retry(0.0)


def test_old_buckets_expire_one_by_one() -> None:
    """Window 10 s in 10 buckets: a request stops counting once its bucket leaves the window."""
    budget = RetryBudget(ratio=1.0, min_retries_per_second=0.0, window=10.0, buckets=10)
    budget.record_request(0.5)  # bucket 0
    budget.record_request(3.5)  # bucket 3
    assert budget.allowed(9.99) == 2.0
    assert budget.allowed(10.0) == 1.0  # bucket 0 left the window
    assert budget.allowed(12.99) == 1.0
    assert budget.allowed(13.0) == 0.0  # bucket 3 left the window too
    assert budget.allowed(1e9) == 0.0  # a jump far ahead clears everything


def test_retries_expire_with_their_bucket() -> None:
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.1, window=10.0)  # floor: 1 per 10 s
    assert budget.try_acquire_retry(0.0)
    assert not budget.try_acquire_retry(9.0)
    assert budget.try_acquire_retry(10.0)


def test_clock_going_backwards_charges_the_newest_bucket() -> None:
    budget = RetryBudget(ratio=1.0, min_retries_per_second=0.0, window=10.0)
    budget.record_request(100.0)
    budget.record_request(50.0)  # backwards: counted now, never lost nor double-expired
    assert budget.statistics(100.0).requests == 2
    assert budget.statistics(109.99).requests == 2
    assert budget.statistics(110.0).requests == 0


@pytest.mark.parametrize("now", [math.nan, math.inf, -math.inf])
def test_broken_clock_readings_do_not_raise(now: float) -> None:
    budget = RetryBudget(ratio=1.0, min_retries_per_second=0.0)
    budget.record_request(now)  # before any good reading: charged to bucket 0
    budget.record_request(1.0)
    budget.record_request(now)
    assert budget.statistics(1.0).requests == 3
    assert budget.try_acquire_retry(now)
    assert budget.statistics(now).retries == 1


def test_default_clock_is_used_without_now() -> None:
    clock = FakeClock(100.0)
    budget = RetryBudget(ratio=1.0, min_retries_per_second=0.0, window=1.0, clock=clock)
    budget.record_request()
    assert budget.try_acquire_retry()
    assert not budget.try_acquire_retry()
    clock.advance(1.0)
    assert budget.statistics().requests == 0
    assert budget.allowed() == 0.0


def test_repr_and_properties() -> None:
    budget = RetryBudget(ratio=0.25, min_retries_per_second=0.5, window=4.0, name="peer")
    budget.record_request(0.0)
    assert repr(budget) == "<RetryBudget 'peer' ratio=0.25 floor=2/4s [requests=1, retries=0]>"
    assert (budget.name, budget.ratio, budget.window) == ("peer", 0.25, 4.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"ratio": -0.1}, ValueError, "ratio"),
        ({"ratio": math.nan}, ValueError, "ratio"),
        ({"ratio": math.inf}, ValueError, "ratio"),
        ({"ratio": True}, TypeError, "ratio"),
        ({"min_retries_per_second": -1}, ValueError, "min_retries_per_second"),
        ({"window": 0}, ValueError, "window"),
        ({"window": -1.0}, ValueError, "window"),
        ({"window": math.inf}, ValueError, "window"),
        ({"buckets": 0}, ValueError, "buckets"),
        ({"buckets": 1001}, ValueError, "buckets"),
        ({"buckets": 2.0}, TypeError, "buckets"),
        ({"name": ""}, ValueError, "name"),
        ({"clock": 3}, TypeError, "clock"),
    ],
)
def test_bad_config(kwargs: dict[str, Any], error: type[Exception], field: str) -> None:
    with pytest.raises(error, match=field):
        RetryBudget(**kwargs)


class BudgetMachine(RuleBasedStateMachine):
    """The bucketed budget against a model that keeps every event with its bucket index."""

    @initialize(
        ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0, 2.5]),
        rate=st.sampled_from([0.0, 0.1, 1.0, 3.0]),
        window=st.sampled_from([0.5, 1.0, 10.0]),
        buckets=st.integers(1, 12),
    )
    def setup(self, ratio: float, rate: float, window: float, buckets: int) -> None:
        self.clock = FakeClock(1000.0)
        self.budget = RetryBudget(
            ratio=ratio,
            min_retries_per_second=rate,
            window=window,
            buckets=buckets,
            clock=self.clock,
        )
        self.width = window / buckets
        self.n = buckets
        self.floor = rate * window
        self.ratio = ratio
        self.counts: dict[int, list[int]] = {}  # bucket index -> [requests, retries]
        self.head = -(10**9)

    def _index(self) -> int:
        self.head = max(self.head, math.floor(self.clock.now / self.width))
        return self.head

    def _window_counts(self) -> tuple[int, int]:
        head = self._index()
        for index in [i for i in self.counts if i <= head - self.n]:
            del self.counts[index]
        return (
            sum(c[0] for c in self.counts.values()),
            sum(c[1] for c in self.counts.values()),
        )

    def _add(self, kind: int) -> None:
        self.counts.setdefault(self._index(), [0, 0])[kind] += 1

    @rule(dt=st.one_of(st.just(0.0), st.floats(1e-6, 0.2), st.floats(0.0, 30.0)))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)

    @rule(count=st.integers(1, 20))
    def requests(self, count: int) -> None:
        for _ in range(count):
            self.budget.record_request()
            self._add(0)

    @rule(count=st.integers(1, 20))
    def retries(self, count: int) -> None:
        for _ in range(count):
            requests, retries = self._window_counts()
            expected = retries + 1 <= max(self.floor, self.ratio * requests)
            assert self.budget.try_acquire_retry() == expected
            if expected:
                self._add(1)

    @invariant()
    def matches_the_model(self) -> None:
        if not hasattr(self, "budget"):
            return
        requests, retries = self._window_counts()
        stats = self.budget.statistics()
        assert (stats.requests, stats.retries) == (requests, retries)


TestBudgetMachine = BudgetMachine.TestCase
TestBudgetMachine.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
