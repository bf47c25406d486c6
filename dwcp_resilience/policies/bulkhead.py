"""``Bulkhead``: at most ``max_concurrent`` calls at once, a bounded FIFO wait queue, a max wait.

The semantics live in :class:`~dwcp_resilience.policies.bulkhead_core.BulkheadCore`; this module is
the async shell around it:

- a call takes a free permit at once (no await, no allocation, no clock read), or waits in the queue
  if one of ``max_queue`` places is free, else fails at once with
  :class:`~dwcp_resilience.BulkheadFull` (``reason="full"``). ``max_queue=0`` (the default) is the
  try-only mode: never wait;
- a waiter that has no permit after ``max_wait`` seconds fails with ``BulkheadFull``
  (``reason="timeout"``); ``max_wait=None`` waits as long as needed (or until cancelled);
- a released permit is handed straight to the oldest waiter (FIFO; newcomers never overtake it), and
  the waiter's queue place is given back as soon as its wait ends, not when its call ends;
- every permit comes back exactly once: on return, on exception, on cancellation while queued, on a
  wait timeout, and on cancellation right after the permit was handed over (it then goes on to the
  next waiter or back to the pool);
- ``resize(n)`` changes the permit count while calls run: new permits go to the oldest waiters
  first; a smaller count interrupts nothing, it admits no one until the calls in flight are under it.

Idioms: ``await bulkhead.call(fn, ...)``, ``@bulkhead``, ``async with bulkhead:``.

``statistics()`` carries what the Go metrics need: concurrent, queued, rejected, and the wait-duration
histogram (Prometheus ``DefBuckets``) as cumulative bucket counts, sum and count. Calls admitted at
once waited 0 s: they count in every bucket without reading the clock.
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from ..core._fused import WAIT, Admission
from ..core.clock import Clock, clock_sleeper, loop_time
from ..core.errors import BulkheadFull, not_callable
from ..core.policy import PolicyBase, check_decorated
from ..core.validate import check_name, check_number
from ._park import park, park_until, wake
from .bulkhead_core import WAITING, BulkheadCore, Permit

__all__ = ("Bulkhead", "BulkheadStatistics")

P = ParamSpec("P")
T = TypeVar("T")

_INF = math.inf

DEFAULT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Prometheus ``DefBuckets``: the upper bounds of the wait-duration histogram, in seconds."""


@dataclass(frozen=True, slots=True)
class BulkheadStatistics:
    """A snapshot of a bulkhead.

    :ivar name: the bulkhead's name.
    :ivar max_concurrent: the permit count.
    :ivar max_queue: the wait-queue capacity.
    :ivar concurrent: permits in use now, by running calls and by waiters just handed one
        (``bulkhead_concurrent``; above ``max_concurrent`` for a while after a :meth:`resize
        <Bulkhead.resize>` down).
    :ivar available: free permits now.
    :ivar queued: calls waiting now (``bulkhead_queued``).
    :ivar admitted: calls admitted so far (at once or after waiting).
    :ivar rejected: calls refused: queue full plus wait timeouts (``bulkhead_rejected_total``).
    :ivar rejected_full: of which, refused because the queue was full (or in try-only mode).
    :ivar timed_out: of which, refused because ``max_wait`` ran out.
    :ivar cancelled: waiting calls whose task was cancelled.
    :ivar wait_buckets: ``(upper bound, cumulative count)`` per bucket, ``inf`` last
        (``bulkhead_wait_duration_seconds``, over admitted calls).
    :ivar wait_sum: total seconds waited by admitted calls.
    :ivar wait_count: admitted calls observed (equals ``admitted``).
    """

    name: str
    max_concurrent: int
    max_queue: int
    concurrent: int
    available: int
    queued: int
    admitted: int
    rejected: int
    rejected_full: int
    timed_out: int
    cancelled: int
    wait_buckets: tuple[tuple[float, int], ...]
    wait_sum: float
    wait_count: int


