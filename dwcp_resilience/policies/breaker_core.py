"""The circuit breaker's pure state core: plain ``def``s that take ``now`` and decide, never await.

:class:`BreakerCore` holds the whole state machine; the async shell
(:class:`~dwcp_resilience.CircuitBreaker`) reads the clock, runs the callee and reports outcomes back.
Nothing here reads a clock, logs, or awaits, so one transition always happens between two awaits of
the shell, atomically, without a lock; the property tests drive this class directly.

Vocabulary:

- **epoch**: a generation number, bumped by every state change and by ``reset()``/``disable()``. An
  admission returns the epoch as its *ticket*; a result reported with an older ticket is *stale* and
  changes nothing but the ``stale`` counter (gobreaker's generations; the Go package's stale-success
  bug).
- **trip rules** (CLOSED -> OPEN, evaluated only when a failure or a slow call is recorded):
  ``max_failures`` consecutive failures; over a sliding window (:class:`CountWindow` or
  :class:`TimeWindow`) with at least ``minimum_calls`` calls, a failure rate >= the threshold, or a
  slow-call rate >= its threshold.
- **half-open**: at most ``half_open_max_calls`` probes in flight at once; ``half_open_successes``
  successes close; any failure (or slow probe) reopens; a neutral or cancelled probe frees its slot.
  When every slot has been taken for ``half_open_max_wait`` seconds the next look at the breaker
  reopens it, so a stuck probe cannot wedge it.
- **open period**: ``open_duration(n)`` seconds for the n-th opening in a row (1 after a trip from
  CLOSED, then 2, 3, ... while probes keep failing), default ``reset_timeout``; OPEN -> HALF_OPEN is
  lazy, done by the first admission (or state read) at ``now >= open_until``.

The sliding windows (:class:`CountWindow`, :class:`TimeWindow` and their running totals) and
:class:`LatencyHistogram` live in :mod:`.breaker_windows` and are re-exported here.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.validate import check_int, check_number
from .breaker_windows import (
    DEFAULT_BUCKETS,
    CountRing,
    CountWindow,
    LatencyHistogram,
    TimeRing,
    TimeWindow,
)

__all__ = (
    "BreakerConfig",
    "BreakerCore",
    "BreakerState",
    "CountWindow",
    "DEFAULT_BUCKETS",
    "LatencyHistogram",
    "REJECTED",
    "ROUTE_GENERAL",
    "ROUTE_OPEN",
    "TimeWindow",
)

_INF = math.inf

REJECTED = -1
"""What :meth:`BreakerCore.try_acquire` returns instead of a ticket when it refuses a call."""

ROUTE_GENERAL = -1
"""``BreakerCore.route``: the shell takes its general path (admission through the core)."""
ROUTE_OPEN = -2
"""``BreakerCore.route``: OPEN; the shell rejects inline while ``now < reject_until``."""

CLOCK_SLACK = 1e-6
"""The open period counts as over from ``open_until - CLOCK_SLACK`` (1 us), while ``retry_after``
still reports the full ``open_until - now``. A caller that sleeps exactly ``retry_after`` on the
loop's timer can wake a few ULP short of ``open_until`` (``now + retry_after`` is rounded): on uvloop
106 of 300 such calls were rejected with ``retry_after`` ~9e-13 s before this slack."""


class BreakerState(enum.IntEnum):
    """The breaker's states; the values are the Go package's gauge values."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

    def __str__(self) -> str:
        return ("closed", "half-open", "open")[self.value]


CLOSED, HALF_OPEN, OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN


