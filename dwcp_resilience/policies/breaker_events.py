"""The circuit breaker's events and statistics snapshot: frozen dataclasses, no behaviour.

:class:`BreakerStateChanged` and :class:`BreakerRejected` are what a
:class:`~dwcp_resilience.CircuitBreaker` sends its listeners; :class:`BreakerStatistics` is what its
:meth:`~dwcp_resilience.CircuitBreaker.statistics` returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..core.events import Event
from .breaker_core import BreakerState

__all__ = (
    "BreakerRejected",
    "BreakerStateChanged",
    "BreakerStatistics",
)


@dataclass(frozen=True, slots=True)
class BreakerStateChanged(Event):
    """The breaker changed state (``reason`` says why; ``manual`` for reset/force_open/disable).

    Reasons: ``consecutive_failures``, ``failure_rate``, ``slow_call_rate`` (CLOSED -> OPEN);
    ``reset_timeout`` (OPEN -> HALF_OPEN); ``probe_failed``, ``slow_probe``, ``half_open_max_wait``
    (HALF_OPEN -> OPEN); ``probes_succeeded`` (HALF_OPEN -> CLOSED); ``reset``, ``force_open``,
    ``disable`` (manual); the ``reason`` given to :meth:`CircuitBreaker.trip` (``tripped`` by
    default, ``fleet_quorum`` from a :class:`~dwcp_resilience.redis.FleetBreaker`; not manual).
    """

    old: BreakerState
    new: BreakerState
    reason: str
    manual: bool


@dataclass(frozen=True, slots=True)
class BreakerRejected(Event):
    """A call was refused with :class:`CircuitOpen` (the callee did not run)."""

    state: BreakerState
    retry_after: float | None


@dataclass(frozen=True, slots=True)
class BreakerStatistics:
    """A snapshot of a breaker; every ``*_total``-like count only grows.

    :ivar name: the breaker's name.
    :ivar state: the state a call would see now (the ``circuit_breaker_state`` gauge value).
    :ivar forced_open: isolated by ``force_open()`` (OPEN until ``reset()``).
    :ivar disabled: ``disable()`` is in force (admits everything, never trips).
    :ivar epoch: the generation number (bumped by every state change, reset and disable).
    :ivar consecutive_failures: failures since the last success in CLOSED.
    :ivar window_calls: calls in the sliding window (0 without one).
    :ivar window_failures: failures in the sliding window.
    :ivar window_slow_calls: slow calls in the sliding window.
    :ivar failure_rate: ``window_failures / window_calls`` (0.0 when empty).
    :ivar slow_call_rate: ``window_slow_calls / window_calls`` (0.0 when empty).
    :ivar half_open_probes: probes in flight (HALF_OPEN only).
    :ivar half_open_successes: probe successes so far in this HALF_OPEN period.
    :ivar consecutive_opens: openings in a row since the breaker was last CLOSED (the argument of
        ``open_duration``; back to 0 when it closes).
    :ivar times_opened: openings since the breaker was made, manual ones included (every
        ``state_changes`` entry into OPEN).
    :ivar retry_after: seconds until OPEN ends (``None`` if not OPEN, or forced open).
    :ivar admitted: calls admitted.
    :ivar successes: successes recorded (``requests_total{result="success"}``).
    :ivar failures: failures recorded (``requests_total{result="failure"}`` and ``failures_total``).
    :ivar rejected: calls refused (``requests_total{result="rejected"}``).
    :ivar ignored: neutral outcomes (cancelled, ignored exceptions, inner rejections).
    :ivar stale: results of calls admitted in an earlier epoch (ignored).
    :ivar slow_calls: successes and failures that took ``slow_call_duration`` or longer.
    :ivar inflight: admitted calls whose outcome is not recorded yet (probes, and every call of
        the windowed and timed modes; CLOSED calls in consecutive mode are not tracked while they
        run, to keep that path free).
    :ivar state_changes: ``{(from, to): count}`` (``state_changes_total``).
    :ivar latency_buckets: the histogram's upper bounds in seconds (Prometheus ``DefBuckets``).
    :ivar latency_counts: cumulative counts per bound, then ``+Inf``.
    :ivar latency_sum: the sum of the recorded durations.
    :ivar latency_count: how many durations were recorded.
    """

    name: str
    state: BreakerState
    forced_open: bool
    disabled: bool
    epoch: int
    consecutive_failures: int
    window_calls: int
    window_failures: int
    window_slow_calls: int
    failure_rate: float
    slow_call_rate: float
    half_open_probes: int
    half_open_successes: int
    consecutive_opens: int
    times_opened: int
    retry_after: float | None
    admitted: int
    successes: int
    failures: int
    rejected: int
    ignored: int
    stale: int
    slow_calls: int
    inflight: int
    state_changes: Mapping[tuple[BreakerState, BreakerState], int]
    latency_buckets: tuple[float, ...]
    latency_counts: tuple[int, ...]
    latency_sum: float
    latency_count: int
