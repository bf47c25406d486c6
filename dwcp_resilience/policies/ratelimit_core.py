"""The pure core of the token-bucket rate limiter: plain ``def`` s that take ``now``.

The bucket is kept in GCRA form: one number, ``tat`` (the "theoretical arrival time"), is the moment at
which the bucket would hold no token, counting every token already handed out *and* every token
reserved by a queued waiter. With rate ``r`` and burst ``b``::

    tokens(now) = min(b, max(0, (now - tat) * r))

so the bucket refills continuously and exactly (no discrete refill, no drift, no background task), and
``acquire(n)`` is admitted at once exactly when ``tat + n / r <= now``. A bucket that was idle for a day
holds exactly ``b`` tokens, never more.

Waiting is first in, first out. A request that cannot be admitted at once gets a :class:`Ticket` and
reserves its tokens at the tail of the queue (``tat`` moves forward by ``n / r``), so later arrivals,
``try_acquire`` included, can never overtake it. Its admission time is known at once; a request whose
admission time lies past its deadline is rejected at once and reserves nothing. The head of the queue
is granted when ``base + n_head / r <= now``, where ``base = tat - queued / r`` is the bucket's empty
time without the queue. Cancelling a queued ticket removes its reservation (the tickets behind it move
forward: no phantom debt); cancelling a ticket that was granted but never ran refunds its tokens.

Every request ends in exactly one of ``allowed``, ``rejected`` or ``cancelled``; until then it is
``waiting``.
"""

from __future__ import annotations

import math
from collections import deque

from ..core.validate import check_int, check_number

__all__ = (
    "CANCELLED",
    "DONE",
    "GRANTED",
    "QUEUED",
    "REJECTED",
    "TOLERANCE",
    "Ticket",
    "TokenBucket",
    "check_request",
)

QUEUED = 0
"""The ticket waits in the FIFO queue; its tokens are reserved."""
GRANTED = 1
"""The ticket's tokens were handed over; its task has not resumed yet."""
DONE = 2
"""Admitted: counted in ``allowed``."""
REJECTED = 3
"""Not admitted: its admission time lay past its deadline (or the burst shrank below its size)."""
CANCELLED = 4
"""Given up while queued, or after the grant but before it ran (tokens refunded)."""

_INF = math.inf
TOLERANCE = 1e-9
"""Seconds of float noise forgiven when comparing admission times (sums of ``n / rate`` steps): a
ticket due at ``t`` is granted from ``t - TOLERANCE`` on."""
_TOL = TOLERANCE


