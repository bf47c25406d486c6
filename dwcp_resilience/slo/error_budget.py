"""``ErrorBudget``: an SLO over a sliding window, with multi-window burn-rate alerts.

The arithmetic keeps the Go package's formulas (``go-original.md`` section 1.6), over the window:

- ``success_rate = 1 - failed / total`` (1.0 with no requests);
- ``consumed = min(1, failed / (total * (1 - slo)))`` and ``remaining = 1 - consumed`` (the Go
  ``RemainingBudget``); with ``slo == 1.0`` any failure consumes the whole budget (Go: NaN);
- ``allowed_failures = max(0, floor(total * (1 - slo)) - failed)``;
- ``exhausted`` when ``success_rate < slo`` **and** the window holds at least ``min_requests``
  requests (Go has no minimum: the first failed request exhausted a 99.9 % budget).

What changed from Go, and why:

- The window slides: it is cut into buckets of ``bucket`` seconds (default ``min(window / 60, 60)``,
  widened to ``window / 100_000`` for windows over 69 days, so the ring stays under 2 x 100,000 ints)
  and always holds the last ``ceil(window / bucket)`` buckets (the current one partial). Go used a
  tumbling window reset lazily *after* counting the request that found it expired, so that request
  was lost and every rollover started from zero.
- ``availability`` is time-based and never negative: downtime runs from a failure that follows a
  success (or the start) to the next success, each stretch counted once (Go re-added the time since
  the last success on every failure: 50 failures in a row gave -48.99).
- Burn rates (``error rate / (1 - slo)``) over the SRE workbook's window pairs: an alert fires only
  when *both* its long and its short window burn at least at its threshold (14.4 over 1 h and 5 m,
  6 over 6 h and 30 m), and the long window holds ``min_requests`` requests.
- Listeners are called inline, in order, on the exhausted and recovered transitions.

Recording costs O(1): one clock read, two counter increments and a comparison (bucket roll-overs are
amortised O(1), see :mod:`._window`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypedDict

from ..core.clock import Clock, loop_time
from ..core.events import Event, Listeners
from ..core.validate import check_int, check_name, check_number
from ._window import BucketWindows

_MAX_DEFAULT_BUCKETS = 100_000  # the default bucket widens past this (a 1e9 s window: 16.7M)
_NAN = math.nan  # never equal to a bucket index: "not quiet"

__all__ = (
    "BurnRateAlert",
    "BurnRateStatus",
    "ErrorBudget",
    "ErrorBudgetEvent",
    "ErrorBudgetExhausted",
    "ErrorBudgetOptions",
    "ErrorBudgetRecovered",
    "ErrorBudgetStatistics",
)


@dataclass(frozen=True, slots=True)
class BurnRateAlert:
    """A multi-window burn-rate alert: fires when both windows burn at >= ``threshold``."""

    long_window: float
    short_window: float
    threshold: float
    severity: str = "page"


#: The Google SRE workbook's paging pairs (chapter "Alerting on SLOs", table 5-8).
DEFAULT_BURN_ALERTS = (
    BurnRateAlert(3600.0, 300.0, 14.4),
    BurnRateAlert(21600.0, 1800.0, 6.0),
)


@dataclass(frozen=True, slots=True)
class BurnRateStatus:
    """One alert's evaluation: the burn rate of each window and whether it fires."""

    alert: BurnRateAlert
    long_rate: float
    short_rate: float
    long_requests: int
    firing: bool


@dataclass(frozen=True, slots=True)
class ErrorBudgetEvent(Event):
    """Base of the error-budget events: the window's counts at the transition."""

    total: int
    failed: int
    success_rate: float


@dataclass(frozen=True, slots=True)
class ErrorBudgetExhausted(ErrorBudgetEvent):
    """The budget became exhausted."""


@dataclass(frozen=True, slots=True)
class ErrorBudgetRecovered(ErrorBudgetEvent):
    """The budget is no longer exhausted."""


