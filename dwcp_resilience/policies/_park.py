"""Parking a waiting task until it is woken or a deadline passes, on asyncio, uvloop and trio.

Used by the waiting paths of the rate limiter and the bulkhead (never by their fast paths). A parked
task keeps its wake handle in ``holder.wake`` (an asyncio future or a trio event) while it sleeps;
:func:`wake` resolves it. Waking a task that is not parked is a no-op: callers keep every decision
in their pure core and re-check it after each wake, so a wake carries no information of its own.

On asyncio a deadline costs one ``loop.call_at`` handle for the parked task; on trio, a
``trio.move_on_at`` scope. Cancellation of the parked task propagates unchanged.

:func:`park_until` is the same park with its deadline kept by an injected clock's ``sleep_until`` hook
(:class:`~dwcp_resilience.core.clock.WaitableClock`) instead of the loop's timer; its wake handle is
an anyio cancel scope around that sleep.
"""

from __future__ import annotations

import math
from asyncio import Future
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from anyio import CancelScope

from ..core._runtime import get_running_loop

__all__ = ()  # private helpers of the waiting paths; nothing here is public API

_INF = math.inf


class Holder(Protocol):
    """Anything with a writable ``wake`` slot."""

    wake: object


def _expire(fut: Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


async def park(holder: Holder, deadline: float = _INF) -> bool:
    """Sleep until :func:`wake` is called on ``holder`` (return True) or the loop's timer for
    ``deadline`` fires (return False).

    A loop may fire a timer up to its clock resolution early (uvloop: 1 ms; looptime: 1 us), so
    after a False return the caller must treat ``deadline`` as reached even if its clock reads a
    hair less; otherwise it would re-arm the same timer forever.
    """
    loop = get_running_loop()
    if loop is None:
        return await _park_trio(holder, deadline)
    fut: Future[bool] = loop.create_future()
    holder.wake = fut
    handle = loop.call_at(deadline, _expire, fut) if deadline < _INF else None
    try:
        return await fut
    finally:
        holder.wake = None
        if handle is not None:
            handle.cancel()


async def _park_trio(holder: Holder, deadline: float) -> bool:
    import trio  # noqa: PLC0415 - only on trio

    event = trio.Event()
    holder.wake = event
    try:
        with trio.move_on_at(deadline):
            await event.wait()
    finally:
        holder.wake = None
    return event.is_set()


async def park_until(
    holder: Holder, sleep_until: Callable[[float], Awaitable[None]], deadline: float
) -> bool:
    """Sleep until :func:`wake` is called on ``holder`` (return True) or ``sleep_until(deadline)``
    returns (return False). Whatever ``sleep_until`` raises propagates (a clock refusing to wait)."""
    with CancelScope() as scope:
        holder.wake = scope
        try:
            await sleep_until(deadline)
        finally:
            holder.wake = None
    return scope.cancel_called


def wake(holder: Holder) -> None:
    """Wake the task parked on ``holder`` (no-op if it is not parked or already woken)."""
    handle: Any = holder.wake
    if handle is None:
        return
    if isinstance(handle, Future):
        if not handle.done():
            handle.set_result(True)
    elif isinstance(handle, CancelScope):
        handle.cancel()
    else:
        handle.set()
