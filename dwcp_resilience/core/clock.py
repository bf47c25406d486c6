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

import threading
import time
from asyncio import BaseEventLoop
from asyncio import events as _asyncio_events
from collections.abc import Callable
from typing import Any

__all__ = ("Clock", "loop_time")

Clock = Callable[[], float]
"""A monotonic clock: a zero-argument callable returning seconds as a float."""

# The C implementation of asyncio's running-loop lookup (cheaper than sniffio, or than
# anyio.current_time(), which costs ~10x loop.time() here).
_get_running_loop = _asyncio_events._get_running_loop
_monotonic = time.monotonic


def _trio_time() -> float | None:
    try:
        import trio  # noqa: PLC0415 - optional backend, imported on first trio use only
    except ImportError:  # pragma: no cover - trio is an optional extra
        return None
    try:
        return trio.current_time()
    except RuntimeError:
        return None


# asyncio's C _get_running_loop() costs ~180 ns per call on CPython 3.11 here. A loop derived from
# BaseEventLoop records its running thread in ``_thread_id`` and a thread runs one loop at a time,
# so a cached loop whose ``_thread_id`` is this thread's is the running loop (~40 ns to check). For
# the stock loop class ``loop.time()`` is ``time.monotonic()``, which we then call directly. The
# loop and its clock are one tuple, read at once: loops in two threads replace it in turn, and two
# globals could be read half-updated (this loop with the other loop's clock).
_fast: tuple[Any, Callable[[], float]] = (None, _monotonic)
_get_ident = threading.get_ident


def _remember(loop: Any) -> None:
    global _fast
    if isinstance(loop, BaseEventLoop):
        _fast = (loop, _monotonic if type(loop).time is BaseEventLoop.time else loop.time)


def loop_time() -> float:
    """Return the running event loop's monotonic time in seconds.

    asyncio and uvloop: ``loop.time()``; trio: ``trio.current_time()``; no loop: ``time.monotonic()``.
    """
    loop, clock = _fast
    if loop is not None and loop._thread_id == _get_ident():
        return clock()
    loop = _get_running_loop()
    if loop is not None:
        _remember(loop)
        return float(loop.time())
    now = _trio_time()
    return _monotonic() if now is None else now
