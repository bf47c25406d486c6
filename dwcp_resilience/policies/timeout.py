"""``Timeout``: a deadline for one call, on the loop clock.

Semantics (the same on asyncio, uvloop and trio):

- :class:`~dwcp_resilience.DeadlineExceeded` is raised only when *this* timeout's deadline fired.
  A cancellation from outside (an outer scope, ``task.cancel()``, a task group) stays a cancellation,
  also when it lands in the same loop iteration as the deadline. On asyncio ``Task.cancelling()`` is
  back to its entry value when the scope exits (the ``asyncio.timeout`` protocol).
- The deadline is ``min(now + seconds, enclosing deadline)``: a nested timeout never outlives an outer
  one nor the active :class:`~dwcp_resilience.OperationContext`'s deadline, and code inside sees the
  clamped deadline (:func:`~dwcp_resilience.current_deadline`).
- ``seconds <= 0`` (or an enclosing deadline already past) raises ``DeadlineExceeded`` at once,
  without running the callee; ``inf`` never fires and arms no timer; NaN is a ``ValueError``.

On asyncio and uvloop the deadlines of a loop share one timer (:class:`_Sweeper`): a heap of
``(deadline, seq, scope)`` tuples compared in C, with one ``loop.call_at`` handle armed for the
earliest live deadline. A call therefore costs a heap push instead of a ``TimerHandle`` (whose
Python-level ``__lt__`` is most of ``asyncio.timeout``'s cost). It fires exactly when the earliest
deadline is due, so no precision is traded. On trio a ``trio.CancelScope`` does the work.
"""

from __future__ import annotations

import math
from asyncio import CancelledError, Task, current_task
from asyncio import events as _asyncio_events
from collections.abc import Awaitable, Callable
from heapq import heapify, heappop, heappush
from itertools import count
from types import TracebackType
from typing import Any, ParamSpec, TypeVar
from weakref import WeakKeyDictionary

from ..core.context import _deadline
from ..core.errors import DeadlineExceeded
from ..core.policy import PolicyBase, TaskLocalStack
from ..core.validate import check_name, check_number

__all__ = ("Timeout",)

P = ParamSpec("P")
T = TypeVar("T")

_INF = math.inf
_get_running_loop = _asyncio_events._get_running_loop
_deadline_get = _deadline.get
_deadline_set = _deadline.set
_deadline_reset = _deadline.reset


class _Scope:
    """Per-call state of one asyncio deadline (never shared between calls)."""

    __slots__ = ("cancelling", "done", "fired", "task")

    def __init__(self, task: Task[Any]) -> None:
        self.task = task
        self.cancelling = task.cancelling()
        self.done = False
        self.fired = False


