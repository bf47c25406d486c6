"""``RateLimiter``: a token bucket on the loop clock, with FIFO waiting.

The semantics live in :class:`~dwcp_resilience.policies.ratelimit_core.TokenBucket` (GCRA form: the
bucket starts full, refills continuously at ``rate`` tokens per second up to ``burst``, with no
background task and no drift). This module is the async shell around it:

- ``try_acquire(n=1) -> bool`` never waits;
- ``await acquire(n=1, max_wait=None)`` takes the tokens at once when they are there and nobody is
  queued, else queues (first in, first out) for them. When its admission time lies past
  ``now + max_wait`` (or past the enclosing deadline, see :class:`~dwcp_resilience.OperationContext`)
  it raises :class:`~dwcp_resilience.RateLimited` at once, with ``retry_after`` set to when the tokens
  would be there, and reserves nothing;
- ``n > burst`` raises ``ValueError`` at once (it could never be served; the choice of aiolimiter and
  of Go's ``rate.Limiter.WaitN``), as do ``n < 1`` and a non-int ``n``;
- ``await limiter.call(fn, ...)``, ``@limiter`` and ``async with limiter:`` take one token, waiting
  up to the limiter's ``max_wait`` (``None``: as long as needed; ``0``: never wait). When the token
  is there, ``call`` takes it at once and hands back the callee's own awaitable, so the limiter adds
  no coroutine layer (a layer costs on every suspension of the callee); the token is taken when
  ``call`` is called, not when its result is awaited.

Waiters are woken without polling: only the head of the queue sleeps on a timer (its admission time);
when it is granted it wakes the next waiter, which takes the timer over. Each admission costs O(1)
wakeups however many tasks wait (aiolimiter#73). A waiter cancelled after it was granted but before it
resumed gives its tokens back, and the waiters behind a cancelled one move forward.

The uncontended path awaits nothing (no checkpoint), allocates nothing and reads the clock once,
through the one cache of the running loop's clock in ``core/_runtime.py``: ``time.monotonic()`` on a
stock asyncio loop (what its ``loop.time()`` returns), ``loop.time()`` elsewhere (uvloop, looptime),
the trio clock on trio, or the injected ``clock=``. Every entry point admits at once through the one
decision, :meth:`TokenBucket.take <dwcp_resilience.policies.ratelimit_core.TokenBucket.take>`.
Counters are plain ints: ``statistics()`` carries what the Go metrics need (allowed, rejected,
current rate).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from ..core._fused import WAIT, Admission
from ..core.clock import Clock, clock_sleeper, loop_time
from ..core.context import deadline_var
from ..core.errors import RateLimited, not_callable
from ..core.policy import PolicyBase, check_decorated
from ..core.validate import check_name, check_number
from ._park import park, park_until, wake
from .ratelimit_core import DONE, QUEUED, REJECTED, TOLERANCE, Ticket, TokenBucket

__all__ = ("RateLimiter", "RateLimiterStatistics")

P = ParamSpec("P")
T = TypeVar("T")

_INF = math.inf
_STILL_LIMIT = 1.0
"""Seconds of loop time an injected clock without a ``sleep_until`` hook may stand still while a
request waits on it before the wait is refused (a monotonic clock never does)."""
_deadline_get = deadline_var.get


@dataclass(frozen=True, slots=True)
class RateLimiterStatistics:
    """A snapshot of a rate limiter.

    :ivar name: the limiter's name.
    :ivar rate: tokens per second now (the ``rate_limiter_current_rate`` gauge).
    :ivar burst: the bucket's capacity.
    :ivar tokens: tokens a new request could take now.
    :ivar allowed: requests admitted (``rate_limiter_allowed_total``).
    :ivar rejected: requests refused: ``try_acquire`` false, or no tokens in time
        (``rate_limiter_rejected_total``).
    :ivar cancelled: waiting requests whose task was cancelled.
    :ivar waiting: requests queued (or granted and not yet resumed) now.
    """

    name: str
    rate: float
    burst: int
    tokens: float
    allowed: int
    rejected: int
    cancelled: int
    waiting: int


def _check_clock(clock: object) -> Clock | None:
    if clock is not None and not callable(clock):
        raise TypeError(f"clock must be a zero-argument callable, got {type(clock).__name__}")
    return clock


class RateLimiter(PolicyBase):
    """A token-bucket rate limiter: ``rate`` tokens per second, at most ``burst`` at once.

    Args:
        name: the name used in errors, statistics and metrics.
        rate: tokens per second; finite and > 0.
        burst: the bucket's capacity (it starts full) and the largest single request; an int >= 1.
        max_wait: how long ``call``, ``@limiter`` and ``async with`` may wait for a token (and the
            default of ``acquire``); ``None`` (the default) or ``inf``: as long as needed; ``0``: never.
        clock: a monotonic clock (``Callable[[], float]``); ``None`` means the running loop's.
            A waiter on an injected clock waits through its ``sleep_until`` hook when it has one
            (:class:`~dwcp_resilience.WaitableClock`, such as ``testing.FakeClock``); otherwise it
            sleeps on the loop's timer, so the clock must move with the loop's (one that stands
            still for a second of loop time while a request waits raises ``RuntimeError``).

    Raises:
        ValueError: if ``rate`` is NaN, infinite or <= 0, ``burst`` < 1, or ``max_wait`` < 0 or NaN.
        TypeError: if an argument has the wrong type (``True`` as a number included).
    """

    __slots__ = ("_bucket", "_clock", "_max_wait", "_name", "_now")

    def __init__(
        self,
        name: str,
        *,
        rate: float,
        burst: int,
        max_wait: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        # The bucket decides every admission (TokenBucket.take) and keeps the FIFO queue; it is
        # held, not inherited, so that its bookkeeping (reserve, grant_due, ...) is not public API.
        self._bucket = TokenBucket(rate, burst)
        self._name = check_name(name)
        self._max_wait = _INF if max_wait is None else _check_wait(max_wait)
        # The running loop's own clock, however it is passed, is read through the one cache.
        self._clock = None if clock is loop_time else _check_clock(clock)
        # The clock reading, as one call: the injected clock, else the running loop's.
        self._now: Clock = loop_time if self._clock is None else self._clock

    @property
    def name(self) -> str:
        return self._name

    @property
    def max_wait(self) -> float:
        """The default wait bound (``inf``: as long as needed)."""
        return self._max_wait

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return self._bucket.rate

    @property
    def burst(self) -> int:
        """The bucket's capacity."""
        return self._bucket.burst

    @property
    def waiting(self) -> int:
        """Requests queued (or granted and not yet resumed) now."""
        return self._bucket.waiting

    def __repr__(self) -> str:
        bucket = self._bucket
        return (
            f"<RateLimiter {self._name!r} rate={bucket.rate:g}/s burst={bucket.burst} "
            f"[tokens {bucket.tokens(self._now()):.3g}, waiting {bucket.waiting}]>"
        )

    def statistics(self) -> RateLimiterStatistics:
        """A snapshot of the limiter's counters and state."""
        bucket = self._bucket
        return RateLimiterStatistics(
            name=self._name,
            rate=bucket.rate,
            burst=bucket.burst,
            tokens=bucket.tokens(self._now()),
            allowed=bucket.allowed + bucket.allowed_waited,
            rejected=bucket.rejected,
            cancelled=bucket.cancelled,
            waiting=bucket.waiting,
        )

    def set_rate(self, rate: float, burst: int | None = None) -> None:
        """Change the rate (and the burst) now, keeping the tokens there and the queue's order.

        Queued requests larger than a smaller new burst fail with ``RateLimited``.
        """
        bucket = self._bucket
        evicted = bucket.reconfigure(rate, bucket.burst if burst is None else burst, self._now())
        for ticket in evicted:
            wake(ticket)
        head = bucket.head()
        if head is not None:
            wake(head)  # its admission time moved: let it re-arm its timer

    def reset(self) -> None:
        """Refill the bucket and forget the clock readings it has seen, as if just built; the
        counters of :meth:`statistics` are kept (they only grow, like the metrics they feed).

        For tests that share a module-level limiter between event loops whose clocks start afresh
        (looptime starts each loop at 0): without it, the bucket reads a new loop's early times as
        a clock that stepped back, and refills only once the new clock passes the old readings.

        Raises:
            RuntimeError: if requests are waiting.
        """
        if self._bucket.waiting:
            raise RuntimeError(
                f"RateLimiter {self._name!r}: reset() with {self._bucket.waiting} requests waiting"
            )
        self._bucket.refill()

    # -- acquiring -------------------------------------------------------------------------------

    def try_acquire(self, n: int = 1) -> bool:
        """Take ``n`` tokens now if they are there and nobody waits; never waits.

        Raises:
            ValueError: if ``n`` < 1 or ``n`` > ``burst``.
        """
        bucket = self._bucket
        if n.__class__ is not int or n != 1:
            bucket.check_n(n)
        if bucket.take(n, self._now()):
            return True
        bucket.rejected += 1
        return False

    async def acquire(self, n: int = 1, max_wait: float | None = None) -> None:
        """Take ``n`` tokens, waiting (FIFO) up to ``max_wait`` seconds for them.

        Args:
            n: how many tokens; ``1 <= n <= burst``.
            max_wait: the longest wait; ``None`` means the limiter's ``max_wait``.

        Raises:
            RateLimited: at once, if the tokens cannot be had within ``max_wait`` (nor before the
                enclosing deadline); ``retry_after`` says when they would be there.
            ValueError: if ``n`` < 1 or ``n`` > ``burst`` (never queued), or ``max_wait`` < 0.
        """
        if n.__class__ is not int or n != 1:
            self._bucket.check_n(n)
        now = self._now()
        if not self._bucket.take(n, now):
            await self._wait(n, now, max_wait)

    async def _wait(self, n: int, now: float, max_wait: float | None) -> None:
        """Queue (FIFO) for ``n`` tokens that were not there at ``now``, up to ``max_wait``."""
        bucket = self._bucket
        limit = self._max_wait if max_wait is None else _check_wait(max_wait)
        deadline = min(now + limit, _deadline_get())
        ticket = bucket.reserve(n, now, deadline)
        still_since = _INF  # loop time since which an injected clock without a hook stood still
        if ticket.state != QUEUED:
            if ticket.state == DONE:
                return
            raise RateLimited(self._name, ticket.ready_at - now)
        try:
            while ticket.state == QUEUED:
                if bucket.head() is ticket:
                    ready = bucket.head_ready_at(now)
                    if self._clock is None:
                        woken = await park(ticket, ready)
                        now = self._now()
                        if not woken and now < ready:  # the loop's timer fired a tick early
                            now = ready
                    elif (sleep_until := clock_sleeper(self._clock)) is not None:
                        # An injected clock that can wait (FakeClock): it wakes the head when it
                        # reads `ready` (less the core's float tolerance, from which on the head
                        # is granted), or refuses the wait itself.
                        await park_until(ticket, sleep_until, ready - TOLERANCE)
                        now = self._now()
                    else:
                        now, still_since = await self._sleep_on_loop(
                            ticket, now, ready, still_since
                        )
                    self._dispatch(now, ticket)
                else:
                    await park(ticket)
                    now = self._now()
        except BaseException:
            now = self._now()
            if bucket.abandon(ticket, now):
                self._dispatch(now, ticket)
            raise
        if ticket.state == REJECTED:  # the burst shrank below n while it waited (set_rate)
            raise RateLimited(self._name, None)
        bucket.finish(ticket)

    async def _sleep_on_loop(
        self, ticket: Ticket, now: float, ready: float, still_since: float
    ) -> tuple[float, float]:
        """The head's sleep on an injected clock without a ``sleep_until`` hook: on the loop's
        timer, for as long as that clock says is left; returns its new reading, and the loop time
        since which it stands still (``inf``: it moved). One that stands still for a second of
        loop time does not move with the loop's: refuse, never spin (in virtual time the loop
        would jump ahead for ever)."""
        woken = await park(ticket, loop_time() + (ready - now))
        before, now = now, self._now()
        if woken or now != before:
            return now, _INF
        if still_since == _INF:
            return now, loop_time()
        if loop_time() - still_since < _STILL_LIMIT:
            return now, still_since
        raise RuntimeError(
            f"RateLimiter {self._name!r}: its clock= {self._clock!r} stood still at {now!r} for "
            f"{_STILL_LIMIT:g} s of the loop's time while a request waited; a waiter sleeps on "
            "the loop's timer, so an injected clock must move with the loop's, or have a "
            "sleep_until() hook (dwcp_resilience.testing.FakeClock has one)"
        )

    def _dispatch(self, now: float, current: Ticket) -> None:
        bucket = self._bucket
        for ticket in bucket.grant_due(now):
            if ticket is not current:
                wake(ticket)
        head = bucket.head()
        if head is not None and head is not current:
            wake(head)  # the (new) head takes the timer over

    def _admission(self) -> Admission | None:
        """This limiter's fusable admission (see :mod:`~dwcp_resilience.core._fused`), or
        ``None`` for a subclass with its own ``call``."""
        if type(self).call is not RateLimiter.call:
            return None
        take, read, wait = self._bucket.take, self._now, self._wait

        def enter() -> object:
            return None if take(1, read()) else WAIT

        async def wait_() -> object:
            await wait(1, read(), None)
            return None

        # take_at: only on the running loop's clock, which is what a composer reads.
        take_at = functools.partial(take, 1) if self._clock is None else None
        return Admission(enter, wait_, None, self, take_at=take_at)

    # -- the three idioms ------------------------------------------------------------------------

    def call(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, T]:
        """Take one token (waiting up to ``max_wait``), then run ``fn(*args, **kwargs)``.

        Use it as ``await limiter.call(fn, ...)``. When the token is there, the token is taken
        right away and the callee's own awaitable is returned: the limiter adds no coroutine
        layer, so it costs nothing each time the callee suspends and resumes. Otherwise a
        coroutine that waits for the token first is returned.

        Raises:
            RateLimited: (when awaited) if no token can be had in time; ``fn`` is not run.
        """
        if not callable(fn):
            raise not_callable(fn)
        now = self._now()
        if self._bucket.take(1, now):
            return fn(*args, **kwargs)  # type: ignore[return-value]
        return self._call_waiting(now, fn, args, kwargs)

    async def _call_waiting(
        self,
        now: float,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> T:
        await self._wait(1, now, None)
        return await fn(*args, **kwargs)

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """Decorate an ``async def``: each call takes one token (as :meth:`call`) first.

        Raises:
            TypeError: if ``fn`` is a plain (synchronous) function.
        """
        check_decorated(fn, "RateLimiter")
        read, take, wait = self._now, self._bucket.take, self._wait

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            now = read()
            if not take(1, now):
                await wait(1, now, None)
            return await fn(*args, **kwargs)

        return wrapper

    async def __aenter__(self) -> RateLimiter:
        now = self._now()
        if not self._bucket.take(1, now):
            await self._wait(1, now, None)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


def _check_wait(max_wait: object) -> float:
    return check_number(max_wait, "max_wait", min_value=0.0, allow_inf=True)
