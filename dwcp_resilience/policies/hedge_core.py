"""The pure core of :class:`~dwcp_resilience.Hedge`: configuration, counters, the latency window,
and the per-call race state.

Everything here is plain ``def`` s that take ``now`` and return decisions; nothing awaits. The async
shell (``hedge.py``) runs the attempts in a task group and asks this core what to do:

- :meth:`HedgeCore.begin` starts a call: it counts it, records it in the budget, and returns a
  fresh :class:`Race` (per-call state, never shared) with attempt 1 started;
- :meth:`Race.next_start` says when the next attempt is due: ``None`` (never: the race is decided,
  every attempt is used, or the budget refused one), a time in the past (a failed attempt asks for
  the next at once), or the time the current delay runs out;
- :meth:`HedgeCore.launch` asks the budget for a hedged attempt and starts it, or records the
  refusal (no further attempt starts in that call; the running ones go on);
- :meth:`HedgeCore.failed` and :meth:`HedgeCore.succeeded` record an attempt's end; the first
  success wins, later ends are ignored.

The delay is fixed (seconds; ``0`` starts every attempt at once, ``inf`` hedges only after a
failure) or a :class:`~dwcp_resilience.policies.hedge_delay.Percentile` of the latencies of recent
successful attempts (kept in a :class:`~dwcp_resilience.policies.hedge_delay.LatencyWindow`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, TypedDict

from ..core.clock import Clock
from ..core.errors import NotCallable, Rejected
from ..core.events import Event, Listeners
from ..core.outcome import ExceptionMatcher, as_exception_predicate
from ..core.validate import check_int, check_name, check_number
from .hedge_delay import LatencyWindow, Percentile
from .hedge_race import FAILED, FINAL, OUT, Race
from .retry_budget import RetryBudget

__all__ = (
    "DEFAULT_HEDGE_DELAY",
    "HedgeBudgetExhausted",
    "HedgeCore",
    "HedgeEvent",
    "HedgeOptions",
    "HedgeStarted",
    "HedgeStatistics",
    "HedgeWon",
)

_log = logging.getLogger("dwcp_resilience")
_INF = math.inf

DEFAULT_HEDGE_DELAY = 2.0
"""The default ``delay``: Polly's 2 seconds."""


# --- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HedgeEvent(Event):
    """Base of the hedge events. ``attempt`` numbers the attempt concerned (1 is the first)."""

    attempt: int


@dataclass(frozen=True, slots=True)
class HedgeStarted(HedgeEvent):
    """A hedged attempt started: ``reason`` is ``"delay"`` (the others were slow) or ``"failure"``
    (an attempt failed and this one replaces it at once)."""

    reason: Literal["delay", "failure"]


@dataclass(frozen=True, slots=True)
class HedgeWon(HedgeEvent):
    """A hedged attempt (``attempt >= 2``) succeeded first; the others were cancelled."""


@dataclass(frozen=True, slots=True)
class HedgeBudgetExhausted(HedgeEvent):
    """The budget refused attempt ``attempt``: no further attempt starts in this call (the running
    ones go on)."""


@dataclass(frozen=True, slots=True)
class HedgeStatistics:
    """A snapshot of a :class:`~dwcp_resilience.Hedge`'s counters.

    :ivar name: the policy's name.
    :ivar max_attempts: ``max_hedged_attempts + 1``.
    :ivar calls: calls started.
    :ivar hedges_started: hedged attempts started (attempts beyond the first).
    :ivar hedge_wins: calls won by a hedged attempt.
    :ivar first_wins: calls won by their first attempt.
    :ivar failures: calls that ended with an exception (every attempt failed, or one raised an
        exception that ends the race).
    :ivar cancelled: calls cancelled (or interrupted) from outside before they were decided.
    :ivar budget_refusals: hedged attempts the budget refused.
    :ivar delay: the delay a call starting now would wait before its first hedge (seconds).
    :ivar samples: latencies in the window (0 with a fixed delay).
    """

    name: str
    max_attempts: int
    calls: int
    hedges_started: int
    hedge_wins: int
    first_wins: int
    failures: int
    cancelled: int
    budget_refusals: int
    delay: float
    samples: int


class HedgeOptions(TypedDict, total=False):
    """The keyword options of :class:`~dwcp_resilience.Hedge` beyond ``delay`` and
    ``max_hedged_attempts``: what :meth:`~dwcp_resilience.ResilienceManager.register_hedge` passes
    on, typed."""

    hedge_on: ExceptionMatcher
    hedge_after_failure: bool
    budget: RetryBudget | None
    budget_ratio: float | None
    min_hedges_per_second: float
    budget_window: float
    listeners: Iterable[Callable[[HedgeEvent], None]]