class _Sweeper:
    """All asyncio deadlines of one loop behind one timer handle."""

    __slots__ = ("_armed_at", "_handle", "_heap", "_live", "_loop", "_seq")

    _COMPACT_MIN = 1024

    def __init__(self, loop: Any) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, _Scope]] = []
        self._handle: Any = None
        self._armed_at = _INF
        self._live = 0
        self._seq = count()

    def open(self, task: Task[Any], deadline: float) -> _Scope:
        scope = _Scope(task)
        heap = self._heap
        heappush(heap, (deadline, next(self._seq), scope))
        self._live += 1
        if deadline < self._armed_at:
            self._arm(deadline)
        elif len(heap) > self._COMPACT_MIN and len(heap) > 4 * self._live:
            self._compact()
        return scope

    def close(self, scope: _Scope) -> None:
        if not scope.done:
            scope.done = True
            self._live -= 1

    def _compact(self) -> None:
        heap = [entry for entry in self._heap if not entry[2].done]
        heapify(heap)
        self._heap = heap

    def _arm(self, deadline: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = deadline
        self._handle = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        # A loop may run a timer up to its clock resolution early: honour the time we armed for.
        now = max(self._loop.time(), self._armed_at)
        self._handle = None
        self._armed_at = _INF
        heap = self._heap
        while heap:
            deadline, _, scope = heap[0]
            if scope.done:
                heappop(heap)
                continue
            if deadline > now:
                break
            heappop(heap)
            scope.done = True
            self._live -= 1
            scope.fired = True
            scope.task.cancel()
        if heap:
            self._arm(heap[0][0])


_sweepers: WeakKeyDictionary[Any, _Sweeper] = WeakKeyDictionary()
_last: tuple[Any, _Sweeper | None] = (None, None)


def _sweeper_for(loop: Any) -> _Sweeper:
    global _last
    cached_loop, sweeper = _last
    if cached_loop is loop and sweeper is not None:
        return sweeper
    sweeper = _sweepers.get(loop)
    if sweeper is None:
        sweeper = _sweepers[loop] = _Sweeper(loop)
    _last = (loop, sweeper)
    return sweeper


class _AsyncioEntry:
    """State of one ``async with timeout:`` block on asyncio."""

    __slots__ = ("scope", "sweeper", "token")

    def __init__(self, scope: _Scope | None, sweeper: _Sweeper | None, token: Any) -> None:
        self.scope = scope
        self.sweeper = sweeper
        self.token = token


class _TrioEntry:
    __slots__ = ("scope", "token")

    def __init__(self, scope: Any, token: Any) -> None:
        self.scope = scope
        self.token = token


class Timeout(PolicyBase):
    """Bound each call to ``seconds`` (and to every enclosing deadline).

    Args:
        seconds: the time budget of one call; ``inf`` means never; ``<= 0`` fails at once.
        name: the name used in errors and events.

    Raises:
        ValueError: if ``seconds`` is NaN.
        TypeError: if ``seconds`` is not a number.
    """

    __slots__ = ("_name", "_seconds", "_stack")

    def __init__(self, seconds: float, *, name: str = "timeout") -> None:
        self._seconds = check_number(seconds, "seconds", allow_inf=True)
        self._name = check_name(name)
        self._stack: TaskLocalStack[_AsyncioEntry | _TrioEntry] = TaskLocalStack(
            f"dwcp_timeout_{id(self):x}"
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def seconds(self) -> float:
        return self._seconds

    def __repr__(self) -> str:
        return f"<Timeout {self._name!r} {self._seconds:g}s>"

    def _expired(self) -> DeadlineExceeded:
        return DeadlineExceeded(self._name, self._seconds)

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)``; raise ``DeadlineExceeded`` if our deadline fires first."""
        loop = _get_running_loop()
        if loop is None:
            return await self._call_trio(fn, *args, **kwargs)
        now = loop.time()
        deadline = now + self._seconds
        outer = _deadline_get()
        if outer < deadline:
            deadline = outer
        elif deadline == _INF:
            return await fn(*args, **kwargs)
        if deadline <= now:
            raise self._expired()
        task = current_task(loop)
        if task is None:  # pragma: no cover - a coroutine always runs in a task under asyncio
            raise RuntimeError("Timeout.call must run inside an asyncio task")
        sweeper = _sweeper_for(loop)
        scope = sweeper.open(task, deadline)
        token = _deadline_set(deadline)
        try:
            return await fn(*args, **kwargs)
        except CancelledError as exc:
            if scope.fired:
                scope.fired = False
                if task.uncancel() <= scope.cancelling:
                    raise self._expired() from exc
            raise
        finally:
            _deadline_reset(token)
            if scope.fired:  # ours fired but the callee swallowed the cancellation
                task.uncancel()
            elif not scope.done:
                scope.done = True
                sweeper._live -= 1

    async def _call_trio(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        import trio  # noqa: PLC0415 - only on trio

        now = trio.current_time()
        deadline = min(now + self._seconds, _deadline_get())
        if deadline <= now:
            raise self._expired()
        token = _deadline_set(deadline)
        try:
            with trio.CancelScope(deadline=deadline):
                return await fn(*args, **kwargs)
        finally:
            _deadline_reset(token)
        raise self._expired()  # reached only when our own scope caught its cancellation

    async def __aenter__(self) -> Timeout:
        loop = _get_running_loop()
        if loop is None:
            import trio  # noqa: PLC0415 - only on trio

            now = trio.current_time()
            deadline = min(now + self._seconds, _deadline_get())
            if deadline <= now:
                raise self._expired()
            trio_scope = trio.CancelScope(deadline=deadline)
            trio_scope.__enter__()
            self._stack.push(_TrioEntry(trio_scope, _deadline_set(deadline)))
            return self
        now = loop.time()
        deadline = min(now + self._seconds, _deadline_get())
        if deadline <= now:
            raise self._expired()
        if deadline == _INF:
            self._stack.push(_AsyncioEntry(None, None, _deadline_set(deadline)))
            return self
        task = current_task(loop)
        if task is None:  # pragma: no cover
            raise RuntimeError("async with Timeout must run inside an asyncio task")
        sweeper = _sweeper_for(loop)
        scope = sweeper.open(task, deadline)
        self._stack.push(_AsyncioEntry(scope, sweeper, _deadline_set(deadline)))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        entry = self._stack.pop()
        _deadline_reset(entry.token)
        if isinstance(entry, _TrioEntry):
            trio_scope = entry.scope
            swallowed = trio_scope.__exit__(exc_type, exc, tb)
            if trio_scope.cancelled_caught:
                raise self._expired() from exc
            return bool(swallowed)
        scope, sweeper = entry.scope, entry.sweeper
        if scope is None or sweeper is None:
            return False
        sweeper.close(scope)
        if scope.fired and scope.task.uncancel() <= scope.cancelling and exc_type is CancelledError:
            raise self._expired() from exc
        return False
