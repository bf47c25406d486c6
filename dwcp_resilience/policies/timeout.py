"""``Timeout``: a deadline for one call, on the loop clock.

Semantics (the same on asyncio, uvloop and trio, but for shields: see below):

- :class:`~dwcp_resilience.DeadlineExceeded` is raised only when *this* timeout's deadline fired.
  A cancellation from outside (an outer scope, ``task.cancel()``, a task group) stays a cancellation,
  also when it lands in the same loop iteration as the deadline. On asyncio ``Task.cancelling()`` is
  back to its entry value when the scope exits (the ``asyncio.timeout`` protocol).
- The deadline is ``min(now + seconds, enclosing deadline)``: a nested timeout never outlives an outer
  one nor the active :class:`~dwcp_resilience.OperationContext`'s deadline, and code inside sees the
  clamped deadline (:func:`~dwcp_resilience.current_deadline`).
- ``seconds <= 0`` (or an enclosing deadline already past) raises ``DeadlineExceeded`` at once,
  without running the callee; ``inf`` never fires and arms no timer; NaN is a ``ValueError``.

One difference between the loops: on asyncio and uvloop the deadline cancels the task as
``asyncio.timeout`` does, so an ``anyio.CancelScope(shield=True)`` *inside* the timeout does not
hold it off (the shielded code is cancelled at its next await); on trio it does, as a trio scope
would. Work that must finish once started (a flush, a teardown) belongs outside the timeout, under
a bound of its own, as ``RedisBackend`` does with a cluster's first slot-map fetch.

On asyncio and uvloop the deadlines of a loop share one timer (:class:`Sweeper`): a heap of
``(deadline, seq, scope)`` tuples compared in C, with one ``loop.call_at`` handle armed for the
earliest live deadline. A call therefore costs a heap push instead of a ``TimerHandle`` (whose
Python-level ``__lt__`` is most of ``asyncio.timeout``'s cost). It fires exactly when the earliest
deadline is due, so no precision is traded. On trio a ``trio.CancelScope`` does the work.
"""

from __future__ import annotations

import math
from asyncio import CancelledError, Task
from collections.abc import Awaitable, Callable
from heapq import heapify, heappop, heappush
from itertools import count
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from ..core._runtime import LoopState, current_task, running
from ..core.context import deadline_var
from ..core.errors import DeadlineExceeded, not_callable
from ..core.policy import PolicyBase, TaskLocalStack
from ..core.validate import check_name, check_number

__all__ = ("Timeout",)  # Sweeper and sweeper_of: the lane's declared internal interface

P = ParamSpec("P")
T = TypeVar("T")

_INF = math.inf
_deadline_get = deadline_var.get
_deadline_set = deadline_var.set
_deadline_reset = deadline_var.reset


# A deadline entry is a plain list, [deadline, seq, task, cancelling_on_entry, state], ordered in
# the heap by (deadline, seq) with C-level comparisons. Lists cost a third of a slotted object here.
_LIVE, _DONE, _FIRED, _HANDLED = 0, 1, 2, 3
_DEADLINE, _SEQ, _TASK, _CANCELLING, _STATE = 0, 1, 2, 3, 4
_seq = count()

Entry = list[Any]


