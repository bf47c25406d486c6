"""Time: one monotonic clock, the running event loop's.

:func:`loop_time` is the default clock of every primitive. It reads ``loop.time()`` on asyncio and
uvloop (so looptime's virtual time is honoured) and ``trio.current_time()`` on trio (so
``MockClock`` is honoured). Outside any loop it falls back to :func:`time.monotonic`, which is the
clock asyncio's default loop uses, so a primitive built at import time and first used in plain code
keeps consistent readings.

A clock is just ``Callable[[], float]``: pass ``clock=`` to a primitive to inject another one (tests of
the pure cores use :class:`dwcp_resilience.testing.FakeClock`). Nothing here binds to a loop at import
or construction time.

An injected clock has its own timebase, which the loop's timers know nothing of. A policy that must
wait on it (a rate limiter's queued request, a retry's backoff sleep, a bulkhead's bounded wait) asks
the clock to do the waiting when the clock offers a ``sleep_until(reading)`` coroutine
(:class:`WaitableClock`; ``FakeClock`` does); without one it sleeps on the loop's timer, which is
right only for a clock that moves with the loop's. The hook is used on waiting paths only: a call
that needs no wait costs the same with or without it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

import anyio

from ._runtime import loop_now

__all__ = ("Clock", "WaitableClock", "loop_time")

Clock = Callable[[], float]
"""A monotonic clock: a zero-argument callable returning seconds as a float."""

loop_time: Clock = loop_now
"""Return the running event loop's monotonic time in seconds.

asyncio and uvloop: ``loop.time()``; trio: ``trio.current_time()``; no loop: ``time.monotonic()``.
The running loop and its clock come from :mod:`~dwcp_resilience.core._runtime` (one cache, one
Python call per reading).
"""


@runtime_checkable
class WaitableClock(Protocol):
    """A clock that can wait for its own readings: what a policy waiting on it needs.

    ``await clock.sleep_until(t)`` returns once ``clock() >= t`` (at once, after one checkpoint, if it
    already is), or raises to refuse the wait; it is cancellable like any sleep. Policies given such
    a clock as ``clock=`` wait through it instead of the loop's timer.
    """

    def __call__(self) -> float:
        """The current reading, in seconds."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once the clock reads ``deadline`` or later."""
        ...


def clock_sleeper(clock: object) -> Callable[[float], Awaitable[None]] | None:
    """``clock.sleep_until`` when ``clock`` is a :class:`WaitableClock`, else ``None`` (a helper of
    the policies' waiting paths)."""
    return clock.sleep_until if isinstance(clock, WaitableClock) else None


async def sleep_for(clock: Clock, seconds: float) -> None:
    """Sleep ``seconds`` as ``clock`` counts: on the loop's timer (``anyio.sleep``) for the loop's
    clock or a clock without a ``sleep_until`` hook, else through the hook (``FakeClock``: the sleep
    ends when the test advances it, or it jumps, or it refuses the wait). Cancellable on every
    backend. The one waiting helper of the policies that sleep a delay (retry backoff, hedge
    delay)."""
    sleep_until = None if clock is loop_time else clock_sleeper(clock)
    if sleep_until is None:
        await anyio.sleep(seconds)
    else:
        await sleep_until(clock() + seconds)
