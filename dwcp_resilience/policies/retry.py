"""``Retry``: run a call again after a failure, with backoff, budgets and deadlines.

Three idioms over one engine::

    retry = Retry("fetch", max_retries=3, retry_on=ConnectionError)
    await retry.call(fetch, url)            # a call
    @retry                                  # a decorator (same signature)
    async def fetch(url: str) -> bytes: ...
    async for attempt in retry:             # a block
        with attempt:
            await fetch(url)

Semantics:

- At most ``max_retries + 1`` attempts.
- Which exceptions are retried is ``retry_on`` (a type, a tuple of types, or a predicate; types look
  inside exception groups). The default is :data:`TRANSIENT_ERRORS`, ``(OSError,)``: connection
  errors, timeouts (``TimeoutError``, hence an inner :class:`~dwcp_resilience.Timeout`'s
  ``DeadlineExceeded``) and other I/O errors. A programming error (``TypeError``, ``KeyError``) is
  never worth retrying, so it is not retried unless asked: pass ``retry_on=Exception`` to retry
  everything as the Go package did. A predicate that raises is logged and means "do not retry".
- ``CancelledError``, ``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit`` (anything that is not an
  ``Exception``) are never caught, never retried, never counted as failures.
- Our own rejections (:class:`~dwcp_resilience.Rejected`: open breaker, full bulkhead...) are not
  retried, whatever ``retry_on`` says. With ``wait_rejected=True`` the retry waits the rejection's
  ``retry_after`` when it is known, is at most ``max_retry_after`` and fits the deadline, and gives
  up otherwise (reason ``rejected``).
- A value may be retried too: ``retry_on_result(value)`` true means "try again"; when the retries run
  out the last value is returned (there is no exception to raise).
- Server hints: after a retryable failure, ``retry_after(exception or result)`` may return the
  server's hint (seconds or a ``timedelta``); the default reads a ``retry_after`` attribute
  (:func:`retry_after_attribute`), and :func:`dwcp_resilience.http.retry_after_hint` reads an HTTP
  response's ``Retry-After`` header. A hint replaces the backoff delay, and is waited in full even
  above ``max_delay``, which bounds only the backoff's own delays: a server that says "come back in
  5 s" is not asked again after 1 s. A hint above ``max_retry_after`` (default 60 s), or an
  infinite one, gives up at once (reason ``retry_after``) and the caller gets the last exception or
  result: waiting less than the server asked would most likely be refused again. Negative hints
  count as 0; ``None``, NaN, other types and a reader that raises (logged) fall back to the backoff.
  ``respect_retry_after=False`` ignores every hint. The reader runs only on the failure path.
- Deadlines: ``total_timeout`` (from the first attempt) and the enclosing deadline
  (:func:`~dwcp_resilience.current_deadline`, set by an ``OperationContext`` or an enclosing
  ``Timeout``) bound the whole call. No backoff sleep begins, and so no attempt starts, unless it can
  finish before the deadline: ``now + delay + (duration of the failed attempt)`` must fall before it.
  ``total_timeout`` does not cancel a running attempt (put a ``Timeout`` inside the retry for that).
- Budgets: a shared :class:`~dwcp_resilience.policies.retry_budget.RetryBudget` counts every call and
  must grant every retry.
- Giving up re-raises the last real exception, with a note (``exc.add_note``) saying how many
  attempts were made and why the retry stopped. No wrapper hides its type.
- The backoff sleep is ``anyio.sleep``: cancellable on every backend; a cancel during it propagates
  at once and no further attempt starts. With an injected ``clock`` that has a ``sleep_until`` hook
  (:class:`~dwcp_resilience.WaitableClock`, such as ``testing.FakeClock``) the sleep runs on that
  clock instead.

The block form retries exceptions only (``retry_on_result`` needs a value it cannot see).

The first-attempt success path is a plain ``try: await fn(*args, **kwargs)`` plus one integer
increment: no allocation beyond the call's own arguments, no clock read, no contextvar read (unless
``total_timeout``, a budget or ``retry_on_result`` is configured). The decorator inlines that path
in its wrapper, so ``@retry`` adds one coroutine frame, like a hand-written ``try``/``except``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, cast

from ..core.clock import sleep_for
from ..core.context import current_deadline
from ..core.errors import not_callable
from ..core.policy import PolicyBase, check_decorated
from .retry_core import (
    TRANSIENT_ERRORS,
    HintReader,
    RetryCore,
    RetryEvent,
    RetryGaveUp,
    RetryOptions,
    RetryScheduled,
    RetryStatistics,
    retry_after_attribute,
)

__all__ = (
    "Attempt",
    "HintReader",
    "Retry",
    "RetryEvent",
    "RetryGaveUp",
    "RetryOptions",
    "RetryScheduled",
    "RetryStatistics",
    "TRANSIENT_ERRORS",
    "retry_after_attribute",
)

P = ParamSpec("P")
T = TypeVar("T")

_INF = math.inf


class Retry(RetryCore, PolicyBase):
    """Retry failed calls with backoff (module docstring for the full semantics).

    Args:
        name: the policy's name (errors, events, metrics).
        max_retries: retries after the first attempt (attempts = max_retries + 1; 0 = no retry).
        backoff: the delay schedule (default ``ExponentialBackoff(0.1, 10.0, 2.0, jitter=True)``).
        retry_on: which exceptions are retried (default :data:`TRANSIENT_ERRORS`).
        retry_on_result: a predicate over returned values: true means "try again".
        rng: the jitter source (a seeded ``random.Random`` makes delays deterministic).
        total_timeout: seconds from the first attempt after which no attempt starts (``inf`` or
            ``None``: no cap of its own; the enclosing deadline always applies).
        budget: a :class:`RetryBudget`, usually shared, that must grant each retry.
        wait_rejected: wait a ``Rejected``'s ``retry_after`` and try again (default: give up).
        respect_retry_after: honour server hints on exceptions and results (default True).
        retry_after: reads the hint from a failed attempt's exception or retried result:
            ``(outcome) -> seconds | timedelta | None`` (default :func:`retry_after_attribute`;
            :func:`dwcp_resilience.http.retry_after_hint` for HTTP responses).
        max_retry_after: the longest hint waited, in seconds (default 60; ``inf``: any finite
            hint). A longer hint gives up. ``max_delay`` does not bound hints.
        clock: the clock (default: the running loop's); backoff sleeps run on it when it has a
            ``sleep_until`` hook, else on the loop's timer.
        listeners: callables receiving :class:`RetryScheduled` and :class:`RetryGaveUp` events.

    Raises:
        TypeError, ValueError: invalid configuration (the message names the field), including
            ``retry_after`` given with ``respect_retry_after=False``.
    """

    __slots__ = ()

    async def _retry_loop(  # noqa: PLR0917 - internal, positional for speed
        self,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        exc: Exception | None,
        result: Any,
        start: float | None,
        deadline: float,
    ) -> Any:
        """Continue a call whose first attempt failed (``exc``) or returned a retryable ``result``."""
        self._first_failed += 1
        clock = self._clock
        attempt = 1
        prev: float | None = None
        attempt_start = start
        try:
            while True:
                now = clock()
                duration = 0.0 if attempt_start is None else max(0.0, now - attempt_start)
                outer = current_deadline()
                plan = self._plan(
                    attempt,
                    exc,
                    result,
                    now,
                    duration,
                    prev,
                    outer if outer < deadline else deadline,
                )
                if isinstance(plan, str):
                    self._gave_up(attempt, exc, plan, now)
                    if exc is not None:
                        raise exc
                    return result
                self._scheduled(attempt, exc, plan, now)
                exc = result = None
                await sleep_for(clock, plan)
                prev = plan
                attempt += 1
                attempt_start = clock()
                self._count_attempt(attempt)
                try:
                    result = await fn(*args, **kwargs)
                except Exception as error:
                    exc = error
                    continue
                if not self._result_retryable(result):
                    self._later_ok += 1
                    return result
        finally:
            exc = None  # break the frame <-> traceback cycle

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)``, retrying as configured; return its result.

        Raises:
            Exception: the last attempt's exception (with a note) when the retry gives up.
            DeadlineExceeded: when the deadline has passed before the first attempt (only checked
                with ``total_timeout`` or a budget; otherwise an enclosing ``Timeout`` enforces it).
        """
        if not callable(fn):
            raise not_callable(fn)
        failure: Exception
        if self._plain:
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                failure = exc
            except BaseException:
                self._first_interrupted += 1
                raise
            else:
                self._first_ok += 1
                return result
            return cast(T, await self._retry_loop(fn, args, kwargs, failure, None, None, _INF))
        start, deadline = self._start()
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            failure = exc
        except BaseException:
            self._first_interrupted += 1
            raise
        else:
            if self._retry_on_result is None or not self._result_retryable(result):
                self._first_ok += 1
                return result
            return cast(T, await self._retry_loop(fn, args, kwargs, None, result, start, deadline))
        return cast(T, await self._retry_loop(fn, args, kwargs, failure, None, start, deadline))

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """Decorate an ``async def`` so every call is retried (the first attempt runs inline).

        Raises:
            TypeError: if ``fn`` is a plain (synchronous) function.
        """
        check_decorated(fn, type(self).__name__)
        if not self._plain:
            return super().__call__(fn)
        retry = self
        retry_loop = self._retry_loop

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            failure: Exception
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                failure = exc
            except BaseException:
                retry._first_interrupted += 1
                raise
            else:
                retry._first_ok += 1
                return result
            return cast(T, await retry_loop(fn, args, kwargs, failure, None, None, _INF))

        return wrapper

    # --- the block form -----------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Attempt]:
        """``async for attempt in retry: with attempt: ...`` (a fresh iterator per loop)."""
        return _Attempts(self)


class Attempt:
    """One attempt of the block form: use it as ``with attempt:`` around the attempt's code.

    An exception the retry will retry is swallowed (the loop goes on after the backoff); any other
    exception propagates, with a note when the retry gave up. ``number`` is 1 for the first attempt.
    """

    __slots__ = ("_owner", "number")

    def __init__(self, owner: _Attempts, number: int) -> None:
        self._owner = owner
        self.number = number

    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
        return self._owner.finish(self.number, exc)

    def __repr__(self) -> str:
        return f"<Attempt {self.number} of {self._owner.retry.name!r}>"


class _Attempts:
    """Per-loop state of the block form (never shared between loops)."""

    __slots__ = ("_attempt_start", "_deadline", "_delay", "_number", "_prev", "retry")

    def __init__(self, retry: Retry) -> None:
        self.retry = retry
        self._number = 0
        self._delay: float | None = None
        self._prev: float | None = None
        self._attempt_start: float | None = None
        self._deadline = _INF

    def __aiter__(self) -> _Attempts:
        return self

    async def __anext__(self) -> Attempt:
        retry = self.retry
        if self._number == 0:
            if not retry._plain:
                self._attempt_start, self._deadline = retry._start()
            self._number = 1
            return Attempt(self, 1)
        delay = self._delay
        if delay is None:  # the last attempt succeeded (or recorded nothing): done
            raise StopAsyncIteration
        self._delay = None
        await sleep_for(retry._clock, delay)
        self._prev = delay
        self._number += 1
        self._attempt_start = retry._clock()
        retry._count_attempt(self._number)
        return Attempt(self, self._number)

    def finish(self, number: int, exc: BaseException | None) -> bool:
        """Record attempt ``number``'s outcome; return True to swallow ``exc`` (a retry follows)."""
        retry = self.retry
        if number != self._number or self._delay is not None:
            raise RuntimeError("an Attempt was exited out of order")
        first = number == 1
        if exc is None:
            if first:
                retry._first_ok += 1
            else:
                retry._later_ok += 1
            return False
        if not isinstance(exc, Exception):
            if first:  # cancellation, KeyboardInterrupt, ...: never retried, never a failure
                retry._first_interrupted += 1
            return False
        if first:
            retry._first_failed += 1
        now = retry._clock()
        start = self._attempt_start
        duration = 0.0 if start is None else max(0.0, now - start)
        outer = current_deadline()
        deadline = outer if outer < self._deadline else self._deadline
        plan = retry._plan(number, exc, None, now, duration, self._prev, deadline)
        if isinstance(plan, str):
            retry._gave_up(number, exc, plan, now)
            return False
        retry._scheduled(number, exc, plan, now)
        self._delay = plan
        return True
