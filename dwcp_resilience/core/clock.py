"""Time: one monotonic clock, the running event loop's.

:func:`loop_time` is the default clock of every primitive. It reads ``loop.time()`` on asyncio and
uvloop (so looptime's virtual time is honoured) and ``trio.current_time()`` on trio (so
``MockClock`` is honoured). Outside any loop it falls back to :func:`time.monotonic`, which is the
clock asyncio's default loop uses, so a primitive built at import time and first used in plain code
keeps consistent readings.

A clock is just ``Callable[[], float]``: pass ``clock=`` to a primitive to inject another one (tests of
the pure cores use :class:`dwcp_resilience.testing.FakeClock`). Nothing here binds to a loop at import
or construction time.
"""

from __future__ import annotations

from collections.abc import Callable

from ._runtime import loop_now

__all__ = ("Clock", "loop_time")

Clock = Callable[[], float]
"""A monotonic clock: a zero-argument callable returning seconds as a float."""

loop_time: Clock = loop_now
"""Return the running event loop's monotonic time in seconds.

asyncio and uvloop: ``loop.time()``; trio: ``trio.current_time()``; no loop: ``time.monotonic()``.
The running loop and its clock come from :mod:`~dwcp_resilience.core._runtime` (one cache, one
Python call per reading).
"""
