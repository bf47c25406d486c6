"""AdaptiveRateLimiter: the Go adjustment rule, on a sorted sliding window."""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dwcp_resilience.core.errors import RateLimited
from dwcp_resilience.policies.adaptive import AdaptiveRateLimiter
from dwcp_resilience.testing import FakeClock

pytestmark = pytest.mark.anyio


def make(**overrides: Any) -> AdaptiveRateLimiter:
    options: dict[str, Any] = {
        "initial_rate": 1000.0,
        "min_rate": 100.0,
        "max_rate": 10_000.0,
        "target_latency": 0.1,
        "window_size": 100,
        "clock": FakeClock(),
    }
    options.update(overrides)
    return AdaptiveRateLimiter("adaptive", **options)


class GoReference:
    """The Go algorithm, transcribed literally (bubble sort and all)."""

    def __init__(self, rate: float, lo: float, hi: float, target: float, window: int) -> None:
        self.rate, self.lo, self.hi, self.target, self.window = rate, lo, hi, target, window
        self.samples: list[float] = []

    def record(self, latency: float) -> None:
        self.samples.append(latency)
        if len(self.samples) > self.window:
            self.samples = self.samples[1:]
        if len(self.samples) < self.window // 2:
            return
        ordered = list(self.samples)
        for i in range(len(ordered)):  # the Go bubble sort
            for j in range(len(ordered) - 1 - i):
                if ordered[j] > ordered[j + 1]:
                    ordered[j], ordered[j + 1] = ordered[j + 1], ordered[j]
        p95 = ordered[len(ordered) * 95 // 100]
        mean = sum(ordered) / len(ordered)
        if p95 > 1.2 * self.target:
            new = self.rate * 0.9
        elif p95 < 0.8 * self.target and mean < self.target:
            new = self.rate * 1.05
        else:
            return
        self.rate = min(self.hi, max(self.lo, new))


@settings(max_examples=60, deadline=None)
@given(
    latencies=st.lists(st.floats(0.0, 0.5), min_size=1, max_size=300),
    window=st.integers(2, 40),
)
def test_matches_the_go_rule(latencies: list[float], window: int) -> None:
    limiter = make(window_size=window)
    reference = GoReference(1000.0, 100.0, 10_000.0, 0.1, window)
    for latency in latencies:
        limiter.record_latency(latency)
        reference.record(latency)
        assert limiter.rate == pytest.approx(reference.rate, rel=1e-9)
        assert limiter.burst == max(1, int(limiter.rate))
        assert 100.0 <= limiter.rate <= 10_000.0


def test_waits_for_half_a_window() -> None:
    limiter = make(window_size=10)
    for _ in range(4):
        limiter.record_latency(1.0)
    assert limiter.rate == 1000.0 and limiter.adjustments == 0
    limiter.record_latency(1.0)
    assert limiter.rate == pytest.approx(900.0) and limiter.burst == 900


def test_decrease_increase_and_clamps() -> None:
    limiter = make(window_size=4, initial_rate=110.0)
    for _ in range(50):
        limiter.record_latency(0.5)  # p95 far above 1.2 * target
    assert limiter.rate == 100.0  # clamped at min
    adjustments = limiter.adjustments
    for _ in range(4):
        limiter.record_latency(0.01)  # the window slides back to fast samples
    for _ in range(200):
        limiter.record_latency(0.01)
    assert limiter.rate == 10_000.0  # clamped at max
    assert limiter.adjustments > adjustments
    stats = limiter.statistics()
    assert stats.average_latency == pytest.approx(0.01)
    assert stats.p95_latency == pytest.approx(0.01)
    assert stats.samples == 4 and stats.rate == 10_000.0


def test_in_band_latency_changes_nothing() -> None:
    limiter = make(window_size=10)
    for _ in range(30):
        limiter.record_latency(0.1)  # 0.8 * target <= p95 <= 1.2 * target
    assert limiter.rate == 1000.0 and limiter.adjustments == 0


def test_bad_samples_are_dropped_or_clamped() -> None:
    limiter = make(window_size=2)
    limiter.record_latency(math.nan)
    limiter.record_latency(math.inf)
    assert limiter.statistics().samples == 0
    limiter.record_latency(-0.3)  # a clock step back counts as 0
    assert limiter.statistics().p95_latency == 0.0
    assert limiter.rate == pytest.approx(1050.0)


def test_window_is_bounded_and_sorted() -> None:
    limiter = make(window_size=5)
    for value in [0.5, 0.1, 0.3, 0.2, 0.4, 0.05, 0.6]:
        limiter.record_latency(value)
    assert limiter._sorted == sorted([0.3, 0.2, 0.4, 0.05, 0.6])


@pytest.mark.virtual_time
async def test_call_records_latency_and_rate_paces(backend_name: str) -> None:
    limiter = AdaptiveRateLimiter(
        "a", initial_rate=10, min_rate=1, max_rate=20, target_latency=0.05, window_size=4
    )

    async def slow() -> str:
        await anyio.sleep(0.2)
        return "ok"

    for _ in range(2):
        assert await limiter.call(slow) == "ok"
    stats = limiter.statistics()
    assert stats.samples == 2
    assert stats.average_latency == pytest.approx(0.2, abs=1e-3)
    assert limiter.rate == pytest.approx(9.0)  # one decrease after window/2 samples

    async def failing() -> None:
        await anyio.sleep(0.01)
        raise ValueError

    with pytest.raises(ValueError):
        await limiter.call(failing)
    assert limiter.statistics().samples == 3  # failures are timed too


async def test_rate_drop_keeps_waiters_and_fails_oversize(backend_name: str) -> None:
    limiter = AdaptiveRateLimiter(
        "a",
        initial_rate=5,
        min_rate=1,
        max_rate=5,
        target_latency=0.1,
        window_size=2,
        max_wait=0,
    )
    assert limiter.try_acquire(5)
    for _ in range(30):
        limiter.record_latency(1.0)
    assert limiter.rate == 1.0 and limiter.burst == 1
    with pytest.raises(RateLimited):
        await limiter.acquire()  # max_wait=0 and no token
    with pytest.raises(ValueError):
        await limiter.acquire(2)  # larger than the new burst


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"min_rate": 0}, ValueError),
        ({"min_rate": math.nan}, ValueError),
        ({"max_rate": 50.0}, ValueError),  # below min
        ({"initial_rate": 50.0}, ValueError),  # below min
        ({"initial_rate": 20_000.0}, ValueError),  # above max
        ({"target_latency": 0}, ValueError),
        ({"target_latency": math.inf}, ValueError),
        ({"window_size": 1}, ValueError),
        ({"window_size": True}, TypeError),
        ({"max_rate": math.inf}, ValueError),
    ],
)
def test_bad_config(overrides: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        make(**overrides)


def test_repr() -> None:
    assert "target=0.1s" in repr(make())
