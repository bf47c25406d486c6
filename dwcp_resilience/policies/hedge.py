"""``Hedge``: when an attempt is slow, start another of the same operation; the first success wins.

Two idioms over one engine::

    hedge = Hedge("lookup", delay=Percentile(0.95, fallback=0.05), max_hedged_attempts=1)
    await hedge.call(lookup, key)           # a call
    @hedge                                  # a decorator (same signature)
    async def lookup(key: str) -> bytes: ...

Only hedge idempotent operations: two attempts may both reach the server.

Semantics (Polly's hedging strategy, with failsafe-go's budget):

- The first attempt starts at once. While no attempt has succeeded, another starts each time the
  delay runs out, up to ``max_hedged_attempts`` extra attempts (default 1, at most 10). The delay is
  fixed seconds (default 2 s; ``0`` starts them all at once, ``inf`` hedges only after failures) or
  a :class:`~dwcp_resilience.Percentile` of the durations of recent successful
  attempts (with a fixed ``fallback`` until enough are known).
- The first attempt to succeed wins: the others are cancelled **and awaited** before the call
  returns (an anyio task group per call: no attempt outlives the call, on asyncio, uvloop and trio).
- An attempt that fails with an exception matched by ``hedge_on`` (default :data:`TRANSIENT_ERRORS`,
  ``OSError``: connection errors and timeouts) is out of the race, and the next attempt starts at
  once if one is left (Polly). With ``hedge_after_failure=False`` the next attempt keeps to the
  delay instead, and when no attempt is left running the failure ends the call: the hedge then acts
  on slowness only and leaves failures to a ``Retry`` outside it, which backs off (the manager's
  order puts the retry outside the hedge). Our own rejections (:class:`~dwcp_resilience.Rejected`,
  e.g. an inner breaker's ``CircuitOpen``) are out too, but the next attempt keeps to the delay (it would most
  likely be refused as well), and they never end a race another attempt may still win. Any other
  exception (a ``KeyError``, a ``NotCallable``) ends the race: the others are cancelled and the
  caller gets it, as Polly treats an unhandled outcome.
- When no attempt succeeds, the caller gets the last attempt's exception (a real failure is
  preferred over one of our rejections), with a note saying how many attempts started and why
  it ended. Never a wrapper, never an exception group.
- Cancelling the caller cancels every attempt, awaits them, and propagates the cancellation; it is
  never swallowed or turned into a failure. ``KeyboardInterrupt`` and ``SystemExit`` in any attempt
  cancel the others and reach the caller unwrapped.
- **Budget**: hedged attempts are charged to a :class:`~dwcp_resilience.RetryBudget` (the same
  sliding window: at most ``budget_ratio`` hedges per call over ``budget_window`` seconds, or
  ``min_hedges_per_second`` per second, whichever is more), so a slow backend is not hit twice as
  hard. When it refuses, that call starts no more attempts (the running ones go on; failsafe-go
  #141 cancelled them). ``budget=`` shares one budget (e.g. with a ``Retry`` of another stack of
  the same dependency); ``budget_ratio=None`` hedges without a budget.
- Code in an attempt can ask which one it is: :func:`hedge_attempt` (1 for the first), e.g. to use
  a fresh connection for a hedged attempt (Polly's action generator).

Cost: a task group and one scheduler task per call (the first attempt runs in the caller's task),
so a hedge costs tens of microseconds on asyncio even when no hedge fires: worth it for calls of a
millisecond or more, not around in-memory work (``bench --only hedge``).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar, cast

import anyio
import anyio.abc

from ..core.clock import Clock, loop_time, sleep_for
from ..core.errors import not_callable
from ..core.outcome import ExceptionMatcher
from ..core.policy import PolicyBase
from .hedge_core import (
    DEFAULT_HEDGE_DELAY,
    HedgeBudgetExhausted,
    HedgeCore,
    HedgeEvent,
    HedgeOptions,
    HedgeStarted,
    HedgeStatistics,
    HedgeWon,
)
from .hedge_delay import Percentile
from .hedge_race import Race
from .retry_budget import RetryBudget
from .retry_core import TRANSIENT_ERRORS

__all__ = (
    "Hedge",
    "HedgeBudgetExhausted",
    "HedgeEvent",
    "HedgeOptions",
    "HedgeStarted",
    "HedgeStatistics",
    "HedgeWon",
    "Percentile",
    "hedge_attempt",
)

P = ParamSpec("P")
T = TypeVar("T")

_INF = math.inf
_attempt: ContextVar[int] = ContextVar("dwcp_resilience_hedge_attempt", default=1)
_attempt_get = _attempt.get


def hedge_attempt() -> int:
    """The number of the hedge attempt the calling code runs in: 1 in a first attempt and outside
    any hedge, ``n`` in the ``n``-th attempt of the innermost :class:`Hedge`."""
    return _attempt_get()


class Hedge(HedgeCore, PolicyBase):
    """Start another attempt when one is slow; the first success wins (module docstring).

    Args:
        name: the policy's name (events, metrics, notes).
        delay: seconds before each further attempt (``0``: all at once; ``inf``: only after a
            failure), or a :class:`Percentile` of recent successful attempts' durations.
        max_hedged_attempts: extra attempts at most (1 to 10; default 1).
        hedge_on: which exceptions put an attempt out of the race and start the next at once
            (a type, a tuple of types or a predicate; default :data:`TRANSIENT_ERRORS`); any
            other exception ends the race.
        hedge_after_failure: start the next attempt at once after a ``hedge_on`` failure
            (default True); False: keep to the delay (hedge on slowness only).
        budget: a shared :class:`RetryBudget` that must grant each hedged attempt.
        budget_ratio: without ``budget``: the hedge's own budget allows this many hedged attempts
            per call (default 0.1); ``None`` for no budget.
        min_hedges_per_second: the own budget's floor (default 1.0 per second of window).
        budget_window: the own budget's window in seconds (default 10).
        clock: the clock (default: the running loop's); delays are waited on it.
        listeners: callables receiving :class:`HedgeStarted`, :class:`HedgeWon` and
            :class:`HedgeBudgetExhausted` events.

    Raises:
        TypeError, ValueError: invalid configuration (the message names the field), including
            ``budget`` given with the own budget's options changed.
    """

    __slots__ = ()

    def __init__(
        self,
        name: str,
        *,
        delay: float | Percentile = DEFAULT_HEDGE_DELAY,
        max_hedged_attempts: int = 1,
        hedge_on: ExceptionMatcher = TRANSIENT_ERRORS,
        hedge_after_failure: bool = True,
        budget: RetryBudget | None = None,
        budget_ratio: float | None = 0.1,
        min_hedges_per_second: float = 1.0,
        budget_window: float = 10.0,
        clock: Clock | None = None,
        listeners: Iterable[Callable[[HedgeEvent], None]] = (),
    ) -> None:
        super().__init__(
            name,
            delay=delay,
            max_hedged_attempts=max_hedged_attempts,
            hedge_on=hedge_on,
            hedge_after_failure=hedge_after_failure,
            budget=budget,
            budget_ratio=budget_ratio,
            min_hedges_per_second=min_hedges_per_second,
            budget_window=budget_window,
            clock=loop_time if clock is None else clock,
            listeners=listeners,
        )

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)``, hedged as configured; return the first success.

        Raises:
            Exception: the exception that ended the race, or the last attempt's (with a note).
        """
        if not callable(fn):
            raise not_callable(fn)
        start = self._clock()
        race = self.begin(start)
        token = _attempt.set(1) if _attempt_get() != 1 else None  # inside another hedge's attempt
        try:
            async with anyio.create_task_group() as group:
                race.group = group
                group.start_soon(self._schedule, race, fn, args, kwargs)
                # Attempt 1 runs in the caller's task (one task fewer per call).
                try:
                    result = await fn(*args, **kwargs)
                except Exception as exc:
                    self._attempt_failed(race, exc)
                except (KeyboardInterrupt, SystemExit) as exc:
                    _interrupt(race, exc)
                else:
                    self._attempt_won(race, 1, result, start)
        except BaseException:
            if not race.decided:
                self.interrupted()
            raise
        finally:
            if token is not None:
                _attempt.reset(token)
            race.group = race.sleeper = None
        if race.fatal is not None:
            if not race.decided:
                self.interrupted()
            fatal, race.fatal = race.fatal, None
            raise fatal
        if race.winner:
            return cast(T, race.result)
        error = self.gave_up(race)
        race.error = None  # no reference cycle through the race
        raise error

    # --- the tasks of one call ------------------------------------------------------------------

    async def _schedule(
        self,
        race: Race,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """Start each further attempt when it is due (the core says when), until none is left."""
        clock = self._clock
        group = race.group
        assert isinstance(group, anyio.abc.TaskGroup)
        while True:
            due = race.next_start()
            if due is None:
                return
            now = clock()
            if due > now:
                with anyio.CancelScope() as scope:  # an attempt's end cancels it: decide again
                    race.sleeper = scope
                    if due == _INF:
                        await anyio.sleep_forever()
                    else:
                        await sleep_for(clock, due - now)
                race.sleeper = None
                if scope.cancel_called or race.next_start() is None:
                    continue
                # The timer ran out: the delay is over, whatever a clock rounder than the timer
                # reads (looptime, uvloop's milliseconds): no second look, which could spin.
                now = clock()
            number = self.launch(race, now)
            if number == 0:  # the budget refused: this call starts no more attempts
                return
            group.start_soon(self._hedged, race, number, now, fn, args, kwargs)

    async def _hedged(  # noqa: PLR0917 - internal, positional (start_soon passes no keywords)
        self,
        race: Race,
        number: int,
        start: float,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """Attempt ``number`` (>= 2), in its own task of the call's group."""
        _attempt.set(number)  # this task's own context: seen by the attempt only
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            self._attempt_failed(race, exc)
        except (KeyboardInterrupt, SystemExit) as exc:
            _interrupt(race, exc)
        else:
            self._attempt_won(race, number, result, start)

    def _attempt_failed(self, race: Race, exc: Exception) -> None:
        if self.failed(race, exc):
            _cancel(race.group)  # it ends the race: stop the others
        else:
            _wake(race)  # the scheduler decides again: start the next at once, or stop

    def _attempt_won(self, race: Race, number: int, result: object, start: float) -> None:
        if not self.succeeded(race, number, result, self._clock() - start):
            return
        if race.started == 1:
            _wake(race)  # only the scheduler runs: it sees the race decided and returns
        else:
            _cancel(race.group)


def _cancel(group: object) -> None:
    assert isinstance(group, anyio.abc.TaskGroup)
    group.cancel_scope.cancel()


def _wake(race: Race) -> None:
    sleeper = race.sleeper
    if sleeper is not None:
        assert isinstance(sleeper, anyio.CancelScope)
        sleeper.cancel()


def _interrupt(race: Race, exc: BaseException) -> None:
    """``KeyboardInterrupt``/``SystemExit`` in an attempt: stop every attempt, and re-raise it
    unwrapped after the group (raised inside, a task group would wrap it in a group)."""
    if race.fatal is None:
        race.fatal = exc
    _cancel(race.group)