class Bulkhead(PolicyBase):
    """Limit how many calls run at once, with a bounded FIFO wait queue.

    Args:
        name: the name used in errors, statistics and metrics.
        max_concurrent: how many calls may run at once; an int >= 1.
        max_queue: how many calls may wait for a permit; an int >= 0; 0 (the default): never wait.
        max_wait: the longest wait for a permit in seconds; ``None`` (the default) or ``inf``: no
            limit; 0: fail at once unless a permit is free.
        clock: a monotonic clock for waits and their measurement; ``None`` means the running
            loop's. A bounded wait on an injected clock runs through its ``sleep_until`` hook when
            it has one (``testing.FakeClock``), else for ``max_wait`` of the loop's time.

    Raises:
        ValueError: if ``max_concurrent`` < 1, ``max_queue`` < 0, or ``max_wait`` < 0 or NaN.
        TypeError: if an argument has the wrong type (``True`` as a number included).
    """

    __slots__ = ("_clock", "_core", "_max_wait", "_name", "_wait_counts", "_wait_sum")

    def __init__(
        self,
        name: str,
        *,
        max_concurrent: int,
        max_queue: int = 0,
        max_wait: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        # The permits and the queue: every take and return of a permit is decided there. The
        # core is held, not inherited, so that its bookkeeping methods are not the bulkhead's API.
        self._core = BulkheadCore(max_concurrent, max_queue)
        self._name = check_name(name)
        self._max_wait = (
            _INF
            if max_wait is None
            else check_number(max_wait, "max_wait", min_value=0.0, allow_inf=True)
        )
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a zero-argument callable, got {type(clock).__name__}")
        self._clock: Clock = loop_time if clock is None else clock
        self._wait_counts = [0] * (len(DEFAULT_BUCKETS) + 1)
        self._wait_sum = 0.0

    @property
    def name(self) -> str:
        return self._name

    @property
    def max_wait(self) -> float:
        return self._max_wait

    @property
    def max_concurrent(self) -> int:
        return self._core.max_concurrent

    @property
    def max_queue(self) -> int:
        return self._core.max_queue

    @property
    def available(self) -> int:
        """Free permits now."""
        return self._core.available

    @property
    def reserved(self) -> int:
        """Permits handed to waiters that have not resumed yet."""
        return self._core.reserved

    @property
    def running(self) -> int:
        """Permits held by running calls."""
        return self._core.running

    @property
    def in_use(self) -> int:
        """Permits in use now: by running calls and by waiters just handed one."""
        return self._core.in_use

    @property
    def queued(self) -> int:
        """Calls waiting now."""
        return self._core.queued

    def resize(self, max_concurrent: int) -> None:
        """Change how many calls may run at once, now, while calls run.

        A larger count admits waiters at once, oldest first; a smaller one interrupts nothing: calls
        in flight finish, and no call is admitted until fewer than ``max_concurrent`` run.

        Raises:
            ValueError: if ``max_concurrent`` < 1.
            TypeError: if it is not an int (``True`` included).
        """
        for permit in self._core.resize(max_concurrent):
            wake(permit)

    def __repr__(self) -> str:
        core = self._core
        busy = core.in_use
        return (
            f"<Bulkhead {self._name!r} {busy}/{core.max_concurrent} in use, "
            f"{core.queued}/{core.max_queue} waiting>"
        )

    def statistics(self) -> BulkheadStatistics:
        """A snapshot of the bulkhead's state, counters and wait histogram."""
        core = self._core
        at_once = core.admitted_at_once
        cumulative = at_once
        buckets: list[tuple[float, int]] = []
        for bound, count in zip((*DEFAULT_BUCKETS, _INF), self._wait_counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        admitted = at_once + core.admitted_after_wait
        return BulkheadStatistics(
            name=self._name,
            max_concurrent=core.max_concurrent,
            max_queue=core.max_queue,
            concurrent=core.in_use,
            available=core.available,
            queued=core.queued,
            admitted=admitted,
            rejected=core.rejected + core.timed_out,
            rejected_full=core.rejected,
            timed_out=core.timed_out,
            cancelled=core.cancelled,
            wait_buckets=tuple(buckets),
            wait_sum=self._wait_sum,
            wait_count=admitted,
        )

    # -- permits: taken by the core's try_enter (at once) or _wait (queued), returned by _exit --

    async def _wait(self) -> None:
        """Queue for a permit; return once this task holds one (then it must ``_exit``)."""
        core = self._core
        permit = core.enqueue()
        if permit is None:
            raise BulkheadFull(self._name, None, "full")
        clock = self._clock
        start = clock()
        deadline = start + self._max_wait
        timed_out = False
        read, sleep_until = clock, None  # the clock that keeps `deadline`, and its hook
        if clock is not loop_time and deadline < _INF:
            # An injected clock keeps its own time: its sleep_until hook (FakeClock) keeps the
            # deadline, else the loop's timer does, for max_wait of the loop's time.
            sleep_until = clock_sleeper(clock)
            if sleep_until is None:
                read = loop_time
                deadline = loop_time() + self._max_wait
        try:
            while permit.state == WAITING:
                if sleep_until is None:
                    woken = await park(permit, deadline)
                else:
                    woken = await park_until(permit, sleep_until, deadline)
                if permit.state == WAITING and (not woken or read() >= deadline):
                    core.abandon(permit, timed_out=True)
                    timed_out = True
                    break
        except BaseException:
            _wake(core.abandon(permit))
            raise
        if timed_out:
            raise BulkheadFull(self._name, None, "timeout")
        core.resume(permit)
        waited = clock() - start
        if waited > 0.0:  # a clock that stepped back counts as no wait
            self._wait_sum += waited
        else:
            waited = 0.0
        self._wait_counts[bisect_left(DEFAULT_BUCKETS, waited)] += 1

    def _exit(
        self, ticket: object = None, exc: BaseException | None = None, result: object = None
    ) -> None:
        """Give the permit of a call that ran back: to the oldest waiter, else to the pool.

        (The arguments make it the admission's ``exit`` too; a permit needs none of them.)
        """
        _wake(self._core.release())

    def _admission(self) -> Admission | None:
        """This bulkhead's fusable admission (see :mod:`~dwcp_resilience.core._fused`), or
        ``None`` for a subclass with its own ``call``."""
        if type(self).call is not Bulkhead.call:
            return None
        try_enter = self._core.try_enter

        def enter() -> object:
            return None if try_enter() else WAIT

        return Admission(enter, self._wait, self._exit, self)

    # -- the three idioms ------------------------------------------------------------------------

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` holding a permit.

        Raises:
            BulkheadFull: ``reason="full"`` if no permit is free and the queue is full (or
                ``max_queue`` is 0); ``reason="timeout"`` if ``max_wait`` ran out. ``fn`` is not run.
        """
        if not callable(fn):
            raise not_callable(fn)
        core = self._core
        if not core.try_enter():
            await self._wait()
        try:
            return await fn(*args, **kwargs)
        finally:
            handed = core.release()
            if handed is not None:
                wake(handed)

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """Decorate an ``async def``: each call runs holding a permit (as :meth:`call`).

        Raises:
            TypeError: if ``fn`` is a plain (synchronous) function.
        """
        check_decorated(fn, "Bulkhead")
        try_enter, release, wait = self._core.try_enter, self._core.release, self._wait

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            if not try_enter():
                await wait()
            try:
                return await fn(*args, **kwargs)
            finally:
                handed = release()
                if handed is not None:
                    wake(handed)

        return wrapper

    async def __aenter__(self) -> Bulkhead:
        if not self._core.try_enter():
            await self._wait()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit()


def _wake(permit: Permit | None) -> None:
    if permit is not None:
        wake(permit)