class Sweeper:
    """All asyncio deadlines of one loop behind one timer handle.

    Not public API, but a declared internal interface: :class:`Timeout` and the manager's lane
    (``_lane.py``) open and leave every asyncio deadline scope through :meth:`open` and
    :meth:`exit`, the one home of that decision.
    """

    __slots__ = ("armed_at", "handle", "heap", "live", "loop", "time")

    COMPACT_MIN = 1024

    def __init__(self, state: LoopState) -> None:
        self.loop = state.loop
        self.time: Callable[[], float] = state.time  # the loop's clock (see core/_runtime.py)
        self.heap: list[Entry] = []
        self.handle: Any = None
        self.armed_at = _INF
        self.live = 0

    def open(self, task: Task[Any], deadline: float) -> Entry:
        """Enter a deadline scope of ``task``; leave it with exactly one :meth:`exit`."""
        entry = [deadline, next(_seq), task, task.cancelling(), _LIVE]
        heap = self.heap
        heappush(heap, entry)
        self.live += 1
        if deadline < self.armed_at:
            self.arm(deadline)
        elif len(heap) > self.COMPACT_MIN and len(heap) > 4 * self.live:
            self.compact()
        return entry

    def exit(self, entry: Entry, cancelled: bool) -> bool:
        """Leave the scope of ``entry``, which ended in a ``CancelledError`` if ``cancelled``.

        Returns whether the scope's own deadline ended it: it fired, the scope ended cancelled,
        and no other cancellation of the task is pending (``Task.uncancel()`` is back to its
        value at entry, the ``asyncio.timeout`` protocol). The caller then raises
        ``DeadlineExceeded`` from the cancellation; otherwise the outcome stands.
        """
        state = entry[_STATE]
        if state == _LIVE:
            entry[_STATE] = _DONE
            self.live -= 1
            heap = self.heap
            if heap[0] is entry:
                # The earliest deadline is done: drop it and the done ones behind it now, so that
                # entries die young. Calls of one timeout usually end in deadline order, so the
                # heap stays about as small as the number of calls in flight (kept entries
                # survived into older GC generations and cost ~2 us a call under load).
                heappop(heap)
                while heap and heap[0][_STATE] != _LIVE:
                    heappop(heap)
            return False
        if state == _FIRED:
            entry[_STATE] = _HANDLED
            return entry[_TASK].uncancel() <= entry[_CANCELLING] and cancelled
        return False

    def compact(self) -> None:
        heap = [entry for entry in self.heap if entry[_STATE] == _LIVE]
        heapify(heap)
        self.heap = heap

    def arm(self, deadline: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.armed_at = deadline
        self.handle = self.loop.call_at(deadline, self.fire)

    def fire(self) -> None:
        # A loop may run a timer up to its clock resolution early: honour the time we armed for.
        now = max(self.loop.time(), self.armed_at)
        self.handle = None
        self.armed_at = _INF
        heap = self.heap
        while heap:
            entry = heap[0]
            if entry[_STATE] != _LIVE:
                heappop(heap)
                continue
            if entry[_DEADLINE] > now:
                break
            heappop(heap)
            entry[_STATE] = _FIRED
            self.live -= 1
            entry[_TASK].cancel()
        if heap:
            self.arm(heap[0][_DEADLINE])


def sweeper_of(state: LoopState) -> Sweeper:
    """The sweeper of the loop of ``state``, made on first use and kept on the loop's state."""
    sweeper: Sweeper | None = state.deadlines
    if sweeper is None:
        sweeper = state.deadlines = Sweeper(state)
    return sweeper


class _AsyncioEntry:
    """State of one ``async with timeout:`` block on asyncio."""

    __slots__ = ("scope", "sweeper", "token")

    def __init__(self, scope: Entry | None, sweeper: Sweeper | None, token: Any) -> None:
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
        # The asyncio half of `_open`/`_close` without the scope object: the timeout's hot path.
        if not callable(fn):
            raise not_callable(fn)
        state = running()
        if state is None:
            return await self._call_trio(fn, *args, **kwargs)
        sweeper = state.deadlines or sweeper_of(state)
        now = sweeper.time()
        deadline = now + self._seconds
        outer = _deadline_get()
        if outer < deadline:
            deadline = outer
        elif deadline == _INF:
            return await fn(*args, **kwargs)
        if deadline <= now:
            raise self._expired()
        task = current_task(sweeper.loop)
        if task is None:  # pragma: no cover - a coroutine always runs in a task under asyncio
            raise RuntimeError("Timeout.call must run inside an asyncio task")
        entry = sweeper.open(task, deadline)
        token = _deadline_set(deadline)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            _deadline_reset(token)
            if sweeper.exit(entry, isinstance(exc, CancelledError)):
                raise self._expired() from exc
            raise
        _deadline_reset(token)
        sweeper.exit(entry, False)
        return result

    async def _call_trio(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        entry = self._open_trio()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            expired = self._close(entry, exc)
            if expired is not None:
                raise expired from exc
            raise
        expired = self._close(entry, None)
        if expired is not None:
            raise expired
        return result

    def _open(self) -> _AsyncioEntry | _TrioEntry:
        """Enter this timeout's scope in the caller's frame (``async with`` and the manager).

        Every ``_open`` is followed by exactly one :meth:`_close` in the same task.

        Raises:
            DeadlineExceeded: the deadline (``seconds <= 0`` or an enclosing one) has passed already.
        """
        state = running()
        if state is None:
            return self._open_trio()
        sweeper = state.deadlines or sweeper_of(state)
        now = sweeper.time()
        deadline = now + self._seconds
        outer = _deadline_get()
        deadline = min(deadline, outer)
        if deadline <= now:
            raise self._expired()
        if deadline == _INF:
            return _AsyncioEntry(None, None, _deadline_set(deadline))
        task = current_task(sweeper.loop)
        if task is None:  # pragma: no cover - a coroutine always runs in a task under asyncio
            raise RuntimeError("a Timeout scope must run inside an asyncio task")
        return _AsyncioEntry(sweeper.open(task, deadline), sweeper, _deadline_set(deadline))

    def _open_trio(self) -> _TrioEntry:
        import trio  # noqa: PLC0415 - only on trio

        now = trio.current_time()
        deadline = min(now + self._seconds, _deadline_get())
        if deadline <= now:
            raise self._expired()
        trio_scope = trio.CancelScope(deadline=deadline)
        trio_scope.__enter__()
        return _TrioEntry(trio_scope, _deadline_set(deadline))

    def _close(
        self, entry: _AsyncioEntry | _TrioEntry, exc: BaseException | None
    ) -> DeadlineExceeded | None:
        """Leave a scope entered by :meth:`_open`, which ended with ``exc`` (``None``: it returned).

        Returns the :class:`~dwcp_resilience.DeadlineExceeded` to raise in place of ``exc`` when
        this timeout's own deadline ended the scope (the caller raises it ``from exc``), else
        ``None``: ``exc`` (or the result) stands.
        """
        _deadline_reset(entry.token)
        if isinstance(entry, _TrioEntry):
            trio_scope = entry.scope
            if exc is None:
                trio_scope.__exit__(None, None, None)
            else:
                trio_scope.__exit__(type(exc), exc, exc.__traceback__)
            return self._expired() if trio_scope.cancelled_caught else None
        scope, sweeper = entry.scope, entry.sweeper
        if scope is None or sweeper is None:
            return None
        if sweeper.exit(scope, isinstance(exc, CancelledError)):
            return self._expired()
        return None

    async def __aenter__(self) -> Timeout:
        self._stack.push(self._open())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        expired = self._close(self._stack.pop(), exc)
        if expired is not None:
            raise expired from exc
        return False
