"""The pure core of the bulkhead: permits, a bounded FIFO wait queue and hand-off, as plain ``def`` s.

``max_concurrent`` permits. A call takes a free permit at once (``try_enter``), or takes a place in
the wait queue (``enqueue``) if one of ``max_queue`` places is free, or is rejected. A released permit
is handed straight to the queue's head (``release`` returns the ticket to wake), so a free permit and a
waiting ticket never coexist, and a newcomer can never overtake the queue: admission is first in,
first out. A queue place is held only while waiting (the Go bulkhead held it for the whole call).

Between the hand-off and the waiter resuming, its permit is *reserved*. A waiter that gives up
(cancelled, or its wait timed out) calls ``abandon``: while queued it just leaves the queue; if the
permit had already been handed to it, the permit goes on to the next waiter or back to the pool. So
every permit is given back exactly once, on every path (the race of anyio#947/#1170 and failsafe#393).

The permit count can change while calls run (``resize``): a larger count hands the new permits to
the queue's head first, as releases do; a smaller one takes free permits away at once and retires the
rest as their holders return them (``free`` goes negative: that many permits are owed), so no call is
interrupted and no new call is admitted until the calls in flight are under the new count.
:class:`~dwcp_resilience.AdaptiveConcurrencyLimiter` moves its limit this way.

Invariants (checked by the property tests): ``free + running + reserved == max_concurrent``;
``0 <= queued <= max_queue``; ``0 <= running + reserved``; a permit is taken or handed over only
while ``running + reserved < max_concurrent``; ``queued > 0`` implies ``free <= 0``.
"""

from __future__ import annotations

from collections import deque

from ..core.validate import check_int

__all__ = ("ABANDONED", "BulkheadCore", "HANDED", "Permit", "RELEASED", "RUNNING", "WAITING")

WAITING = 0
"""Queued for a permit."""
HANDED = 1
"""A permit was handed over; the waiter has not resumed yet."""
RUNNING = 2
"""Holds a permit and runs."""
RELEASED = 3
"""Gave its permit back."""
ABANDONED = 4
"""Left the queue without a permit (cancelled or timed out)."""


class Permit:
    """A waiter's ticket. ``wake`` is free for the async shell; the core never touches it."""

    __slots__ = ("state", "wake")

    def __init__(self) -> None:
        self.state = WAITING
        self.wake: object = None

    def __repr__(self) -> str:
        names = ("waiting", "handed", "running", "released", "abandoned")
        return f"<Permit {names[self.state]}>"


