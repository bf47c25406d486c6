"""``RetryBudget``: retries may be at most a fraction of recent requests, so they cannot multiply an
outage.

One budget is meant to be shared: pass the same instance to every :class:`~dwcp_resilience.Retry`
that calls one dependency, and together they retry at most ``ratio`` times the requests they made in
the last ``window`` seconds, or ``min_retries_per_second * window`` retries, whichever is larger (the
floor lets a quiet service still retry). This is Finagle's and Envoy's retry budget, and failsafe-go's
``budget`` (which counts concurrent executions instead of a time window).

Time is cut into ``buckets`` buckets of ``window / buckets`` seconds on the loop clock; the window is
the current bucket plus the ``buckets - 1`` before it. Each bucket holds a request count and a retry
count; totals are kept incrementally, so every operation is O(1) amortised with no allocation. Under a
100 % failure load the amplification (attempts / requests) therefore stays at most ``1 + ratio`` once
the floor is exceeded.

A retry is charged when it is *scheduled* (before its backoff sleep), so retries that are waiting in
backoff count against the budget (Envoy #30205 counted only running retries).

The pure core is :meth:`record_request` and :meth:`try_acquire_retry` with an explicit ``now``;
without it they read the budget's clock (the running loop's by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.clock import Clock, loop_time
from ..core.validate import check_int, check_name, check_number

__all__ = ("RetryBudget", "RetryBudgetStatistics")


@dataclass(frozen=True, slots=True)
class RetryBudgetStatistics:
    """A snapshot of a :class:`RetryBudget`.

    :ivar name: the budget's name.
    :ivar requests: requests recorded in the current window.
    :ivar retries: retries granted in the current window.
    :ivar allowed: retries the window allows in total (``max(floor, ratio * requests)``).
    :ivar total_requests: requests recorded since creation.
    :ivar total_retries: retries granted since creation.
    :ivar total_rejected: retries refused since creation.
    """

    name: str
    requests: int
    retries: int
    allowed: float
    total_requests: int
    total_retries: int
    total_rejected: int

    @property
    def remaining(self) -> float:
        """Retries still allowed in the current window."""
        return max(0.0, self.allowed - self.retries)


class RetryBudget:
    """Cap retries at ``ratio`` of the requests of the last ``window`` seconds, with a floor.

    Args:
        ratio: retries allowed per request (finite, >= 0; 0.2 = 20 %).
        min_retries_per_second: the floor, as a rate: at least this many retries per second of
            window are allowed whatever the traffic (finite, >= 0).
        window: the window length in seconds (finite, > 0).
        buckets: how many buckets the window is cut into (1 to 1000).
        name: the name shown in statistics.
        clock: the clock (default: the running loop's).

    Raises:
        ValueError: NaN, negative or infinite numbers, ``window <= 0``, ``buckets`` out of range.
        TypeError: a value of the wrong type (``True`` passed as a number included).
    """

    __slots__ = (
        "_clock",
        "_floor",
        "_head",
        "_n",
        "_name",
        "_ratio",
        "_req_total",
        "_requests",
        "_ret_total",
        "_retries",
        "_total_rejected",
        "_total_requests",
        "_total_retries",
        "_width",
        "_window",
    )

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_retries_per_second: float = 1.0,
        window: float = 10.0,
        buckets: int = 10,
        name: str = "retry_budget",
        clock: Clock | None = None,
    ) -> None:
        self._ratio = check_number(ratio, "ratio", min_value=0.0)
        rate = check_number(min_retries_per_second, "min_retries_per_second", min_value=0.0)
        self._window = check_number(window, "window", min_value=0.0, allow_zero=False)
        self._n = check_int(buckets, "buckets", min_value=1, max_value=1000)
        self._name = check_name(name)
        if clock is not None and not callable(clock):
            raise TypeError("clock must be a zero-argument callable returning seconds")
        self._clock: Clock = loop_time if clock is None else clock
        self._floor = rate * self._window
        self._width = self._window / self._n
        self._requests = [0] * self._n
        self._retries = [0] * self._n
        self._req_total = 0
        self._ret_total = 0
        self._head: int | None = None  # absolute index of the newest bucket
        self._total_requests = 0
        self._total_retries = 0
        self._total_rejected = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def ratio(self) -> float:
        return self._ratio

    @property
    def floor(self) -> float:
        """Retries always allowed per window (``min_retries_per_second * window``)."""
        return self._floor

    @property
    def window(self) -> float:
        return self._window

    def _advance(self, now: float) -> int:
        """Move the window to ``now``; return the slot of the current bucket."""
        head = self._head
        if not math.isfinite(now):  # a broken reading charges the newest bucket
            if head is None:
                self._head = head = 0
            return head % self._n
        index = math.floor(now / self._width)
        n = self._n
        if head is None or index - head >= n:
            if head is not None:
                requests, retries = self._requests, self._retries
                for slot in range(n):
                    requests[slot] = 0
                    retries[slot] = 0
                self._req_total = 0
                self._ret_total = 0
            self._head = head = index
        elif index > head:
            requests, retries = self._requests, self._retries
            for step in range(head + 1, index + 1):
                slot = step % n
                self._req_total -= requests[slot]
                self._ret_total -= retries[slot]
                requests[slot] = 0
                retries[slot] = 0
            self._head = head = index
        # A clock that went backwards charges the newest bucket: counts are never lost.
        return head % n

    def record_request(self, now: float | None = None) -> None:
        """Count one request (a first attempt) at ``now``."""
        slot = self._advance(self._clock() if now is None else now)
        self._requests[slot] += 1
        self._req_total += 1
        self._total_requests += 1

    def allowed(self, now: float | None = None) -> float:
        """Retries the current window allows in total."""
        self._advance(self._clock() if now is None else now)
        return max(self._floor, self._ratio * self._req_total)

    def try_acquire_retry(self, now: float | None = None) -> bool:
        """Charge one retry if the window has room for it; return whether it did."""
        slot = self._advance(self._clock() if now is None else now)
        if self._ret_total + 1 > max(self._floor, self._ratio * self._req_total):
            self._total_rejected += 1
            return False
        self._retries[slot] += 1
        self._ret_total += 1
        self._total_retries += 1
        return True

    def statistics(self, now: float | None = None) -> RetryBudgetStatistics:
        """A snapshot of the window at ``now`` (default: the clock) and of the lifetime totals."""
        self._advance(self._clock() if now is None else now)
        return RetryBudgetStatistics(
            name=self._name,
            requests=self._req_total,
            retries=self._ret_total,
            allowed=max(self._floor, self._ratio * self._req_total),
            total_requests=self._total_requests,
            total_retries=self._total_retries,
            total_rejected=self._total_rejected,
        )

    def __repr__(self) -> str:
        return (
            f"<RetryBudget {self._name!r} ratio={self._ratio:g} floor={self._floor:g}/"
            f"{self._window:g}s [requests={self._req_total}, retries={self._ret_total}]>"
        )