@dataclass(frozen=True, slots=True)
class ErrorBudgetStatistics:
    """A snapshot of an :class:`ErrorBudget` (what the Prometheus collector reads).

    :ivar total: requests in the window; :ivar failed: failed requests in the window.
    :ivar remaining: budget left, 0-1; :ivar consumed: budget used, 0-1 (``1 - remaining``).
    :ivar exhausted_count: how many times the budget became exhausted (a counter).
    :ivar lifetime_total: every request ever recorded (since the last reset).
    """

    name: str
    slo: float
    window: float
    total: int
    failed: int
    success_rate: float
    remaining: float
    consumed: float
    allowed_failures: int
    exhausted: bool
    exhausted_count: int
    recovered_count: int
    availability: float
    lifetime_total: int
    lifetime_failed: int
    burn_rates: tuple[BurnRateStatus, ...]


class ErrorBudgetOptions(TypedDict, total=False):
    """The keyword options of :class:`ErrorBudget` beyond ``slo``, ``window`` and ``clock``: what
    :meth:`~dwcp_resilience.ResilienceManager.register_error_budget` passes on, typed."""

    min_requests: int
    bucket: float | None
    burn_alerts: Iterable[BurnRateAlert]
    listeners: Iterable[Callable[[ErrorBudgetEvent], None]]