class BulkheadCore:
    """Permits and a bounded FIFO queue.

    Args:
        max_concurrent: how many calls may run at once; an int >= 1.
        max_queue: how many calls may wait for a permit; an int >= 0 (0: never wait).

    Raises:
        ValueError: if ``max_concurrent`` < 1 or ``max_queue`` < 0.
        TypeError: if either is not an int (``True`` included).
    """

    __slots__ = (
        "_free",
        "_max_concurrent",
        "_max_queue",
        "_queue",
        "_queued",
        "_reserved",
        "admitted_after_wait",
        "admitted_at_once",
        "cancelled",
        "rejected",
        "timed_out",
    )

    def __init__(self, max_concurrent: int, max_queue: int = 0) -> None:
        self._max_concurrent = check_int(max_concurrent, "max_concurrent", min_value=1)
        self._max_queue = check_int(max_queue, "max_queue", min_value=0)
        self._free = self._max_concurrent
        self._reserved = 0
        self._queue: deque[Permit] = deque()
        self._queued = 0
        self.admitted_at_once = 0
        self.admitted_after_wait = 0
        self.rejected = 0
        self.timed_out = 0
        self.cancelled = 0

    @property
    def max_concurrent(self) -> int:
        return self._max_concurrent

    @property
    def max_queue(self) -> int:
        return self._max_queue

    @property
    def available(self) -> int:
        """Free permits (0 while a smaller count is owed, see :meth:`resize`)."""
        free = self._free
        return free if free > 0 else 0

    @property
    def reserved(self) -> int:
        """Permits handed to waiters that have not resumed yet."""
        return self._reserved

    @property
    def running(self) -> int:
        """Permits held by running calls."""
        return self._max_concurrent - self._free - self._reserved

    @property
    def in_use(self) -> int:
        """Permits held by running calls or handed to waiters (``running + reserved``)."""
        return self._max_concurrent - self._free

    @property
    def queued(self) -> int:
        """Waiters in the queue."""
        return self._queued

    def try_enter(self) -> bool:
        """Take a free permit now, or return False (never queues)."""
        if self._free > 0:
            self._free -= 1
            self.admitted_at_once += 1
            return True
        return False

    def enqueue(self) -> Permit | None:
        """Take a place in the queue (call only after ``try_enter`` failed); ``None``: queue full."""
        if self._queued >= self._max_queue:
            self.rejected += 1
            return None
        permit = Permit()
        self._queue.append(permit)
        self._queued += 1
        return permit

    def reject(self) -> None:
        """Count a rejection that happened without queueing (try-only mode)."""
        self.rejected += 1

    def release(self) -> Permit | None:
        """Give a permit back: hand it to the queue's head (returned, to be woken) or free it."""
        if not self._queued:  # nobody waits (the queue may hold only abandoned entries)
            self._free += 1
            return None
        if self._free < 0:  # the count shrank: this permit is retired, not handed over
            self._free += 1
            return None
        queue = self._queue
        while queue:
            permit = queue.popleft()
            if permit.state == WAITING:
                permit.state = HANDED
                self._queued -= 1
                self._reserved += 1
                return permit
        self._free += 1
        return None

    def resize(self, max_concurrent: int) -> list[Permit]:
        """Change the permit count; returns the waiters to wake (handed one of the new permits).

        Growing hands each new permit to the queue's head, as :meth:`release` does (or pays back a
        permit still owed from an earlier shrink); shrinking takes free permits away and owes the
        rest, which calls in flight give back as they end. Nothing running is interrupted.

        Raises:
            ValueError: if ``max_concurrent`` < 1.
            TypeError: if it is not an int (``True`` included).
        """
        size = check_int(max_concurrent, "max_concurrent", min_value=1)
        delta = size - self._max_concurrent
        self._max_concurrent = size
        if delta <= 0:
            self._free += delta
            return []
        woken: list[Permit] = []
        for _ in range(delta):
            permit = self.release()
            if permit is not None:
                woken.append(permit)
        return woken

    def resume(self, permit: Permit) -> None:
        """A handed permit's waiter resumed: it now runs."""
        if permit.state == HANDED:
            permit.state = RUNNING
            self._reserved -= 1
            self.admitted_after_wait += 1

    def exit(self, permit: Permit) -> Permit | None:
        """A waiter that ran gives its permit back (exactly once); returns the next ticket to wake."""
        if permit.state != RUNNING:
            return None
        permit.state = RELEASED
        return self.release()

    def abandon(self, permit: Permit, *, timed_out: bool = False) -> Permit | None:
        """A waiter gives up: leave the queue, or pass on a permit handed to it but never used.

        Exactly once; returns the ticket to wake, if the permit went on to another waiter.
        """
        state = permit.state
        if state == WAITING:
            permit.state = ABANDONED
            self._queued -= 1
            queue = self._queue
            if len(queue) > 2 * self._queued + 32:  # drop dead entries: memory stays O(max_queue)
                self._queue = deque(p for p in queue if p.state == WAITING)
            if timed_out:
                self.timed_out += 1
            else:
                self.cancelled += 1
            return None
        if state == HANDED:
            permit.state = ABANDONED
            self._reserved -= 1
            if timed_out:
                self.timed_out += 1
            else:
                self.cancelled += 1
            return self.release()
        return None
