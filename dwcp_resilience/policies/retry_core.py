"""The pure core of :class:`~dwcp_resilience.policies.retry.Retry`: configuration, counters and the
decision taken after a failed attempt.

:meth:`RetryCore._plan` is a plain ``def`` that takes ``now`` and returns either the delay to sleep or
the reason to give up (one of :data:`REASONS`); it touches no state but the budget it charges when it
grants a retry. Everything that awaits lives in ``retry.py``. Also here: the retry events, the
statistics record, and the reading of server hints (:func:`retry_after_attribute`, the default
``retry_after=`` reader, and the clamping of whatever a reader returns).
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeAlias, TypedDict

from ..core.clock import Clock, loop_time
from ..core.context import current_deadline
from ..core.errors import DeadlineExceeded, NotCallable, Rejected
from ..core.events import Event, Listeners
from ..core.outcome import ExceptionMatcher, ResultPredicate, as_exception_predicate
from ..core.validate import check_int, check_name, check_number
from .backoff import Backoff, ExponentialBackoff, RandomSource
from .retry_budget import RetryBudget

__all__ = (
    "ATTEMPT_SLOTS",
    "BACKOFF_BUCKETS",
    "DEFAULT_MAX_RETRY_AFTER",
    "HintReader",
    "REASONS",
    "RetryCore",
    "RetryEvent",
    "RetryGaveUp",
    "RetryOptions",
    "RetryScheduled",
    "RetryStatistics",
    "TRANSIENT_ERRORS",
    "retry_after_attribute",
)


_log = logging.getLogger("dwcp_resilience")
_INF = math.inf

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OSError,)
"""The default ``retry_on``: I/O errors, connection errors and timeouts (all ``OSError``)."""

BACKOFF_BUCKETS: tuple[float, ...] = tuple(0.001 * 2**i for i in range(10))
"""Upper bounds of the backoff-delay histogram: the Go ``ExponentialBuckets(0.001, 2, 10)``."""

ATTEMPT_SLOTS = 16
"""Attempt numbers counted one by one in statistics; the last slot counts every later attempt."""

# Why a retry stopped (the ``reason`` label of the Go ``dwcp_retry_failures_total``).
EXHAUSTED = "exhausted"
NOT_RETRYABLE = "not_retryable"
REJECTED = "rejected"
DEADLINE = "deadline"
BUDGET = "budget"
HINT_TOO_LONG = "retry_after"
REASONS = (EXHAUSTED, NOT_RETRYABLE, REJECTED, DEADLINE, BUDGET, HINT_TOO_LONG)

DEFAULT_MAX_RETRY_AFTER = 60.0
"""The default ``max_retry_after``: the longest server hint a :class:`Retry` waits (seconds).

One minute covers the per-minute windows most rate limiters count in, and is as long as a caller
that is waiting on a request can usually afford; a longer hint gives up rather than being cut
short (urllib3 clamps to 6 hours instead, a default for batch jobs; ky gives up above its
``maxRetryAfter``, which is what this follows). The enclosing deadline bounds any wait anyway."""

HintReader: TypeAlias = Callable[[object], float | timedelta | None]
"""What ``retry_after=`` takes: ``(exception or result) -> seconds | timedelta | None``."""


@dataclass(frozen=True, slots=True)
class RetryEvent(Event):
    """Base of the retry events.

    :ivar attempt: the number of the attempt that just failed (1 is the first call).
    :ivar exception: the type of its exception, or ``None`` when a result was retried.
    """

    attempt: int
    exception: type[BaseException] | None


@dataclass(frozen=True, slots=True)
class RetryScheduled(RetryEvent):
    """A retry will start after ``delay`` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class RetryGaveUp(RetryEvent):
    """The retry stopped after ``attempt`` attempts; ``reason`` is one of exhausted, not_retryable,
    rejected, deadline, budget."""

    reason: str


