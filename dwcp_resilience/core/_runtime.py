"""The one seam between the package and the interpreter's asyncio internals.

Every read of a private asyncio or CPython name lives here, and nowhere else in the package. Each
has a public path, chosen at import by feature detection, and the environment variable
``DWCP_RESILIENCE_PUBLIC_ASYNCIO=1`` forces the public path everywhere (CI runs the suite once so).

What the rest of the package uses:

- :func:`running` returns the :class:`LoopState` of the running asyncio (or uvloop) loop, or
  ``None`` on trio and outside any loop. It is the package's one cache of "the running loop": its
  clock (``state.time``), and the deadline timer that :mod:`~dwcp_resilience.policies.timeout`
  attaches to it (``state.deadlines``).
- :func:`current_task` returns the task running on a loop (never ``None`` inside a coroutine).
- :func:`get_running_loop` returns the running asyncio loop or ``None``, without raising.
- :func:`loop_now` reads the running loop's clock (asyncio, uvloop, trio; ``time.monotonic()``
  outside any loop) in one Python call: it is :func:`~dwcp_resilience.core.clock.loop_time`.

Which path runs where. The private path is taken only where it measured faster on that
interpreter (``python -m bench --only seam``: ns per call, this 2-core machine, a loop running)::

                                          3.11    3.12    3.13
    asyncio.events._get_running_loop()     104      23      19
    asyncio.get_running_loop()              99      23      19
    (no loop) get_running_loop + except    233     299     267
    (no loop) _get_running_loop()           18      23      20
    cached loop._thread_id == get_ident()   38      47      45
    asyncio.current_task(loop)              68      21      20
    asyncio.tasks._current_tasks.get(loop)  26      18      18
    loop.time() (asyncio's own loop)        71      68      68
    time.monotonic()                        44      45      47

- **Finding the running loop.** On 3.11 ``_get_running_loop()`` also calls ``getpid()``; a cached
  loop whose ``_thread_id`` is this thread's is the running one (a ``BaseEventLoop`` records the
  thread that runs it, and a thread runs one loop at a time), for a third of the price. From 3.12
  the lookup is a plain C read and cheaper than that check, so it is used directly. Where no asyncio
  loop runs (trio), the public ``get_running_loop()`` raises, which costs ten times
  ``_get_running_loop()``: that one name is used on every version while it exists (it is in
  ``asyncio.events.__all__``, "for use by event loops").
- **The running task.** On 3.11 ``asyncio.current_task`` is a Python function over the table
  ``asyncio.tasks._current_tasks``; the table is read directly there. From 3.12 ``current_task`` is
  C and as fast, and from 3.14 (CPython gh-129898) the table is no longer filled at all: the
  public call is used. The table is read only where ``current_task`` is the Python function that
  reads that very table, so the two paths cannot disagree.
- **The clock.** ``BaseEventLoop.time()`` returns ``time.monotonic()``; for a loop whose class does
  not override ``time`` (nor its instance), ``time.monotonic`` is called directly. looptime and
  uvloop override it, so their ``loop.time`` stays in use and our deadlines agree with their timers.

A loop shared by two threads is not supported (asyncio loops are not thread-safe); two threads that
each run their own loop take turns in the cache, and each always gets its own loop's state.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import types
from asyncio import AbstractEventLoop, BaseEventLoop, Task
from asyncio import events as _asyncio_events
from asyncio import tasks as _asyncio_tasks
from collections.abc import Callable
from typing import Any

__all__ = ()  # private: the package's seam with asyncio; nothing here is public API

PUBLIC_ONLY: bool = os.environ.get("DWCP_RESILIENCE_PUBLIC_ASYNCIO", "") not in ("", "0")
"""``DWCP_RESILIENCE_PUBLIC_ASYNCIO=1``: take the public path everywhere."""

_monotonic = time.monotonic
_get_ident = threading.get_ident
_public_current_task = asyncio.current_task
_public_get_running_loop = asyncio.get_running_loop

# -- the running loop -------------------------------------------------------------------------------

_private_get_running_loop: Callable[[], AbstractEventLoop | None] | None = getattr(
    _asyncio_events, "_get_running_loop", None
)


def _get_running_loop_public() -> AbstractEventLoop | None:
    try:
        return _public_get_running_loop()
    except RuntimeError:
        return None


get_running_loop: Callable[[], AbstractEventLoop | None] = (
    _private_get_running_loop
    if _private_get_running_loop is not None and not PUBLIC_ONLY
    else _get_running_loop_public
)
"""The running asyncio loop, or ``None`` (trio, or no loop); never raises."""

# -- the running task -------------------------------------------------------------------------------

_table = getattr(_asyncio_tasks, "_current_tasks", None)
# The table is read directly only where asyncio's own ``current_task`` is a Python function that
# reads this very table (CPython 3.11): there the two are the same lookup, one of them a C call.
_TASK_TABLE = (
    not PUBLIC_ONLY
    and isinstance(_table, dict)
    and isinstance(_public_current_task, types.FunctionType)
    and _public_current_task.__globals__.get("_current_tasks") is _table
)


current_task: Callable[[AbstractEventLoop], Task[Any] | None] = (
    _table.get if _TASK_TABLE else _public_current_task  # type: ignore[union-attr]
)
"""The task running on ``loop`` (never ``None`` inside a coroutine that runs on it)."""


# -- one cache of the running loop's state -----------------------------------------------------------

_THREAD_CHECK = sys.version_info < (3, 12) and not PUBLIC_ONLY


class LoopState:
    """What the package keeps per asyncio loop: its clock and its shared deadline timer.

    :ivar loop: the loop.
    :ivar time: the loop's clock (``time.monotonic`` for asyncio's own loop class, else
        ``loop.time``).
    :ivar owned: whether ``loop._thread_id`` proves, on this interpreter, that the loop runs in
        the calling thread (3.11's cheap check; see the module docstring).
    :ivar deadlines: the loop's shared deadline timer, made and owned by
        :mod:`~dwcp_resilience.policies.timeout` (``None`` until a timeout runs on the loop).
    """

    __slots__ = ("__weakref__", "deadlines", "loop", "owned", "time")

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        plain = (
            not PUBLIC_ONLY
            and getattr(type(loop), "time", None) is BaseEventLoop.time
            and "time" not in getattr(loop, "__dict__", ())
        )
        self.time: Callable[[], float] = _monotonic if plain else loop.time
        self.owned = (
            _THREAD_CHECK and isinstance(loop, BaseEventLoop) and hasattr(loop, "_thread_id")
        )
        self.deadlines: Any = None

    def __repr__(self) -> str:
        return f"<LoopState {self.loop!r} owned={self.owned}>"


# Every loop's state, kept until the loop is closed: a new state drops those of closed loops. (A
# WeakKeyDictionary would keep them all for ever: each state holds its loop, and its deadline timer
# the loop's timer handles.)
_states: dict[Any, LoopState] = {}

# The state of the last loop seen, as one global, so that one read gives a consistent loop, clock
# and timer while another thread's loop replaces it. It starts as a state of no loop at all.
_last: LoopState = LoopState.__new__(LoopState)
_last.loop = object()
_last.time = _monotonic
_last.owned = False
_last.deadlines = None


def _state_of(loop: AbstractEventLoop) -> LoopState:
    global _last
    state = _states.get(loop)
    if state is None:
        # Another thread's loop may add or drop its state meanwhile: copy the keys at once (in C),
        # and drop with pop, which tolerates a key that thread dropped first.
        for old in list(_states):
            if old.is_closed():
                _states.pop(old, None)
        state = _states[loop] = LoopState(loop)
    _last = state
    return state


if _THREAD_CHECK:

    def running() -> LoopState | None:
        """The running asyncio loop's :class:`LoopState`, or ``None`` (trio, or no loop)."""
        state = _last
        if state.owned and state.loop._thread_id == _get_ident():
            return state
        loop = get_running_loop()
        if state.loop is loop:  # a loop with no cheap thread check (uvloop)
            return state
        return None if loop is None else _state_of(loop)

else:

    def running() -> LoopState | None:
        """The running asyncio loop's :class:`LoopState`, or ``None`` (trio, or no loop)."""
        loop = get_running_loop()
        state = _last
        if state.loop is loop:
            return state
        return None if loop is None else _state_of(loop)


def _trio_or_monotonic() -> float:
    try:
        import trio  # noqa: PLC0415 - optional backend, imported on first trio use only
    except ImportError:  # pragma: no cover - trio is an optional extra
        return _monotonic()
    try:
        return trio.current_time()
    except RuntimeError:
        return _monotonic()


if _THREAD_CHECK:

    def loop_now() -> float:
        """The running loop's clock: asyncio's or uvloop's (through the cache), trio's, or
        ``time.monotonic()`` outside any loop. One Python call: the package's default clock."""
        state = _last
        if state.owned and state.loop._thread_id == _get_ident():
            return state.time()
        loop = get_running_loop()
        if state.loop is loop:  # a loop with no cheap thread check (uvloop)
            return state.time()
        if loop is None:
            return _trio_or_monotonic()
        return _state_of(loop).time()

else:

    def loop_now() -> float:
        """The running loop's clock: asyncio's or uvloop's (through the cache), trio's, or
        ``time.monotonic()`` outside any loop. One Python call: the package's default clock."""
        loop = get_running_loop()
        state = _last
        if state.loop is loop:
            return state.time()
        if loop is None:
            return _trio_or_monotonic()
        return _state_of(loop).time()


def paths() -> dict[str, str]:
    """Which path each access takes on this interpreter (for tests, the bench and bug reports)."""
    return {
        "get_running_loop": (
            "asyncio.events._get_running_loop"
            if get_running_loop is _private_get_running_loop
            else "asyncio.get_running_loop"
        ),
        "running": "cached loop._thread_id" if _THREAD_CHECK else "get_running_loop",
        "current_task": ("asyncio.tasks._current_tasks" if _TASK_TABLE else "asyncio.current_task"),
        "clock": "loop.time" if PUBLIC_ONLY else "time.monotonic for asyncio's own loop class",
    }