def _check_rate(value: object, field_name: str) -> float:
    return check_number(value, field_name, min_value=0, allow_zero=False, max_value=1.0)


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """The validated settings of one breaker (see :class:`~dwcp_resilience.CircuitBreaker`).

    Raises:
        TypeError: a field has the wrong type (``True`` is not an int).
        ValueError: a field is out of range, NaN, or a combination that can never trip.
    """

    max_failures: int | None = 5
    reset_timeout: float = 60.0
    half_open_max_calls: int = 1
    half_open_successes: int = 3
    window: CountWindow | TimeWindow | None = None
    failure_rate_threshold: float | None = None
    minimum_calls: int | None = None
    slow_call_duration: float | None = None
    slow_call_rate_threshold: float | None = None
    half_open_max_wait: float | None = None
    open_duration: Callable[[int], float] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        window = self.window
        if window is not None and not isinstance(window, CountWindow | TimeWindow):
            raise TypeError("window must be a CountWindow, a TimeWindow or None")
        if self.max_failures is not None:
            check_int(self.max_failures, "max_failures", min_value=1)
        elif window is None:
            raise ValueError("max_failures=None needs a window (else the breaker never trips)")
        timeout = check_number(self.reset_timeout, "reset_timeout", min_value=0, allow_zero=False)
        put("reset_timeout", timeout)
        check_int(self.half_open_max_calls, "half_open_max_calls", min_value=1)
        check_int(self.half_open_successes, "half_open_successes", min_value=1)
        if window is None:
            for name in ("failure_rate_threshold", "minimum_calls", "slow_call_duration"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} needs a window (CountWindow or TimeWindow)")
        else:
            rate = 0.5 if self.failure_rate_threshold is None else self.failure_rate_threshold
            put("failure_rate_threshold", _check_rate(rate, "failure_rate_threshold"))
            default_minimum = window.size if isinstance(window, CountWindow) else 20
            minimum = default_minimum if self.minimum_calls is None else self.minimum_calls
            check_int(minimum, "minimum_calls", min_value=1)
            if isinstance(window, CountWindow) and minimum > window.size:
                raise ValueError("minimum_calls must be <= the CountWindow size (else never trips)")
            put("minimum_calls", minimum)
        if self.slow_call_duration is not None:
            slow = check_number(
                self.slow_call_duration, "slow_call_duration", min_value=0, allow_zero=False
            )
            put("slow_call_duration", slow)
            rate = 1.0 if self.slow_call_rate_threshold is None else self.slow_call_rate_threshold
            put("slow_call_rate_threshold", _check_rate(rate, "slow_call_rate_threshold"))
        elif self.slow_call_rate_threshold is not None:
            raise ValueError("slow_call_rate_threshold needs slow_call_duration")
        wait = timeout if self.half_open_max_wait is None else self.half_open_max_wait
        wait = check_number(
            wait, "half_open_max_wait", min_value=0, allow_zero=False, allow_inf=True
        )
        put("half_open_max_wait", wait)
        if self.open_duration is not None and not callable(self.open_duration):
            raise TypeError("open_duration must be a callable: openings in a row -> seconds")

    @property
    def fast(self) -> bool:
        """True when a CLOSED success needs no clock and no window: consecutive counting only."""
        return self.window is None and self.slow_call_duration is None


Transition = Callable[[BreakerState, BreakerState, float, str, bool], None]
"""``(old, new, now, reason, manual)``, called by the core after each state change."""