@dataclass(frozen=True, slots=True)
class RetryStatistics:
    """A snapshot of a :class:`Retry`'s counters (everything the Go retry metrics need).

    :ivar name: the policy's name.
    :ivar max_attempts: ``max_retries + 1``.
    :ivar calls: calls whose first attempt has ended (= attempts numbered 1).
    :ivar successes: calls that ended with an accepted result.
    :ivar attempts: attempts by number: ``attempts[i]`` counts attempts numbered ``i + 1``; the last
        slot also counts every later number (at most 16 slots). Attempt 1 is counted when it ends
        (so the success path does one increment), later attempts when they start.
    :ivar retries: retries scheduled (backoff sleeps begun).
    :ivar failures: calls that gave up, by reason: ``exhausted`` (no attempt left),
        ``not_retryable`` (``retry_on`` said no), ``rejected`` (a ``Rejected`` not waited for),
        ``deadline`` (the next attempt could not finish in time, or the deadline had passed before
        the first), ``budget`` (the retry budget refused), ``retry_after`` (the server's hint was
        longer than ``max_retry_after``, or infinite).
    :ivar backoff_buckets: the histogram's upper bounds (seconds; Go buckets).
    :ivar backoff_counts: cumulative counts per upper bound (``delay <= bound``).
    :ivar backoff_sum: the sum of the scheduled delays.
    :ivar backoff_count: the number of scheduled delays (the ``+Inf`` bucket).
    """

    name: str
    max_attempts: int
    calls: int
    successes: int
    attempts: tuple[int, ...]
    retries: int
    failures: tuple[tuple[str, int], ...]
    backoff_buckets: tuple[float, ...]
    backoff_counts: tuple[int, ...]
    backoff_sum: float
    backoff_count: int

    @property
    def total_attempts(self) -> int:
        return sum(self.attempts)

    @property
    def total_failures(self) -> int:
        return sum(count for _, count in self.failures)

    def failures_by_reason(self) -> dict[str, int]:
        return dict(self.failures)

    @property
    def success_rate(self) -> float:
        """Successes per attempt (the Go ``SuccessRate``); 1.0 before any attempt."""
        total = self.total_attempts
        return 1.0 if total == 0 else self.successes / total


