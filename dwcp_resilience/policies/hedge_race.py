"""The state of one hedged call: :class:`Race` (pure, per call, never shared between calls).

The shell (``hedge.py``) keeps one :class:`Race` per call and the core
(:class:`~dwcp_resilience.policies.hedge_core.HedgeCore`) changes it: attempts start
(:meth:`Race.start`), end (:meth:`Race.end`, :meth:`Race.win`), and :meth:`Race.next_start` says
when the next is due. An attempt's exception is one of three kinds (:data:`FAILED`, :data:`OUT`,
:data:`FINAL`), decided by ``HedgeCore.classify``.
"""

from __future__ import annotations

import math

from ..core.errors import Rejected

__all__ = ("FAILED", "FINAL", "OUT", "Race")

_INF = math.inf

# What an attempt's exception means for the race (:meth:`HedgeCore.classify`).
FAILED = 0  # out of the race, and the next attempt starts at once (if one is left)
OUT = 1  # out of the race, the next attempt keeps to the delay (our own rejections)
FINAL = 2  # ends the race: the others are cancelled and the caller gets it


class Race:
    """The state of one hedged call (per call, never shared between calls).

    :ivar started: attempts started. :ivar running: attempts still running.
    :ivar pending: failed attempts not yet answered by a new one (each asks for one at once).
    :ivar winner: the number of the attempt that won, 0 while undecided.
    """

    __slots__ = (
        "error",
        "fatal",
        "final",
        "group",
        "max_attempts",
        "next_at",
        "pending",
        "refused",
        "result",
        "running",
        "sleeper",
        "started",
        "winner",
    )

    def __init__(self, max_attempts: int) -> None:
        self.max_attempts = max_attempts
        self.started = 0
        self.running = 0
        self.pending = 0
        self.next_at = _INF
        self.refused = False
        self.final = False
        self.winner = 0
        self.result: object = None
        self.error: BaseException | None = None
        # The shell's handles (the task group, the scheduler's sleep scope, an interrupt to
        # re-raise): kept here so that nothing per call lives on the shared policy.
        self.group: object = None
        self.sleeper: object = None
        self.fatal: BaseException | None = None

    @property
    def decided(self) -> bool:
        """True once an attempt won or an exception ended the race."""
        return self.winner != 0 or self.final

    def start(self, now: float, delay: float) -> int:
        """Start the next attempt at ``now``; the one after is due ``delay`` later. Returns its
        number."""
        if self.pending:
            self.pending -= 1
        self.started += 1
        self.running += 1
        self.next_at = now + delay
        return self.started

    def next_start(self) -> float | None:
        """When the next attempt is due: ``None`` for never, ``-inf`` for at once (a failure asks
        for it), else the time the delay runs out (``inf``: only after a failure)."""
        if self.decided or self.refused or self.started >= self.max_attempts:
            return None
        if self.pending:
            return -_INF
        if self.running == 0:
            return None
        return self.next_at

    def end(self, exc: BaseException, kind: int) -> None:
        """An attempt of this undecided race ended with ``exc`` (classified as ``kind``)."""
        self.running -= 1
        if kind == FINAL:
            self.final = True
            self.error = exc
            return
        # The caller gets the last failure; a real one is kept over our own rejection.
        if self.error is None or not isinstance(exc, Rejected) or isinstance(self.error, Rejected):
            self.error = exc
        if kind == FAILED:
            self.pending += 1

    def win(self, number: int, result: object) -> None:
        """Attempt ``number`` of this undecided race succeeded with ``result``."""
        self.running -= 1
        self.winner = number
        self.result = result
