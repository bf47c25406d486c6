"""``CircuitBreaker``: the Go package's breaker, made correct, plus what the best breakers have.

The state machine lives in :class:`~dwcp_resilience.policies.breaker_core.BreakerCore` (plain ``def``s
that take ``now``); this module is the async shell that reads the clock, runs the callee and reports
its outcome. Every decision happens between two awaits, so no lock is needed and concurrent tasks
see each transition atomically (share a breaker between the tasks of a loop, not between threads).

Kept from Go: states CLOSED=0, HALF_OPEN=1, OPEN=2 (the gauge values); a trip after ``max_failures``
consecutive failures (default 5); a lazy OPEN -> HALF_OPEN once ``reset_timeout`` (default 60 s) has
passed, made by the first call (or state read) that sees it; any half-open failure reopens;
``half_open_successes`` (default 3) successes close.

Fixed: at most ``half_open_max_calls`` probes run at once (the rest get :class:`CircuitOpen` without
running the callee), and a cancelled or neutral probe frees its slot at once; results of calls
admitted before a state change are ignored (epochs); ``reset()`` and every transition update the
statistics and notify the listeners; the optional per-call ``timeout`` cancels the callee (no leaked
work) and counts as a failure.

Added: count- and time-based sliding windows with a failure-rate threshold and a minimum number of
calls; a slow-call-rate trip (slow calls are not cancelled); a half-open maximum wait; an
open-duration generator (backoff of the open period); ``force_open()`` (isolate), ``disable()``,
``reset()``; failure predicates over exceptions and results with neutral outcomes; ``retry_after``
on :class:`CircuitOpen`; listeners; a frozen :meth:`~CircuitBreaker.statistics` snapshot.

Outcomes (see :class:`~dwcp_resilience.Classifier`): cancellation and other non-``Exception``
``BaseException``\\ s, our own rejections from an inner policy, and ``ignore``-matched exceptions are
neutral; ``failure``-matched exceptions (default: every ``Exception``) and ``failure_result``-matched
results are failures; anything else is a success (the callee answered).

Hot path: in consecutive mode (no window, no slow-call threshold, no result predicate, no timeout,
``record_latency=False``) a CLOSED call reads one attribute before the await, and after it compares
the epoch and writes two counters: no clock read, no allocation, no lock (the decorator inlines this
path, so it adds no frame of its own). An OPEN rejection reads the clock once and builds one fresh
exception. Call durations are measured (and kept in the request-duration histogram of
:meth:`~CircuitBreaker.statistics`) when ``record_latency=True`` or ``slow_call_duration`` is set;
without them the histogram stays empty. Calls on that fast path are not counted as in flight while
they run (``inflight`` counts probes and the calls of the other modes).

The events and the statistics snapshot live in :mod:`.breaker_events`, the windows and the histogram
in :mod:`.breaker_windows` (both re-exported here). This module stays over 450 lines because it is
one class, :class:`CircuitBreaker`, whose ``call``, decorator wrapper and context manager inline one
hot path that is kept in one place on purpose.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from types import MappingProxyType, TracebackType
from typing import Any, ParamSpec, TypedDict, TypeVar

from ..core._fused import Admission
from ..core.clock import Clock, loop_time
from ..core.context import current_deadline
from ..core.errors import CircuitOpen, DeadlineExceeded, not_callable
from ..core.events import Event, Listeners
from ..core.outcome import Classifier, ExceptionMatcher, Outcome, ResultPredicate
from ..core.policy import PolicyBase, TaskLocalStack, check_decorated
from ..core.validate import check_name, check_number
from .breaker_core import (
    CLOCK_SLACK,
    CLOSED,
    OPEN,
    ROUTE_OPEN,
    BreakerConfig,
    BreakerCore,
    BreakerState,
)
from .breaker_events import BreakerRejected, BreakerStateChanged, BreakerStatistics
from .breaker_fused import breaker_admission
from .breaker_windows import DEFAULT_BUCKETS, CountWindow, LatencyHistogram, TimeWindow
from .timeout import Timeout

__all__ = (
    "BreakerOptions",
    "BreakerRejected",
    "BreakerState",
    "BreakerStateChanged",
    "BreakerStatistics",
    "CircuitBreaker",
    "CountWindow",
    "TimeWindow",
)

P = ParamSpec("P")
T = TypeVar("T")

_log = logging.getLogger("dwcp_resilience")
_INF = math.inf
_FAILURE, _SUCCESS, _NEUTRAL = Outcome.FAILURE, Outcome.SUCCESS, Outcome.NEUTRAL

_new_exception = BaseException.__new__


class BreakerOptions(TypedDict, total=False):
    """The keyword options of :class:`CircuitBreaker` beyond the Go ones (``max_failures``,
    ``reset_timeout``, ``timeout``) and ``clock``: what
    :meth:`~dwcp_resilience.ResilienceManager.register_circuit_breaker` passes on, typed."""

    half_open_max_calls: int
    half_open_successes: int
    failure: ExceptionMatcher
    ignore: ExceptionMatcher | None
    failure_result: ResultPredicate | None
    window: CountWindow | TimeWindow | None
    failure_rate_threshold: float | None
    minimum_calls: int | None
    slow_call_duration: float | None
    slow_call_rate_threshold: float | None
    half_open_max_wait: float | None
    open_duration: Callable[[int], float] | None
    record_latency: bool
    listeners: Iterable[Callable[[Event], None]]


# A fresh CircuitOpen per rejection (a shared one would grow its traceback on every raise), built
# by BaseException.__new__ through a C partial: no Python frame, and no instance dict (Rejected keeps
# its fields in ``args``). Callers raise the result directly and never bind it to a local, which
# would tie the exception, its traceback and the raising frame into a cycle only the GC can free.
_circuit_open = functools.partial(_new_exception, CircuitOpen)


# -- the breaker ----------------------------------------------------------------------------------


class CircuitBreaker(PolicyBase):
    """Stop calling a dependency that keeps failing; probe it again after a while.

    Args:
        name: the breaker's name (errors, events, metrics).
        max_failures: consecutive failures that trip it, with or without a window (``None``: off,
            needs a ``window``).
        reset_timeout: seconds OPEN lasts before the next call probes (HALF_OPEN).
        half_open_max_calls: probes allowed in flight at once in HALF_OPEN.
        half_open_successes: probe successes that close it.
        failure: which exceptions are failures (a type, a tuple of types, or a predicate); other
            exceptions count as successes (the callee answered). Our own per-call timeout is
            always a failure.
        ignore: which exceptions are neutral (neither success nor failure).
        failure_result: a predicate over returned values that marks a failure.
        window: a :class:`CountWindow` or :class:`TimeWindow` for the rate trips.
        failure_rate_threshold: the failure rate (0, 1] that trips it over the window (default 0.5).
        minimum_calls: calls the window needs before a rate can trip it (default: the count
            window's size, or 20 for a time window).
        slow_call_duration: seconds from which a call is slow (it is not cancelled; needs a window).
        slow_call_rate_threshold: the slow-call rate (0, 1] that trips it (default 1.0). A slow
            half-open probe reopens the breaker.
        half_open_max_wait: seconds every probe slot may stay taken before the breaker reopens
            (default: ``reset_timeout``; ``inf``: wait for ever).
        open_duration: ``n -> seconds`` for the n-th opening in a row (default: ``reset_timeout``).
            A generator that raises or returns a bad value is logged and ``reset_timeout`` used.
        timeout: a per-call :class:`~dwcp_resilience.Timeout` in seconds; when it fires the call is
            cancelled, counted as a failure and ``DeadlineExceeded`` raised.
        record_latency: measure every call's duration for the histogram (costs two clock reads).
        clock: a monotonic clock (``Callable[[], float]``); default: the running loop's.
        listeners: callables receiving :class:`BreakerStateChanged` and :class:`BreakerRejected`.

    Raises:
        TypeError: a setting has the wrong type (``True`` is not a number).
        ValueError: a setting is out of range or NaN, or settings that can never trip.
    """

    __slots__ = (
        "_classifier", "_clock", "_clock_on_success", "_core", "_deadline_name", "_emit_rejections",
        "_histogram", "_listeners", "_name", "_now", "_plain", "_result_check", "_stack", "_timed",
        "_timeout",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        *,
        max_failures: int | None = 5,
        reset_timeout: float = 60.0,
        half_open_max_calls: int = 1,
        half_open_successes: int = 3,
        failure: ExceptionMatcher = Exception,
        ignore: ExceptionMatcher | None = None,
        failure_result: ResultPredicate | None = None,
        window: CountWindow | TimeWindow | None = None,
        failure_rate_threshold: float | None = None,
        minimum_calls: int | None = None,
        slow_call_duration: float | None = None,
        slow_call_rate_threshold: float | None = None,
        half_open_max_wait: float | None = None,
        open_duration: Callable[[int], float] | None = None,
        timeout: float | None = None,
        record_latency: bool = False,
        clock: Clock | None = None,
        listeners: Iterable[Callable[[Event], None]] = (),
    ) -> None:
        self._name = check_name(name)
        cfg = BreakerConfig(
            max_failures=max_failures,
            reset_timeout=reset_timeout,
            half_open_max_calls=half_open_max_calls,
            half_open_successes=half_open_successes,
            window=window,
            failure_rate_threshold=failure_rate_threshold,
            minimum_calls=minimum_calls,
            slow_call_duration=slow_call_duration,
            slow_call_rate_threshold=slow_call_rate_threshold,
            half_open_max_wait=half_open_max_wait,
            open_duration=open_duration,
        )
        self._classifier = Classifier(failure, ignore=ignore, failure_result=failure_result)
        if not isinstance(record_latency, bool):
            raise TypeError("record_latency must be a bool")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a zero-argument callable, got {type(clock).__name__}")
        self._clock = clock
        self._now: Clock = loop_time if clock is None else clock  # one call per reading
        self._timeout: Timeout | None = None
        if timeout is not None:
            seconds = check_number(
                timeout, "timeout", min_value=0, allow_zero=False, allow_inf=True
            )
            if seconds != _INF:
                self._timeout = Timeout(seconds, name=f"{self._name}.timeout")
        self._deadline_name = f"{self._name}.timeout"
        self._timed = record_latency or cfg.slow_call_duration is not None
        self._clock_on_success = self._timed or isinstance(cfg.window, TimeWindow)
        self._result_check = self._classifier.has_result_predicate
        self._histogram = LatencyHistogram(DEFAULT_BUCKETS)
        self._listeners: Listeners[Event] = Listeners(listeners)
        self._emit_rejections = bool(self._listeners)
        self._plain = not self._timed and self._timeout is None  # CLOSED admission needs no clock
        fast = self._plain and not self._result_check
        self._core = BreakerCore(cfg, self._on_transition, fast=fast)
        self._stack: TaskLocalStack[tuple[int, float | None]] = TaskLocalStack(
            f"dwcp_breaker_{id(self):x}"
        )

    # -- introspection -----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The breaker's name."""
        return self._name

    @property
    def config(self) -> BreakerConfig:
        """The validated settings."""
        return self._core.cfg

    @property
    def window_duration(self) -> float | None:
        """The time window's length in seconds (``None`` without a time window)."""
        window = self._core.cfg.window
        return window.seconds if isinstance(window, TimeWindow) else None

    @property
    def state(self) -> BreakerState:
        """The state a call would see now (makes a due OPEN -> HALF_OPEN move, with its event)."""
        return self._core.poll(self._now())

    @property
    def inflight(self) -> int:
        """Admitted calls whose outcome is not recorded yet (see :class:`BreakerStatistics`)."""
        return self._core.inflight

    def statistics(self) -> BreakerStatistics:
        """A frozen snapshot of the state and the counters (applies due lazy transitions first)."""
        core = self._core
        now = self._now()
        state = core.poll(now)
        calls, failures, slow = core.window_totals(now)
        histogram = self._histogram
        return BreakerStatistics(
            name=self._name,
            state=state,
            forced_open=core.isolated,
            disabled=core.disabled,
            epoch=core.epoch,
            consecutive_failures=core.consecutive,
            window_calls=calls,
            window_failures=failures,
            window_slow_calls=slow,
            failure_rate=failures / calls if calls else 0.0,
            slow_call_rate=slow / calls if calls else 0.0,
            half_open_probes=core.probes,
            half_open_successes=core.probe_successes,
            consecutive_opens=core.opens,
            times_opened=sum(n for (_, to), n in core.state_changes.items() if to is OPEN),
            retry_after=core.retry_after(now) if state is OPEN else None,
            admitted=core.admitted + core.fast_successes,
            successes=core.successes + core.fast_successes,
            failures=core.failures,
            rejected=core.rejected,
            ignored=core.ignored,
            stale=core.stale,
            slow_calls=core.slow_calls,
            inflight=core.inflight,
            state_changes=MappingProxyType(dict(core.state_changes)),
            latency_buckets=histogram.bounds,
            latency_counts=histogram.cumulative(),
            latency_sum=histogram.sum,
            latency_count=histogram.count,
        )

    def __repr__(self) -> str:
        core = self._core
        state = core.state
        text = f"<CircuitBreaker {self._name!r} {state}"
        if core.disabled:
            text += " (disabled)"
        if state is OPEN:
            if core.isolated:
                text += " (forced)"
            else:
                left = core.open_until - self._now()
                text += f", probe in {left:.3g}s" if left > 0 else ", probe due"
        elif state is BreakerState.HALF_OPEN:
            text += f", {core.probes}/{core.cfg.half_open_max_calls} probes"
            text += f", {core.probe_successes}/{core.cfg.half_open_successes} ok"
        else:
            text += f", {core.consecutive} consecutive failures"
        return (
            f"{text}, {core.successes + core.fast_successes} ok / {core.failures} failed"
            f" / {core.rejected} rejected"
            f" / {core.inflight} in flight>"
        )

    # -- manual control ----------------------------------------------------------------------------

    def reset(self) -> None:
        """Close the breaker and clear its window; ends ``force_open()`` and ``disable()``.

        The counters of :meth:`statistics` are kept. Tests that share a module-level breaker
        between event loops whose clocks start afresh (looptime starts each loop at 0) reset it
        between tests, so that no open period or window of one loop's clock carries into the next.
        """
        self._core.reset(self._now())

    def force_open(self) -> None:
        """Isolate: reject every call (``retry_after=None``) until :meth:`reset`."""
        self._core.force_open(self._now())

    def end_open_period(self, reason: str = "probe_early") -> bool:
        """End the open period now: the breaker goes HALF_OPEN and its next calls are probes.

        For a health check that saw the protected service answer again: traffic resumes as soon
        as the service is back instead of after the rest of ``reset_timeout``, and only the usual
        half-open probes are risked. Does nothing, and returns ``False``, unless the breaker is
        OPEN by a trip (a ``force_open()`` isolation stays until ``reset()``). A failing probe
        reopens it for the next ``open_duration``.
        """
        check_name(reason, "reason")
        return self._core.end_open_period(self._now(), reason)

    def trip(self, reason: str = "tripped") -> None:
        """Open now, as if the breaker had tripped itself: calls are rejected with ``retry_after``
        until the open period (``reset_timeout`` or ``open_duration``) ends, then half-open probes
        decide. Unlike :meth:`force_open` it is not an isolation: the breaker recovers on its own.
        ``reason`` goes into the :class:`BreakerStateChanged` event (the fleet backend passes
        ``"fleet_quorum"``). Restarts the open period if the breaker is already open.
        """
        check_name(reason, "reason")
        self._core.trip(self._now(), reason)

    def disable(self) -> None:
        """Admit every call and never trip (outcomes are still counted) until :meth:`reset`."""
        self._core.disable(self._now())

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Register a listener for :class:`BreakerStateChanged` and :class:`BreakerRejected`."""
        self._listeners.add(listener)
        self._emit_rejections = True

    def remove_listener(self, listener: Callable[[Event], None]) -> None:
        """Unregister a listener (``ValueError`` if it was not registered)."""
        self._listeners.remove(listener)
        self._emit_rejections = bool(self._listeners)

    # -- internals ---------------------------------------------------------------------------------

    def _on_transition(
        self, old: BreakerState, new: BreakerState, now: float, reason: str, manual: bool
    ) -> None:
        core = self._core
        error = core.open_duration_error
        if error is not None:
            core.open_duration_error = None
            _log.error(
                "breaker %r: open_duration failed (%r); used reset_timeout", self._name, error
            )
        if self._listeners:
            self._listeners.emit(BreakerStateChanged(self._name, now, old, new, reason, manual))

    def _emit_rejected(self, now: float, retry_after: float) -> None:
        self._listeners.emit(BreakerRejected(self._name, now, OPEN, retry_after))

    def _refuse(self, now: float) -> CircuitOpen:
        """The exception for a call the core refused (already counted), after telling listeners."""
        core = self._core
        retry_after = core.retry_after(now)
        if self._emit_rejections:
            self._listeners.emit(BreakerRejected(self._name, now, core.state, retry_after))
        return _circuit_open(self._name, retry_after)

    def _begin(self) -> tuple[int, float | None]:
        """Admit a call on the general path: ``(ticket, start)``, or raise.

        ``start`` is the admission time, or ``None`` when nothing needs it (CLOSED and untimed).

        Raises:
            CircuitOpen: the core refused the call.
            DeadlineExceeded: a per-call timeout is set and the enclosing deadline has passed already
                (the callee would not run; nothing is counted).
        """
        core = self._core
        deadline = current_deadline() if self._timeout is not None else _INF
        if core.state is CLOSED and deadline == _INF:  # admitting needs no clock
            core.admitted += 1
            return core.epoch, (self._now() if self._timed else None)
        now = self._now()
        if deadline <= now and self._clock is None and self._timeout is not None:
            raise DeadlineExceeded(self._deadline_name, self._timeout.seconds)
        ticket = core.try_acquire(now)
        if ticket < 0:
            raise self._refuse(now)
        return ticket, now

    def _record(self, ticket: int, outcome: Outcome, start: float | None) -> None:
        core = self._core
        if outcome is _NEUTRAL:
            core.on_neutral(ticket)
            return
        if (
            outcome is _SUCCESS
            and start is None
            and not self._clock_on_success
            and (core.state is CLOSED or ticket != core.epoch)
        ):
            core.on_success(ticket, None)  # no clock needed: no transition, no time window
            return
        now = self._now()
        duration = None
        if start is not None and self._timed:
            duration = now - start
            self._histogram.observe(duration)
        if outcome is _FAILURE:
            core.on_failure(ticket, now, duration)
        else:
            core.on_success(ticket, now, duration)

    def _record_exception(self, ticket: int, exc: BaseException, start: float | None) -> None:
        if (
            type(exc) is DeadlineExceeded
            and self._timeout is not None
            and exc.name == self._deadline_name
        ):
            outcome = _FAILURE  # our own per-call timeout fired
        else:
            outcome = self._classifier.of_exception(exc)
        self._record(ticket, outcome, start)

    def _end(self, ticket: int, start: float | None, result: object) -> None:
        if self._result_check:
            self._record(ticket, self._classifier.of_result(result), start)
        elif start is None and not self._clock_on_success:
            core = self._core
            if core.state is CLOSED or ticket != core.epoch:
                core.on_success(ticket, None)  # no clock needed: no transition, no time window
            else:
                self._record(ticket, _SUCCESS, start)
        else:
            self._record(ticket, _SUCCESS, start)

    def _fast_exception(self, epoch: int, exc: BaseException) -> None:
        """A fast-path call raised: admit it in the core's books, then record its outcome."""
        self._core.admit_late()
        self._record_exception(epoch, exc, None)

    def _rejecting(self) -> float | None:
        """OPEN route: while the open period runs, count the rejection, tell listeners and return
        its ``retry_after`` (the caller raises ``_circuit_open(name, retry_after)`` at once, so the
        fresh exception is never bound to a local); ``None`` once the period is over (the call then
        goes through :meth:`_begin`, which moves the core to HALF_OPEN or refuses exactly)."""
        core = self._core
        now = self._now()
        until = core.reject_until
        if now >= until:
            return None
        core.rejected += 1
        retry_after = until - now + CLOCK_SLACK
        if self._emit_rejections:
            self._emit_rejected(now, retry_after)
        return retry_after

    def _admission(self) -> Admission | None:
        """This breaker's fusable admission (see :mod:`~dwcp_resilience.core._fused`), or
        ``None`` with a per-call ``timeout`` (its cancel scope needs a frame) or an overridden
        ``call``."""
        if self._timeout is not None or type(self).call is not CircuitBreaker.call:
            return None
        return breaker_admission(
            self, self._core, self._begin, self._end, self._record_exception, self._fast_exception
        )

    # -- the three idioms --------------------------------------------------------------------------
    #
    # Every path decides through one home: the core's ``route`` (which path), the core's
    # ``on_fast_success`` and ``_fast_exception`` (the fast CLOSED route's outcomes), ``_rejecting``
    # (the OPEN route), ``_begin``/``_end``/``_record_exception`` (the general path). ``call`` and
    # the decorator's wrapper have the same shape: the wrapper is not ``call`` awaited because a
    # coroutine frame costs on every suspension of the callee.

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` if the breaker admits it and record the outcome.

        Raises:
            CircuitOpen: the breaker refused the call (the callee did not run).
            DeadlineExceeded: the per-call ``timeout`` fired (the callee was cancelled).
        """
        if not callable(fn):
            raise not_callable(fn)
        core = self._core
        epoch = core.route
        if epoch >= 0:  # CLOSED, consecutive mode: no clock, no allocation
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                self._fast_exception(epoch, exc)
                raise
            core.on_fast_success(epoch)
            return result
        if epoch == ROUTE_OPEN:
            retry_after = self._rejecting()
            if retry_after is not None:
                raise _circuit_open(self._name, retry_after)
        ticket, start = self._begin()
        try:
            if self._timeout is None:
                result = await fn(*args, **kwargs)
            else:
                result = await self._timeout.call(fn, *args, **kwargs)
        except BaseException as exc:
            self._record_exception(ticket, exc, start)
            raise
        self._end(ticket, start, result)
        return result

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """Decorate an ``async def`` so every call runs through this breaker (as :meth:`call`).

        Raises:
            TypeError: if ``fn`` is a plain (synchronous) function.
        """
        check_decorated(fn, "CircuitBreaker")
        core = self._core
        on_fast_success, fast_exception = core.on_fast_success, self._fast_exception
        rejecting, begin, name = self._rejecting, self._begin, self._name
        end, record_exception = self._end, self._record_exception
        timeout = self._timeout

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            epoch = core.route
            if epoch >= 0:
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    fast_exception(epoch, exc)
                    raise
                on_fast_success(epoch)
                return result
            if epoch == ROUTE_OPEN:
                retry_after = rejecting()
                if retry_after is not None:
                    raise _circuit_open(name, retry_after)
            ticket, start = begin()
            try:
                if timeout is None:
                    result = await fn(*args, **kwargs)
                else:
                    result = await timeout.call(fn, *args, **kwargs)
            except BaseException as exc:
                record_exception(ticket, exc, start)
                raise
            end(ticket, start, result)
            return result

        return wrapper

    async def __aenter__(self) -> CircuitBreaker:
        ticket, start = self._begin()
        if self._timeout is not None:
            try:
                await self._timeout.__aenter__()
            except BaseException:
                self._core.on_neutral(ticket)  # the body never ran
                raise
        self._stack.push((ticket, start))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ticket, start = self._stack.pop()
        if self._timeout is not None:
            try:
                await self._timeout.__aexit__(exc_type, exc, tb)
            except BaseException as timeout_exc:
                self._record_exception(ticket, timeout_exc, start)
                raise
        if exc is None:
            self._record(ticket, _SUCCESS, start)
        else:
            self._record_exception(ticket, exc, start)