class BreakerCore:
    """The breaker's state machine (see the module docstring). Not thread-safe; never awaits.

    The attributes are read directly by the async shell's fast paths; change them only through the
    methods. ``route`` tells the shell which path a call takes with one attribute read: the epoch
    (>= 0) while CLOSED in consecutive mode, :data:`ROUTE_OPEN` while OPEN (not isolated: reject
    inline while ``now < reject_until``), :data:`ROUTE_GENERAL` otherwise. On the fast CLOSED path
    the shell admits without :meth:`try_acquire` and reports a success with
    :meth:`on_fast_success`; any other outcome it reports through :meth:`admit_late` and the
    ``on_*`` methods, so that
    ``admitted == successes + failures + ignored + stale + inflight`` always holds for the calls the
    core has seen.
    """

    __slots__ = (
        "_fail_rate", "_max_wait", "_min_calls", "_slow_after", "_slow_rate", "admitted", "cfg",
        "consecutive", "disabled", "epoch", "failures", "fast", "fast_successes", "ignored",
        "isolated", "last_probe_at", "on_transition", "open_duration_error", "open_until",
        "opened_at", "opens", "probe_successes", "probes", "reject_until", "rejected", "route",
        "slow_calls", "stale", "state", "state_changes", "successes", "window",
    )  # fmt: skip

    def __init__(
        self, cfg: BreakerConfig, on_transition: Transition | None = None, *, fast: bool = True
    ) -> None:
        self.cfg = cfg
        self.fast = fast and cfg.fast
        self.on_transition = on_transition
        # The validated config never leaves these None; keep them typed for the hot checks.
        self._max_wait = _INF if cfg.half_open_max_wait is None else cfg.half_open_max_wait
        self._min_calls = cfg.minimum_calls or 0
        self._fail_rate = cfg.failure_rate_threshold or 0.0
        self._slow_rate = cfg.slow_call_rate_threshold
        self._slow_after = _INF if cfg.slow_call_duration is None else cfg.slow_call_duration
        window = cfg.window
        self.window: CountRing | TimeRing | None = (
            None if window is None
            else CountRing(window.size) if isinstance(window, CountWindow)
            else TimeRing(window.seconds, window.buckets)
        )  # fmt: skip
        self.state = CLOSED
        self.epoch = 0
        self.route = 0 if self.fast else ROUTE_GENERAL
        self.consecutive = 0
        self.opened_at = -_INF
        self.open_until = -_INF  # OPEN ends here (inf while isolated)
        self.reject_until = -_INF  # the shell's inline rejection bound: open_until unless isolated
        self.isolated = self.disabled = False
        self.opens = 0  # openings in a row since the last CLOSED
        self.probes = self.probe_successes = 0
        self.last_probe_at = -_INF
        self.admitted = self.successes = self.failures = self.ignored = 0
        self.fast_successes = 0  # successes the shell counted inline (never admitted here)
        self.rejected = self.slow_calls = self.stale = 0
        self.open_duration_error: BaseException | None = None
        self.state_changes: dict[tuple[BreakerState, BreakerState], int] = {}

    # -- state changes ---------------------------------------------------------------------------

    def _enter(self, new: BreakerState, now: float, reason: str, manual: bool = False) -> None:
        old = self.state
        self.state = new
        self.epoch += 1
        self.route = self.epoch if new is CLOSED and self.fast else ROUTE_GENERAL
        self.probes = self.probe_successes = 0
        if new is CLOSED:
            self.consecutive = 0
            self.opens = 0
            self.isolated = False
            self.reject_until = self.open_until = -_INF
            if self.window is not None:
                self.window.clear()
        elif new is OPEN:
            self.opened_at = now
            if manual:
                self.isolated = True
                self.open_until = _INF
                self.reject_until = -_INF  # the shell's slow path rejects with retry_after=None
            else:
                self.opens += 1
                self.open_until = now + self._open_duration(self.opens)
                self.reject_until = self.open_until - CLOCK_SLACK
                self.route = ROUTE_OPEN
        else:
            self.reject_until = -_INF
        if old is not new:
            key = (old, new)
            self.state_changes[key] = self.state_changes.get(key, 0) + 1
            if self.on_transition is not None:
                self.on_transition(old, new, now, reason, manual)

    def _open_duration(self, opens: int) -> float:
        generator = self.cfg.open_duration
        if generator is None:
            return self.cfg.reset_timeout
        try:
            seconds = generator(opens)
        except Exception as exc:  # the shell logs it; the breaker falls back to reset_timeout
            self.open_duration_error = exc
            return self.cfg.reset_timeout
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 <= seconds < _INF
        ):
            self.open_duration_error = ValueError(f"open_duration({opens}) returned {seconds!r}")
            return self.cfg.reset_timeout
        return float(seconds)

    def poll(self, now: float) -> BreakerState:
        """Apply the lazy transitions due at ``now`` and return the state a call would see."""
        state = self.state
        if state is OPEN:
            if now >= self.open_until - CLOCK_SLACK:
                self._enter(HALF_OPEN, now, "reset_timeout")
        elif (
            state is HALF_OPEN
            and self.probes >= self.cfg.half_open_max_calls
            and now >= self.last_probe_at + self._max_wait
        ):
            self._enter(OPEN, now, "half_open_max_wait")
        return self.state

    def reset(self, now: float) -> None:
        """Manual: CLOSED, counts cleared, isolation and disabled mode ended, a new epoch."""
        self.disabled = False
        self._enter(CLOSED, now, "reset", manual=True)

    def force_open(self, now: float) -> None:
        """Manual: OPEN until :meth:`reset` (isolate); calls are rejected with no retry_after."""
        self.disabled = False
        self._enter(OPEN, now, "force_open", manual=True)

    def trip(self, now: float, reason: str) -> None:
        """Open as a trip would (not manual): the open period runs, then half-open probes decide.

        From OPEN this restarts the open period; from HALF_OPEN it ends the probing. ``disable()``
        mode is left, as after ``reset()``.
        """
        self.disabled = False
        self._enter(OPEN, now, reason)

    def end_open_period(self, now: float, reason: str) -> bool:
        """End a running open period now: HALF_OPEN, so the next calls are probes that decide.

        Only from OPEN by a trip (an isolation by ``force_open`` stays); ``False`` otherwise. The
        consecutive-openings count is kept, so a probe that fails opens for the next, longer,
        ``open_duration``.
        """
        if self.state is not OPEN or self.isolated:
            return False
        self._enter(HALF_OPEN, now, reason)
        return True

    def disable(self, now: float) -> None:
        """Manual: CLOSED and admitting every call; outcomes are counted but never trip it."""
        self.disabled = True
        self._enter(CLOSED, now, "disable", manual=True)

    # -- calls -----------------------------------------------------------------------------------

    def try_acquire(self, now: float) -> int:
        """Admit a call: return its ticket (the epoch), or :data:`REJECTED` (counted)."""
        state = self.poll(now)
        if state is CLOSED:
            self.admitted += 1
            return self.epoch
        if state is HALF_OPEN and self.probes < self.cfg.half_open_max_calls:
            self.probes += 1
            self.last_probe_at = now
            self.admitted += 1
            return self.epoch
        self.rejected += 1
        return REJECTED

    def admit_late(self) -> None:
        """Count a fast-path call as admitted, just before its non-success outcome is recorded."""
        self.admitted += 1

    def on_fast_success(self, epoch: int) -> None:
        """A call admitted on the fast CLOSED route of ``epoch`` succeeded: the one place that
        records it. Still that route: a success that breaks the run of failures. The route
        changed meanwhile: a stale outcome, counted and otherwise ignored."""
        if self.route == epoch:
            self.fast_successes += 1
            self.consecutive = 0
        else:
            self.admitted += 1
            self.stale += 1

    def retry_after(self, now: float) -> float | None:
        """Seconds until a call may be admitted again, when known (``None``: unknown)."""
        state = self.state
        if state is OPEN:
            return None if self.isolated else max(0.0, self.open_until - now)
        if state is HALF_OPEN and self.probes >= self.cfg.half_open_max_calls:
            wait = self._max_wait
            return None if wait == _INF else max(0.0, self.last_probe_at + wait - now)
        return 0.0

    def free_probe_slots(self) -> int:
        """Probe slots left in HALF_OPEN (0 in the other states)."""
        return self.cfg.half_open_max_calls - self.probes if self.state is HALF_OPEN else 0

    def on_success(self, ticket: int, now: float | None, duration: float | None = None) -> None:
        """Record a success of the call admitted with ``ticket``, ``duration`` seconds long.

        ``now`` may be ``None`` only when no clock is needed: CLOSED, no time window, not slow.
        """
        if ticket != self.epoch:
            self.stale += 1
            return
        self.successes += 1
        slow = duration is not None and self._slow_after <= duration
        self.slow_calls += slow
        if self.disabled:
            return
        if self.state is HALF_OPEN:
            assert now is not None, "a half-open success needs the time"
            self.probes -= 1
            if slow:
                self._enter(OPEN, now, "slow_probe")
                return
            self.probe_successes += 1
            if self.probe_successes >= self.cfg.half_open_successes:
                self._enter(CLOSED, now, "probes_succeeded")
            return
        self.consecutive = 0
        window = self.window
        if window is not None:
            if now is None:  # the shell passes None only for a count window and a fast call
                window.record(0.0, False, False)
            else:
                window.record(now, False, slow)
                if slow:
                    self._check_window(window, now)

    def on_failure(self, ticket: int, now: float, duration: float | None = None) -> None:
        """Record a failure of the call admitted with ``ticket``."""
        if ticket != self.epoch:
            self.stale += 1
            return
        self.failures += 1
        slow = duration is not None and self._slow_after <= duration
        self.slow_calls += slow
        if self.disabled:
            return
        if self.state is HALF_OPEN:
            self.probes -= 1
            self._enter(OPEN, now, "probe_failed")
            return
        self.consecutive += 1
        limit = self.cfg.max_failures
        if limit is not None and self.consecutive >= limit:
            self._enter(OPEN, now, "consecutive_failures")
            return
        window = self.window
        if window is not None:
            window.record(now, True, slow)
            self._check_window(window, now)

    def on_neutral(self, ticket: int) -> None:
        """Record a call that neither succeeded nor failed (cancelled, ignored): frees its slot."""
        if ticket != self.epoch:
            self.stale += 1
            return
        self.ignored += 1
        if self.state is HALF_OPEN:
            self.probes -= 1

    def _check_window(self, window: CountRing | TimeRing, now: float) -> None:
        calls, failures, slow = window.totals(now)
        if calls < self._min_calls:
            return
        if failures / calls >= self._fail_rate:
            self._enter(OPEN, now, "failure_rate")
        elif self._slow_rate is not None and slow / calls >= self._slow_rate:
            self._enter(OPEN, now, "slow_call_rate")

    def window_totals(self, now: float) -> tuple[int, int, int]:
        """``(calls, failures, slow calls)`` in the sliding window at ``now`` (zeros without one)."""
        return (0, 0, 0) if self.window is None else self.window.totals(now)

    @property
    def inflight(self) -> int:
        """Admitted calls of any epoch whose result has not been recorded yet."""
        return self.admitted - self.successes - self.failures - self.ignored - self.stale
