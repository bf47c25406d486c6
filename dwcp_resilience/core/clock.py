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

import time
from collections.abc import Callable

from ._runtime import running

__all__ = ("Clock", "loop_time")

Clock = Callable[[], float]
"""A monotonic clock: a zero-argument callable returning seconds as a float."""

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


def loop_time() -> float:
    """Return the running event loop's monotonic time in seconds.

    asyncio and uvloop: ``loop.time()``; trio: ``trio.current_time()``; no loop: ``time.monotonic()``.
    The running loop and its clock come from :mod:`~dwcp_resilience.core._runtime`.
    """
    state = running()
    if state is not None:
        return state.time()
    now = _trio_time()
    return _monotonic() if now is None else now