class ErrorBudget:
    """Track an SLO over a sliding window and tell when its error budget is spent.

    Args:
        name: the budget's name (events, metrics).
        slo: the target success ratio, in (0, 1]; 1.0 allows no failure at all.
        window: the window length in seconds.
        min_requests: the volume below which the budget is never "exhausted" (and burn-rate alerts
            never fire); default 100.
        bucket: the bucket width in seconds (default ``min(window / 60, 60)``, at least
            ``window / 100_000``); at most ``window``.
        burn_alerts: the burn-rate alerts to evaluate (default: 1 h with 5 m at 14.4, 6 h with 30 m
            at 6); ``()`` turns burn-rate tracking off.
        clock: the monotonic clock (default: the running loop's).
        listeners: called with :class:`ErrorBudgetExhausted` / :class:`ErrorBudgetRecovered`.

    Raises:
        ValueError: if ``slo`` is not in (0, 1], a duration is not positive and finite, or
            ``min_requests`` is negative.
        TypeError: if an argument has the wrong type.
    """

    __slots__ = (
        "_allowance",
        "_burn",
        "_clock",
        "_down_since",
        "_downtime",
        "_exhausted",
        "_exhausted_count",
        "_failed",
        "_listeners",
        "_quiet",
        "_recovered_count",
        "_ring",
        "_started",
        "_total",
        "min_requests",
        "name",
        "slo",
        "window",
    )

    def __init__(
        self,
        name: str,
        *,
        slo: float,
        window: float = 3600.0,
        min_requests: int = 100,
        bucket: float | None = None,
        burn_alerts: Iterable[BurnRateAlert] = DEFAULT_BURN_ALERTS,
        clock: Clock | None = None,
        listeners: Iterable[Callable[[ErrorBudgetEvent], None]] = (),
    ) -> None:
        self.name = check_name(name)
        self.slo = check_number(slo, "slo", min_value=0.0, allow_zero=False, max_value=1.0)
        self.window = check_number(window, "window", min_value=0.0, allow_zero=False)
        self.min_requests = check_int(min_requests, "min_requests", min_value=0)
        if bucket is None:
            width = max(min(self.window / 60.0, 60.0), self.window / _MAX_DEFAULT_BUCKETS)
        else:
            width = bucket
        width = check_number(
            width, "bucket", min_value=0.0, allow_zero=False, max_value=self.window
        )
        self._burn = tuple(burn_alerts)
        spans = [math.ceil(self.window / width - 1e-9)]
        for alert in self._burn:
            if not isinstance(alert, BurnRateAlert):
                raise TypeError("burn_alerts must hold BurnRateAlert values")
            for field in ("long_window", "short_window", "threshold"):
                check_number(
                    getattr(alert, field), f"burn_alerts.{field}", allow_zero=False, min_value=0.0
                )
            spans += [
                math.ceil(alert.long_window / width - 1e-9),
                math.ceil(alert.short_window / width - 1e-9),
            ]
        self._ring = BucketWindows(width, tuple(spans))
        self._allowance = 1.0 - self.slo  # failures allowed per request
        self._clock = loop_time if clock is None else clock
        self._listeners: Listeners[ErrorBudgetEvent] = Listeners(listeners)
        self._reset_counts()

    def _reset_counts(self) -> None:
        self._quiet: float = _NAN
        self._ring.clear()
        self._total = self._failed = 0
        self._exhausted = False
        self._exhausted_count = self._recovered_count = 0
        self._started: float | None = None
        self._down_since: float | None = None
        self._downtime = 0.0

    def add_listener(self, listener: Callable[[ErrorBudgetEvent], None]) -> None:
        """Call ``listener`` (inline) on every exhausted / recovered transition."""
        self._listeners.add(listener)

    def remove_listener(self, listener: Callable[[ErrorBudgetEvent], None]) -> None:
        """Stop calling ``listener``; ``ValueError`` if it was not registered."""
        self._listeners.remove(listener)

    # --- recording (the hot path) ----------------------------------------------------------------

    def record(self, success: bool, now: float | None = None) -> None:
        """Record one request's outcome. O(1): a clock read and a few integer operations.

        Args:
            success: whether the request met the SLO.
            now: the time of the outcome on this budget's clock, when the caller has just read it
                (saves the clock read; a manager timing the call passes its end time).
        """
        if now is None:
            now = self._clock()
        ring = self._ring
        if success and now // ring.width == self._quiet:
            # Quiet (see below): the counts grow, nothing else can change.
            ring.cur_tot += 1
            self._total += 1
            return
        rolled = now // ring.width != ring.idx
        if rolled:  # a new bucket (amortised O(1)); also the very first request
            ring.advance(now)
        if self._started is None:  # not under `rolled`: a read before it may have set the bucket
            self._started = now
        ring.cur_tot += 1
        self._total += 1
        if success:
            if self._down_since is not None:
                self._downtime += now - self._down_since
                self._down_since = None
            # A success cannot exhaust the budget, except by bringing the volume up to
            # min_requests (or after old buckets left the window).
            volume = ring.sum_tot[0] + ring.cur_tot
            if not (rolled or self._exhausted) and volume != self.min_requests:
                if volume > self.min_requests:
                    # Quiet until the bucket rolls or anything else happens: not exhausted, not
                    # down, past min_requests, so a success here changes only the counts.
                    self._quiet = now // ring.width
                return
        else:
            self._quiet = _NAN
            ring.cur_bad += 1
            self._failed += 1
            if self._down_since is None:
                self._down_since = now
        total = ring.sum_tot[0] + ring.cur_tot
        failed = ring.sum_bad[0] + ring.cur_bad
        exhausted = total >= self.min_requests and total - failed < total * self.slo
        if exhausted is not self._exhausted:
            self._transition(exhausted, now, total, failed)

    def _transition(self, exhausted: bool, now: float, total: int, failed: int) -> None:
        self._quiet = _NAN
        self._exhausted = exhausted
        if exhausted:
            self._exhausted_count += 1
        else:
            self._recovered_count += 1
        if self._listeners:
            kind = ErrorBudgetExhausted if exhausted else ErrorBudgetRecovered
            rate = 1.0 - failed / total if total else 1.0
            self._listeners.emit(kind(self.name, now, total, failed, rate))

    def refresh(self) -> None:
        """Slide the window to now and fire a transition that time alone caused (old failures
        leaving the window). Every read below calls it."""
        now = self._clock()
        self._ring.advance(now)
        total, failed = self._ring.counts(0)
        exhausted = total >= self.min_requests and total - failed < total * self.slo
        if exhausted is not self._exhausted:
            self._transition(exhausted, now, total, failed)

    def reset(self) -> None:
        """Forget every request, transition count and downtime."""
        self._reset_counts()

    # --- reads -----------------------------------------------------------------------------------

    def counts(self) -> tuple[int, int]:
        """``(total, failed)`` requests in the window."""
        self.refresh()
        return self._ring.counts(0)

    @property
    def success_rate(self) -> float:
        """``1 - failed / total`` over the window; 1.0 with no requests."""
        total, failed = self.counts()
        return 1.0 - failed / total if total else 1.0

    def _consumed(self, total: int, failed: int) -> float:
        if failed == 0:
            return 0.0
        budget = total * self._allowance
        return 1.0 if budget <= 0.0 else min(1.0, failed / budget)

    @property
    def consumed(self) -> float:
        """The part of the budget spent, in [0, 1]."""
        return self._consumed(*self.counts())

    @property
    def remaining(self) -> float:
        """The part of the budget left, in [0, 1] (never NaN, also with ``slo == 1.0``)."""
        return 1.0 - self.consumed

    @property
    def allowed_failures(self) -> int:
        """How many more failures the window can take: ``floor(total * (1 - slo)) - failed``."""
        total, failed = self.counts()
        return max(0, math.floor(total * self._allowance + 1e-9) - failed)

    @property
    def exhausted(self) -> bool:
        """``success_rate < slo`` with at least ``min_requests`` requests in the window."""
        self.refresh()
        return self._exhausted

    @property
    def availability(self) -> float:
        """Time-based availability since the first request, in [0, 1]."""
        now = self._clock()
        if self._started is None or now <= self._started:
            return 1.0
        down = self._downtime
        if self._down_since is not None:
            down += now - self._down_since
        return min(1.0, max(0.0, 1.0 - down / (now - self._started)))

    def _rate(self, window: int) -> tuple[float, int]:
        total, failed = self._ring.counts(window)
        if failed == 0:
            return 0.0, total
        if self._allowance <= 0.0:
            return math.inf, total
        return failed / total / self._allowance, total

    def burn_rates(self) -> tuple[BurnRateStatus, ...]:
        """Evaluate every burn-rate alert now."""
        self.refresh()
        statuses = []
        for i, alert in enumerate(self._burn):
            long_rate, long_total = self._rate(1 + 2 * i)
            short_rate, _ = self._rate(2 + 2 * i)
            firing = (
                long_total >= self.min_requests
                and long_rate >= alert.threshold
                and short_rate >= alert.threshold
            )
            statuses.append(BurnRateStatus(alert, long_rate, short_rate, long_total, firing))
        return tuple(statuses)

    @property
    def burn_alert_firing(self) -> bool:
        """True when any burn-rate alert fires."""
        return any(status.firing for status in self.burn_rates())

    def statistics(self) -> ErrorBudgetStatistics:
        """A consistent snapshot of every number above."""
        total, failed = self.counts()
        consumed = self._consumed(total, failed)
        return ErrorBudgetStatistics(
            name=self.name,
            slo=self.slo,
            window=self.window,
            total=total,
            failed=failed,
            success_rate=1.0 - failed / total if total else 1.0,
            remaining=1.0 - consumed,
            consumed=consumed,
            allowed_failures=max(0, math.floor(total * self._allowance + 1e-9) - failed),
            exhausted=self._exhausted,
            exhausted_count=self._exhausted_count,
            recovered_count=self._recovered_count,
            availability=self.availability,
            lifetime_total=self._total,
            lifetime_failed=self._failed,
            burn_rates=self.burn_rates(),
        )

    def __repr__(self) -> str:
        total, failed = self._ring.counts(0)
        state = "exhausted" if self._exhausted else "ok"
        return (
            f"<ErrorBudget {self.name!r} slo={self.slo:g} window={self.window:g}s "
            f"[{failed}/{total} failed, {state}]>"
        )