def check_request(n: int, burst: int) -> None:
    """Raise unless ``n`` is an int with ``1 <= n <= burst``: a request larger than the bucket can
    never be served (the choice of aiolimiter and of Go's ``rate.Limiter.WaitN``). Every token
    bucket of the package, local or shared through Redis, checks its requests here."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n > burst:
        raise ValueError(f"n={n} exceeds burst={burst}: it could never be admitted")


class Ticket:
    """One waiting request: its size, state and projected admission time.

    ``wake`` is free for the async shell (a future or event to wake the waiting task); the core never
    touches it.
    """

    __slots__ = ("mark", "n", "ready_at", "state", "wake")

    def __init__(self, n: int, state: int, ready_at: float) -> None:
        self.n = n
        self.state = state
        self.ready_at = ready_at
        self.mark = -1  # the bucket's op count when granted (see TokenBucket.abandon)
        self.wake: object = None

    def __repr__(self) -> str:
        names = ("queued", "granted", "done", "rejected", "cancelled")
        return f"<Ticket n={self.n} {names[self.state]} ready_at={self.ready_at:.6f}>"


class TokenBucket:
    """A token bucket of ``rate`` tokens per second holding at most ``burst`` tokens; starts full.

    Args:
        rate: tokens per second; finite and > 0.
        burst: the bucket's capacity and the largest single request; an int >= 1.

    Raises:
        ValueError: if ``rate`` is NaN, infinite or <= 0, or ``burst`` < 1.
        TypeError: if ``rate`` is not a number or ``burst`` is not an int (``True`` included).
    """

    __slots__ = (
        "_burst",
        "_burst_time",
        "_granted_at",
        "_high",
        "_inv_rate",
        "_queue",
        "_queued",
        "_rate",
        "_shifts",
        "_tat",
        "allowed",
        "allowed_waited",
        "cancelled",
        "rejected",
        "waiting",
    )

    def __init__(self, rate: float, burst: int) -> None:
        rate = check_number(rate, "rate", min_value=0.0, allow_zero=False)
        burst = check_int(burst, "burst", min_value=1)
        self._rate = rate
        self._burst = burst
        self._inv_rate = 1.0 / rate
        self._burst_time = burst / rate
        self._tat = -_INF  # empty at the dawn of time: full now
        self._high = (
            -_INF
        )  # the latest clock reading the core has seen (a clock step back is clamped)
        self._queue: deque[Ticket] = deque()
        self._queued = 0  # tokens reserved by QUEUED tickets
        self._granted_at = -_INF  # the clock reading of the latest grant
        self._shifts = 0  # times tat was raised to the full-bucket floor outside an admit
        self.allowed = 0  # admitted at once (the shell's fast paths count here too)
        self.allowed_waited = 0  # admitted after waiting
        self.rejected = 0
        self.cancelled = 0
        self.waiting = 0

    # -- reading ---------------------------------------------------------------------------------

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return self._rate

    @property
    def burst(self) -> int:
        """The bucket's capacity."""
        return self._burst

    @property
    def queued_tokens(self) -> int:
        """Tokens reserved by queued tickets."""
        return self._queued

    def _seen(self, now: float) -> float:
        if now < self._high:
            return self._high
        self._high = now
        return now

    def tokens(self, now: float) -> float:
        """Tokens a new request could take at ``now`` (queued reservations already subtracted)."""
        now = self._seen(now)
        tat = self._tat
        if tat <= now - self._burst_time + _TOL:
            return float(self._burst)
        free = (now - tat) * self._rate
        return free if free > 0.0 else 0.0

    def check_n(self, n: int) -> None:
        """Raise unless ``1 <= n <= burst`` (a request larger than the bucket can never be served)."""
        check_request(n, self._burst)

    # -- deciding --------------------------------------------------------------------------------

    def take(self, n: int, now: float) -> bool:
        """The admission decision, and its only home: take ``n`` tokens at ``now`` if they are
        there, counting the request as allowed; else change nothing and return ``False``.

        ``n`` is not checked (the callers check it, or know it is 1). A refusal is not counted: the
        caller decides whether it is final (:meth:`try_acquire`) or queues (:meth:`reserve`).
        Tokens reserved by queued tickets are already in ``tat``, so a take never overtakes a
        waiter. A clock that steps back is read as the latest reading seen. Every entry point of
        :class:`~dwcp_resilience.RateLimiter`, the keyed limiter and the manager's lane admit at
        once through here.
        """
        high = self._high  # _seen(), inlined: this is the hot path of every limiter call
        if now < high:
            now = high
        else:
            self._high = now
        tat = self._tat
        floor = now - self._burst_time
        if tat < floor:  # noqa: PLR1730 - max() costs a call on the hot path
            tat = floor
        tat += n * self._inv_rate
        if tat <= now + _TOL:
            self._tat = tat
            self.allowed += 1
            return True
        return False

    def try_acquire(self, n: int, now: float) -> bool:
        """Take ``n`` tokens at ``now`` if they are there and nobody is queued; never waits."""
        self.check_n(n)
        if self.take(n, now):
            return True
        self.rejected += 1
        return False

    def _empty_at(self, now: float) -> float:
        # When the bucket is (or was) empty, seen at `now`: tat, raised to the full-bucket floor (a
        # bucket holds no more than `burst`). take() has the same two lines inlined.
        tat = self._tat
        floor = now - self._burst_time
        return floor if tat < floor else tat

    def reserve(self, n: int, now: float, deadline: float = _INF) -> Ticket:
        """Admit ``n`` tokens at once (a ``DONE`` ticket), or queue for them if they can be had by
        ``deadline`` (``QUEUED``, ``ready_at`` = projected admission time), or reject (``REJECTED``,
        ``ready_at`` = when they could have been had)."""
        self.check_n(n)
        if self.take(n, now):
            return Ticket(n, DONE, self._high)
        now = self._high  # take() read the clock, clamped
        tat = self._empty_at(now)
        ready = tat + n * self._inv_rate
        if ready > deadline:
            self.rejected += 1
            return Ticket(n, REJECTED, ready)
        if tat != self._tat:
            self._shifts += 1
        self._tat = ready
        ticket = Ticket(n, QUEUED, ready)
        self._queue.append(ticket)
        self._queued += n
        self.waiting += 1
        return ticket

    def head(self) -> Ticket | None:
        """The first queued ticket (cancelled ones are dropped from the front)."""
        queue = self._queue
        while queue:
            ticket = queue[0]
            if ticket.state == QUEUED:
                return ticket
            queue.popleft()
        return None

    def _base(self, now: float) -> float:
        # The bucket's empty time without the queue, raised to the full-bucket floor: a timer that
        # fired late must not grant more than `burst` at once.
        base = self._tat - self._queued * self._inv_rate
        floor = now - self._burst_time
        if base < floor:
            self._tat += floor - base
            self._shifts += 1
            return floor
        return base

    def head_ready_at(self, now: float) -> float:
        """When the head ticket can be granted (``inf`` if nobody is queued)."""
        now = self._seen(now)
        head = self.head()
        if head is None:
            return _INF
        return self._base(now) + head.n * self._inv_rate

    def grant_due(self, now: float) -> list[Ticket]:
        """Grant the queued tickets whose tokens are there at ``now``, in FIFO order."""
        now = self._seen(now)
        granted: list[Ticket] = []
        while True:
            head = self.head()
            if head is None or self._base(now) + head.n * self._inv_rate > now + _TOL:
                return granted
            self._queue.popleft()
            self._queued -= head.n
            head.state = GRANTED
            head.ready_at = now
            self._granted_at = now
            head.mark = self._mark()
            granted.append(head)

    def finish(self, ticket: Ticket) -> None:
        """A granted ticket's task resumed: count it as allowed (once)."""
        if ticket.state == GRANTED:
            ticket.state = DONE
            self.waiting -= 1
            self.allowed_waited += 1

    def _mark(self) -> int:
        # Changes whenever tat may have moved other than by a grant (which does not move it).
        return self.allowed + self.rejected + self.cancelled + self._shifts

    def abandon(self, ticket: Ticket, now: float) -> bool:
        """The ticket's task gave up (cancelled) at ``now``. Exactly once; returns whether the
        queue's head may now be due earlier.

        A queued ticket's reservation is removed: the tickets behind it move forward, as if it
        never existed. A granted ticket that never ran gets its tokens back when nothing else
        touched the bucket since the grant and no ticket was granted later (the usual case: the
        cancel lands in the same loop iteration), less any part the bucket would have forgotten
        by now (a full bucket holds no more than ``burst``); otherwise nothing is refunded, which
        is never more than a run without it would have admitted.
        """
        state = ticket.state
        if state == QUEUED:
            self._queued -= ticket.n
            self._tat -= ticket.n * self._inv_rate
            ticket.state = CANCELLED
            queue = self._queue
            if len(queue) > 2 * self.waiting + 32:  # drop dead entries: memory stays O(waiting)
                self._queue = deque(t for t in queue if t.state == QUEUED)
        elif state == GRANTED:
            now = self._seen(now)
            # Tokens granted later were granted after this ticket's: refunding it then would let
            # a window starting at that later grant hold more than `burst + rate * width`.
            if ticket.mark == self._mark() and self._granted_at <= ticket.ready_at:
                slack = self._tat - self._queued * self._inv_rate - (now - self._burst_time)
                refund = ticket.n * self._inv_rate
                refund = min(refund, slack)
                if refund > 0.0:
                    self._tat -= refund
            ticket.state = CANCELLED
        else:
            return False
        self.waiting -= 1
        self.cancelled += 1
        return True

    def refill(self) -> None:
        """Full again, with no clock reading remembered: the next reading starts afresh, even one
        lower than any seen before (a new event loop's clock). Counters are kept. Only with nobody
        waiting (the shell checks)."""
        self._tat = self._high = self._granted_at = -_INF
        self._queue.clear()
        self._queued = 0
        self._shifts += 1

    def reconfigure(self, rate: float, burst: int, now: float) -> list[Ticket]:
        """Change rate and burst at ``now``, keeping the tokens there (capped at the new burst) and
        the queue's debt. Queued tickets larger than the new burst are rejected and returned."""
        rate = check_number(rate, "rate", min_value=0.0, allow_zero=False)
        burst = check_int(burst, "burst", min_value=1)
        now = self._seen(now)
        evicted: list[Ticket] = []
        for ticket in self._queue:
            if ticket.state == QUEUED and ticket.n > burst:
                ticket.state = REJECTED
                self._queued -= ticket.n
                self._tat -= ticket.n * self._inv_rate
                self.waiting -= 1
                self.rejected += 1
                evicted.append(ticket)
        tat = self._empty_at(now)
        level = min((now - tat) * self._rate, float(burst))  # negative: the queue's debt
        self._rate = float(rate)
        self._burst = burst
        self._inv_rate = 1.0 / rate
        self._burst_time = burst / rate
        self._tat = now - level * self._inv_rate
        self._shifts += 1
        return evicted
