"""The breaker's sliding windows and its latency histogram: plain counters, no clock, no await.

:class:`CountWindow` and :class:`TimeWindow` are the settings a
:class:`~dwcp_resilience.CircuitBreaker` takes; :class:`CountRing` and :class:`TimeRing` are the
running totals :class:`~dwcp_resilience.policies.breaker_core.BreakerCore` keeps for them, and
:class:`LatencyHistogram` holds the call durations of the breaker's statistics.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

from ..core.validate import check_int, check_number

__all__ = (
    "CountRing",
    "CountWindow",
    "DEFAULT_BUCKETS",
    "LatencyHistogram",
    "TimeRing",
    "TimeWindow",
)

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Prometheus' ``DefBuckets``, the Go breaker's request-duration histogram buckets (seconds)."""


@dataclass(frozen=True, slots=True)
class CountWindow:
    """A sliding window over the last ``size`` recorded calls."""

    size: int

    def __post_init__(self) -> None:
        check_int(self.size, "CountWindow.size", min_value=1, max_value=1_000_000)


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """A sliding window over the last ``seconds``, kept as ``buckets`` equal rolling buckets."""

    seconds: float
    buckets: int = 10

    def __post_init__(self) -> None:
        check_number(self.seconds, "TimeWindow.seconds", min_value=0, allow_zero=False)
        check_int(self.buckets, "TimeWindow.buckets", min_value=1, max_value=10_000)


class CountRing:
    """The last ``size`` outcomes as codes (bit 0: failure, bit 1: slow), with running totals."""

    __slots__ = ("calls", "codes", "failures", "head", "size", "slow")

    def __init__(self, size: int) -> None:
        self.size = size
        self.codes: list[int] = []
        self.head = 0
        self.calls = self.failures = self.slow = 0

    def clear(self) -> None:
        self.codes = []
        self.head = 0
        self.calls = self.failures = self.slow = 0

    def record(self, now: float, failed: bool, slow: bool) -> None:
        code = failed | (slow << 1)
        codes = self.codes
        if len(codes) < self.size:
            codes.append(code)
            self.calls += 1
        else:
            old = codes[self.head]
            self.failures -= old & 1
            self.slow -= old >> 1
            codes[self.head] = code
            self.head = (self.head + 1) % self.size
        self.failures += failed
        self.slow += slow

    def totals(self, now: float) -> tuple[int, int, int]:
        return self.calls, self.failures, self.slow


class TimeRing:
    """``buckets`` rolling buckets of ``seconds / buckets`` each; a bucket expires as a whole."""

    __slots__ = ("calls", "counts", "failures", "last", "n", "slow", "width")

    def __init__(self, seconds: float, buckets: int) -> None:
        self.n = buckets
        self.width = seconds / buckets
        self.counts = [[0, 0, 0] for _ in range(buckets)]  # calls, failures, slow
        self.last = -(2**62)  # index (now // width) of the newest bucket
        self.calls = self.failures = self.slow = 0

    def clear(self) -> None:
        for bucket in self.counts:
            bucket[0] = bucket[1] = bucket[2] = 0
        self.calls = self.failures = self.slow = 0
        self.last = -(2**62)  # forget the newest reading too: a new loop's clock may start lower

    def _advance(self, now: float) -> int:
        index = int(now // self.width)
        last = self.last
        if index > last:
            # Empty every bucket that slid out: at most n of them, however long we were idle.
            for k in range(max(last + 1, index - self.n + 1), index + 1):
                bucket = self.counts[k % self.n]
                self.calls -= bucket[0]
                self.failures -= bucket[1]
                self.slow -= bucket[2]
                bucket[0] = bucket[1] = bucket[2] = 0
            self.last = index
        return self.last  # a clock that steps back records into the newest bucket

    def record(self, now: float, failed: bool, slow: bool) -> None:
        bucket = self.counts[self._advance(now) % self.n]
        bucket[0] += 1
        bucket[1] += failed
        bucket[2] += slow
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def totals(self, now: float) -> tuple[int, int, int]:
        self._advance(now)
        return self.calls, self.failures, self.slow


class LatencyHistogram:
    """Bucket counts of call durations, Prometheus-style (``le`` upper bounds, plus ``+Inf``).

    Observations that are negative or NaN (a clock that stepped back) are dropped.
    """

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        if seconds >= 0.0:  # False for NaN
            self.counts[bisect_left(self.bounds, seconds)] += 1
            self.count += 1
            self.sum += seconds

    def cumulative(self) -> tuple[int, ...]:
        """Counts per bucket bound, cumulative (the last one is ``+Inf``, equal to ``count``)."""
        total, out = 0, []
        for n in self.counts:
            total += n
            out.append(total)
        return tuple(out)