def _seconds(value: object) -> float | None:
    """A hint value as seconds in ``[0, inf]``; ``None`` for ``None``, NaN and other garbage."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond float range
        return _INF if value > 0 else 0.0
    if math.isnan(seconds):
        return None
    return seconds if seconds > 0.0 else 0.0


def retry_after_attribute(outcome: object) -> float | None:
    """The default ``retry_after=`` reader: the ``retry_after`` attribute of an exception or result.

    The attribute may hold seconds (an int or a float) or a ``timedelta``. Returns seconds in
    ``[0, inf]`` (negative hints become 0), or ``None`` when there is no attribute, when it is
    ``None``, NaN or of another type, or when reading it raises.
    """
    try:
        value = getattr(outcome, "retry_after", None)
    except Exception:  # a property that raises is no hint
        return None
    return _seconds(value)


class RetryOptions(TypedDict, total=False):
    """The keyword options of :class:`~dwcp_resilience.Retry` beyond ``max_retries`` and
    ``backoff``: what :meth:`~dwcp_resilience.ResilienceManager.register_retry_policy` passes on,
    typed."""

    retry_on: ExceptionMatcher
    retry_on_result: ResultPredicate | None
    rng: RandomSource | None
    total_timeout: float | None
    budget: RetryBudget | None
    wait_rejected: bool
    respect_retry_after: bool
    retry_after: HintReader | None
    max_retry_after: float
    clock: Clock | None
    listeners: Iterable[Callable[[RetryEvent], None]]


class RetryCore:
    """Configuration, counters and decisions of a retry policy (see :class:`Retry` for the args).

    Raises:
        TypeError, ValueError: invalid configuration (the message names the field).
    """

    __slots__ = (
        "_attempts",
        "_backoff",
        "_backoff_counts",
        "_backoff_sum",
        "_budget",
        "_clock",
        "_failures",
        "_first_failed",
        "_first_interrupted",
        "_first_ok",
        "_hint_reader",
        "_later_ok",
        "_listeners",
        "_max_attempts",
        "_max_delay",
        "_max_retry_after",
        "_name",
        "_plain",
        "_respect_hints",
        "_retries",
        "_retry_on",
        "_retry_on_result",
        "_rng",
        "_total_timeout",
        "_wait_rejected",
    )

    def __init__(
        self,
        name: str,
        *,
        max_retries: int = 3,
        backoff: Backoff | None = None,
        retry_on: ExceptionMatcher = TRANSIENT_ERRORS,
        retry_on_result: ResultPredicate | None = None,
        rng: RandomSource | None = None,
        total_timeout: float | None = None,
        budget: RetryBudget | None = None,
        wait_rejected: bool = False,
        respect_retry_after: bool = True,
        retry_after: HintReader | None = None,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        clock: Clock | None = None,
        listeners: Iterable[Callable[[RetryEvent], None]] = (),
    ) -> None:
        self._name = check_name(name)
        self._max_attempts = check_int(max_retries, "max_retries", min_value=0) + 1
        if backoff is None:
            backoff = ExponentialBackoff()
        if not callable(getattr(backoff, "delay", None)):
            raise TypeError("backoff must have a delay(attempt, rng, prev) method")
        self._backoff = backoff
        self._max_delay = check_number(backoff.max_delay, "backoff.max_delay", min_value=0.0)
        self._retry_on = as_exception_predicate(retry_on, field="retry_on")
        if retry_on_result is not None and not callable(retry_on_result):
            raise TypeError("retry_on_result must be a predicate over results or None")
        self._retry_on_result = retry_on_result
        if rng is not None and not callable(getattr(rng, "random", None)):
            raise TypeError("rng must have a random() method (e.g. random.Random) or be None")
        self._rng = rng
        if total_timeout is None:
            self._total_timeout = _INF
        else:
            self._total_timeout = check_number(
                total_timeout, "total_timeout", min_value=0.0, allow_zero=False, allow_inf=True
            )
        if budget is not None and not isinstance(budget, RetryBudget):
            raise TypeError("budget must be a RetryBudget or None")
        self._budget = budget
        if not isinstance(wait_rejected, bool):
            raise TypeError("wait_rejected must be a bool")
        if not isinstance(respect_retry_after, bool):
            raise TypeError("respect_retry_after must be a bool")
        self._wait_rejected = wait_rejected
        self._respect_hints = respect_retry_after
        if retry_after is not None:
            if not callable(retry_after):
                raise TypeError(
                    "retry_after must be a callable (exception or result) -> seconds | None"
                )
            if not respect_retry_after:
                raise ValueError("retry_after is given but respect_retry_after=False ignores it")
        self._hint_reader: HintReader = (
            retry_after_attribute if retry_after is None else retry_after
        )
        self._max_retry_after = check_number(
            max_retry_after, "max_retry_after", min_value=0.0, allow_inf=True
        )
        if clock is not None and not callable(clock):
            raise TypeError("clock must be a zero-argument callable returning seconds")
        self._clock: Clock = loop_time if clock is None else clock
        self._listeners: Listeners[RetryEvent] = Listeners(listeners)
        # The plain success path: no clock (no time cap, no budget) and no result predicate.
        self._plain = self._total_timeout == _INF and budget is None and retry_on_result is None
        # First attempts are counted by how they ended, so the success path does one increment.
        self._first_ok = 0
        self._first_failed = 0
        self._first_interrupted = 0
        self._later_ok = 0
        self._attempts = [0] * min(self._max_attempts, ATTEMPT_SLOTS)
        self._retries = 0
        self._failures = dict.fromkeys(REASONS, 0)
        self._backoff_counts = [0] * (len(BACKOFF_BUCKETS) + 1)
        self._backoff_sum = 0.0

    # --- introspection ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def max_retries(self) -> int:
        return self._max_attempts - 1

    @property
    def max_attempts(self) -> int:
        return self._max_attempts

    @property
    def backoff(self) -> Backoff:
        return self._backoff

    @property
    def budget(self) -> RetryBudget | None:
        return self._budget

    @property
    def max_retry_after(self) -> float:
        """The longest server hint this retry waits (seconds); a longer one gives up."""
        return self._max_retry_after

    def statistics(self) -> RetryStatistics:
        """A frozen snapshot of the counters."""
        attempts = list(self._attempts)
        calls = self._first_ok + self._first_failed + self._first_interrupted
        attempts[0] = calls
        cumulative: list[int] = []
        running = 0
        for count in self._backoff_counts[:-1]:
            running += count
            cumulative.append(running)
        return RetryStatistics(
            name=self._name,
            max_attempts=self._max_attempts,
            calls=calls,
            successes=self._first_ok + self._later_ok,
            attempts=tuple(attempts),
            retries=self._retries,
            failures=tuple(self._failures.items()),
            backoff_buckets=BACKOFF_BUCKETS,
            backoff_counts=tuple(cumulative),
            backoff_sum=self._backoff_sum,
            backoff_count=sum(self._backoff_counts),
        )

    def __repr__(self) -> str:
        return (
            f"<Retry {self._name!r} max_retries={self._max_attempts - 1} {self._backoff!r} "
            f"[successes={self._first_ok + self._later_ok}, retries={self._retries}]>"
        )

    # --- the engine ---------------------------------------------------------------------------

    def _start(self) -> tuple[float | None, float]:
        """Begin a call that needs the clock: (start time, deadline); charge the budget."""
        now = self._clock()
        deadline = now + self._total_timeout
        outer = current_deadline()
        deadline = min(deadline, outer)
        if deadline <= now:
            self._failures[DEADLINE] += 1
            raise DeadlineExceeded(self._name, self._total_timeout)
        if self._budget is not None:
            self._budget.record_request(now)
        return now, deadline

    def _retryable(self, exc: Exception) -> bool:
        try:
            return bool(self._retry_on(exc))
        except Exception:
            _log.exception("retry_on predicate of %r raised on %r; not retrying", self._name, exc)
            return False

    def _hint(self, source: object) -> float | None:
        """The server's hint for ``source`` (an exception or a result), in ``[0, inf]`` or ``None``."""
        try:
            value = self._hint_reader(source)
        except Exception:
            _log.exception("retry_after reader of %r raised; using the backoff", self._name)
            return None
        return _seconds(value)

    def _result_retryable(self, result: object) -> bool:
        predicate = self._retry_on_result
        if predicate is None:
            return False
        try:
            return bool(predicate(result))
        except Exception:
            _log.exception("retry_on_result predicate of %r raised; not retrying", self._name)
            return False

    def add_listener(self, listener: Callable[[RetryEvent], None]) -> None:
        """Register a listener for :class:`RetryScheduled` and :class:`RetryGaveUp` events."""
        self._listeners.add(listener)

    def remove_listener(self, listener: Callable[[RetryEvent], None]) -> None:
        """Unregister a listener (``ValueError`` if it was not registered)."""
        self._listeners.remove(listener)

    def _plan(  # noqa: PLR0917 - internal, called positionally on the failure path
        self,
        attempt: int,
        exc: Exception | None,
        result: object,
        now: float,
        duration: float,
        prev: float | None,
        deadline: float,
    ) -> float | str:
        """Decide after failed attempt ``attempt``: a delay to sleep, or the reason to give up.

        Pure apart from charging the budget, which happens only when a delay is returned. A hint
        (a ``Rejected``'s with ``wait_rejected``, or the server's) is bounded by
        ``max_retry_after``; the backoff's own delays by ``max_delay``.
        """
        delay: float | None = None
        if exc is not None:
            if isinstance(exc, Rejected):
                hint = exc.retry_after
                if (
                    not self._wait_rejected
                    or hint is None
                    or not 0.0 <= hint <= self._max_retry_after
                    or hint == _INF
                ):
                    return REJECTED
                delay = float(hint)
            elif isinstance(exc, NotCallable) or not self._retryable(exc):
                return NOT_RETRYABLE
        if attempt >= self._max_attempts:
            return EXHAUSTED
        if delay is None:
            hint = self._hint(exc if exc is not None else result) if self._respect_hints else None
            if hint is None:
                delay = self._backoff.delay(attempt, self._rng, prev)
                if not 0.0 <= delay <= self._max_delay:  # a custom backoff that misbehaves
                    delay = self._max_delay if delay > self._max_delay else 0.0
            elif hint > self._max_retry_after or hint == _INF:
                return HINT_TOO_LONG
            else:
                delay = hint
        if deadline != _INF and now + delay + duration >= deadline:
            return DEADLINE
        if self._budget is not None and not self._budget.try_acquire_retry(now):
            return BUDGET
        return delay

    def _scheduled(self, attempt: int, exc: Exception | None, delay: float, now: float) -> None:
        self._retries += 1
        self._backoff_counts[bisect_left(BACKOFF_BUCKETS, delay)] += 1
        self._backoff_sum += delay
        if self._listeners:
            kind = None if exc is None else type(exc)
            self._listeners.emit(RetryScheduled(self._name, now, attempt, kind, delay))

    def _gave_up(self, attempt: int, exc: Exception | None, reason: str, now: float) -> None:
        self._failures[reason] += 1
        if exc is not None:
            plural = "attempt" if attempt == 1 else "attempts"
            exc.add_note(f"Retry {self._name!r} gave up after {attempt} {plural} ({reason})")
        if self._listeners:
            kind = None if exc is None else type(exc)
            self._listeners.emit(RetryGaveUp(self._name, now, attempt, kind, reason))

    def _count_attempt(self, attempt: int) -> None:
        slots = self._attempts
        slots[min(attempt, len(slots)) - 1] += 1