# --- the policy's core ----------------------------------------------------------------------------


class HedgeCore:
    """Configuration, counters and decisions of a hedge (see :class:`~dwcp_resilience.Hedge` for
    the arguments).

    Raises:
        TypeError, ValueError: invalid configuration (the message names the field).
    """

    __slots__ = (
        "_budget",
        "_calls",
        "_cancelled",
        "_clock",
        "_failures",
        "_first_wins",
        "_fixed",
        "_hedge_on",
        "_hedge_wins",
        "_hedges",
        "_immediate",
        "_listeners",
        "_max_attempts",
        "_name",
        "_percentile",
        "_refused",
        "_window",
    )

    def __init__(
        self,
        name: str,
        *,
        delay: float | Percentile = DEFAULT_HEDGE_DELAY,
        max_hedged_attempts: int = 1,
        hedge_on: ExceptionMatcher,
        hedge_after_failure: bool = True,
        budget: RetryBudget | None = None,
        budget_ratio: float | None = 0.1,
        min_hedges_per_second: float = 1.0,
        budget_window: float = 10.0,
        clock: Clock,
        listeners: Iterable[Callable[[HedgeEvent], None]] = (),
    ) -> None:
        self._name = check_name(name)
        self._max_attempts = (
            check_int(max_hedged_attempts, "max_hedged_attempts", min_value=1, max_value=10) + 1
        )
        if isinstance(delay, Percentile):
            self._percentile: Percentile | None = delay
            self._window: LatencyWindow | None = LatencyWindow(delay.window)
            self._fixed = delay.fallback
        else:
            self._percentile = None
            self._window = None
            self._fixed = check_number(delay, "delay", min_value=0.0, allow_inf=True)
        self._hedge_on = as_exception_predicate(hedge_on, field="hedge_on")
        if not isinstance(hedge_after_failure, bool):
            raise TypeError("hedge_after_failure must be a bool")
        self._immediate = hedge_after_failure
        if not callable(clock):
            raise TypeError("clock must be a zero-argument callable returning seconds")
        self._clock = clock
        if budget is not None:
            if not isinstance(budget, RetryBudget):
                raise TypeError("budget must be a RetryBudget or None")
            if (budget_ratio, min_hedges_per_second, budget_window) != (0.1, 1.0, 10.0):
                raise ValueError(
                    "give either budget= (a shared RetryBudget) or budget_ratio/"
                    "min_hedges_per_second/budget_window (the hedge's own budget), not both"
                )
            self._budget: RetryBudget | None = budget
        elif budget_ratio is None:
            self._budget = None
        else:
            self._budget = RetryBudget(
                ratio=check_number(budget_ratio, "budget_ratio", min_value=0.0),
                min_retries_per_second=check_number(
                    min_hedges_per_second, "min_hedges_per_second", min_value=0.0
                ),
                window=check_number(
                    budget_window, "budget_window", min_value=0.0, allow_zero=False
                ),
                name=f"{self._name}-budget",
                clock=clock,
            )
        self._listeners: Listeners[HedgeEvent] = Listeners(listeners)
        self._calls = self._hedges = self._hedge_wins = self._first_wins = 0
        self._failures = self._cancelled = self._refused = 0

    # --- introspection --------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def max_hedged_attempts(self) -> int:
        return self._max_attempts - 1

    @property
    def budget(self) -> RetryBudget | None:
        """The budget hedged attempts are charged to (``None``: unlimited)."""
        return self._budget

    @property
    def percentile(self) -> Percentile | None:
        """The :class:`Percentile` the delay follows, or ``None`` for a fixed delay."""
        return self._percentile

    def delay(self) -> float:
        """The delay before the next hedge of a call starting now (seconds)."""
        window = self._window
        if window is None:
            return self._fixed
        percentile = self._percentile
        assert percentile is not None
        if len(window) < percentile.min_samples:
            return self._fixed
        value = window.quantile(percentile.quantile)
        if value is None:
            return self._fixed
        return value if value > percentile.minimum else percentile.minimum

    def statistics(self) -> HedgeStatistics:
        """A frozen snapshot of the counters."""
        return HedgeStatistics(
            name=self._name,
            max_attempts=self._max_attempts,
            calls=self._calls,
            hedges_started=self._hedges,
            hedge_wins=self._hedge_wins,
            first_wins=self._first_wins,
            failures=self._failures,
            cancelled=self._cancelled,
            budget_refusals=self._refused,
            delay=self.delay(),
            samples=0 if self._window is None else len(self._window),
        )

    def add_listener(self, listener: Callable[[HedgeEvent], None]) -> None:
        """Register a listener for :class:`HedgeStarted`, :class:`HedgeWon` and
        :class:`HedgeBudgetExhausted` events."""
        self._listeners.add(listener)

    def remove_listener(self, listener: Callable[[HedgeEvent], None]) -> None:
        """Unregister a listener (``ValueError`` if it was not registered)."""
        self._listeners.remove(listener)

    def __repr__(self) -> str:
        delay = f"p{self._percentile.quantile * 100:g}" if self._percentile else ""
        return (
            f"<Hedge {self._name!r} max_hedged_attempts={self._max_attempts - 1} "
            f"delay={delay or f'{self._fixed:g}s'} [calls={self._calls}, hedges={self._hedges}, "
            f"hedge wins={self._hedge_wins}]>"
        )

    # --- decisions ------------------------------------------------------------------------------

    def begin(self, now: float) -> Race:
        """Start a call at ``now``: count it, record it in the budget, start attempt 1."""
        self._calls += 1
        if self._budget is not None:
            self._budget.record_request(now)
        race = Race(self._max_attempts)
        race.start(now, self.delay())
        return race

    def launch(self, race: Race, now: float) -> int:
        """Start the hedged attempt that is due (``race.next_start() <= now``) if the budget grants
        it: return its number, or 0 when the budget refused (the race starts no more attempts)."""
        number = race.started + 1
        if self._budget is not None and not self._budget.try_acquire_retry(now):
            race.refused = True
            self._refused += 1
            if self._listeners:
                self._listeners.emit(HedgeBudgetExhausted(self._name, now, number))
            return 0
        reason: Literal["delay", "failure"] = "failure" if race.pending else "delay"
        race.start(now, self.delay())
        self._hedges += 1
        if self._listeners:
            self._listeners.emit(HedgeStarted(self._name, now, number, reason))
        return number

    def classify(self, exc: Exception) -> int:
        """What an attempt's exception means: :data:`FAILED` (``hedge_on`` matches: the next
        attempt starts at once), :data:`OUT` (our own rejection, or a match with
        ``hedge_after_failure=False``: the attempt is out, the race goes on, the next attempt keeps
        to the delay), or :data:`FINAL` (anything else ends the race, as Polly treats an unhandled
        outcome)."""
        if isinstance(exc, Rejected):
            return OUT
        if isinstance(exc, NotCallable):
            return FINAL
        try:
            matched = self._hedge_on(exc)
        except Exception:
            _log.exception(
                "hedge_on predicate of %r raised on %r; ending the race", self._name, exc
            )
            return FINAL
        if not matched:
            return FINAL
        return FAILED if self._immediate else OUT

    def failed(self, race: Race, exc: Exception) -> bool:
        """An attempt ended with ``exc``; return True when that ends the race (the shell then
        cancels the others). Ignored once the race is decided."""
        if race.decided:
            return False
        kind = self.classify(exc)
        race.end(exc, kind)
        return kind == FINAL

    def succeeded(self, race: Race, number: int, result: object, duration: float) -> bool:
        """Attempt ``number`` returned ``result`` after ``duration`` seconds; return True if it
        won (the first success of an undecided race)."""
        if race.decided:
            return False
        race.win(number, result)
        if self._window is not None:
            self._window.add(duration)
        if number == 1:
            self._first_wins += 1
        else:
            self._hedge_wins += 1
            if self._listeners:
                self._listeners.emit(HedgeWon(self._name, self._clock(), number))
        return True

    def interrupted(self) -> None:
        """Count a call cancelled (or interrupted) from outside before it was decided."""
        self._cancelled += 1

    def gave_up(self, race: Race) -> BaseException:
        """The exception a call with no winner ends with, counted, with a note of its attempts."""
        self._failures += 1
        error = race.error
        assert error is not None  # every attempt ended, and one ended with this
        error.add_note(self._note(race))
        return error

    def _note(self, race: Race) -> str:
        plural = "attempt" if race.started == 1 else "attempts"
        why = (
            "ended by this exception"
            if race.final
            else "the budget refused more"
            if race.refused
            else "all failed"
        )
        return f"Hedge {self._name!r}: {race.started} {plural} started, {why}"
