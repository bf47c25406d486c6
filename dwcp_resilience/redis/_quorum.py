"""The fleet breaker's quorum decision, pure: which reports count, how many are needed, and when a
quorum trips the local breaker. No I/O and no clock (``tests/test_redis_quorum.py`` drives it with
Hypothesis); :class:`~dwcp_resilience.redis.FleetBreaker` feeds it what one poll of Redis returned.

Two kinds of quorum:

- an ``int`` ``q`` (absolute): at least ``q`` *other* instances reported an opening within the
  window, whether or not they are still live members;
- a :class:`QuorumShare` ``(fraction, minimum)``: at least ``max(minimum, ceil(fraction * others))``
  of the ``others`` live members (the instances that polled within the member TTL, this one
  excluded) reported within the window; reports of instances that are no longer live do not count,
  so a crashed (or restarted, hence renamed) instance's report leaves the numerator when its
  membership leaves the denominator. ``minimum`` keeps a small or just-started fleet from following
  one instance: with 1 other live member, 1 report is 100 % of the others, but ``minimum=2`` still
  needs 2.

The arithmetic is exact: ``fraction`` is a :class:`fractions.Fraction` (a float is read as the
decimal it prints as: ``0.1`` is ``1/10``), so ``ceil(fraction * others)`` has no rounding error.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from fractions import Fraction
from numbers import Rational

from ..core.validate import check_int

__all__ = (
    "Quorum",
    "QuorumCount",
    "QuorumFollower",
    "QuorumShare",
    "check_quorum",
    "count_reports",
    "reports_needed",
)


@dataclass(frozen=True, slots=True)
class QuorumShare:
    """A quorum as a share of the live members: trip once ``fraction`` of the *other* live members
    reported an opening, and at least ``minimum`` of them.

    Args:
        fraction: in (0, 1]; a ``float``, an ``int`` (``1``: every other live member) or a
            :class:`fractions.Fraction` (``Fraction(1, 3)`` for an exact third).
        minimum: the fewest reports that can ever trip (an int >= 1; default 2, so one sick
            instance never opens the others, however small the fleet).

    Raises:
        TypeError: ``fraction`` is not a real number (``True`` is not one) or ``minimum`` not an int.
        ValueError: ``fraction`` is NaN, infinite, <= 0 or > 1, or ``minimum`` < 1.
    """

    fraction: Fraction
    minimum: int = 2

    def __init__(self, fraction: float | Fraction, minimum: int = 2) -> None:
        object.__setattr__(self, "fraction", _check_fraction(fraction))
        object.__setattr__(self, "minimum", check_int(minimum, "minimum", min_value=1))

    def needed(self, others: int) -> int:
        """Reports needed with ``others`` other live members: ``max(minimum, ceil(fraction *
        others))``."""
        return max(self.minimum, math.ceil(self.fraction * others))

    def __repr__(self) -> str:
        return f"QuorumShare({self.fraction}, minimum={self.minimum})"


def _check_fraction(value: object) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, float | int | Rational):
        raise TypeError(f"fraction must be a real number, got {type(value).__name__}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"fraction must be finite, got {value!r}")
        exact = Fraction(repr(value))  # the decimal the user wrote: 0.1 is 1/10, not 0.1000...055
    else:
        exact = Fraction(value)
    if not 0 < exact <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {value!r}")
    return exact


Quorum = int | QuorumShare
"""An absolute count of other reporters (``int``) or a :class:`QuorumShare` of live members."""


def check_quorum(quorum: object) -> Quorum:
    """``quorum`` validated: an int >= 1 or a :class:`QuorumShare`.

    Raises:
        TypeError: neither an int (``True`` is not one) nor a :class:`QuorumShare`.
        ValueError: an int < 1.
    """
    if isinstance(quorum, QuorumShare):
        return quorum
    if isinstance(quorum, bool) or not isinstance(quorum, int):
        raise TypeError(f"quorum must be an int or a QuorumShare, got {type(quorum).__name__}")
    return check_int(quorum, "quorum", min_value=1)


def reports_needed(quorum: Quorum, others: int) -> int:
    """Other instances' reports needed to trip when ``others`` other members are live."""
    return quorum if isinstance(quorum, int) else quorum.needed(others)


@dataclass(frozen=True, slots=True)
class QuorumCount:
    """What one poll says about the quorum.

    :ivar reporters: the other instances whose reports count, sorted.
    :ivar members: live members, this instance included.
    :ivar needed: reports needed to trip now.
    :ivar newest: the newest counting report's time (Redis ms; ``-inf`` with none).
    """

    reporters: tuple[str, ...]
    members: int
    needed: int
    newest: float

    @property
    def reached(self) -> bool:
        """At least ``needed`` reports count."""
        return len(self.reporters) >= self.needed


def count_reports(
    quorum: Quorum,
    me: str,
    reports: Mapping[str, float],
    live: Collection[str],
    members: int,
) -> QuorumCount:
    """Count the reports of one poll.

    Args:
        quorum: the fleet breaker's quorum.
        me: this instance (its own report never counts: its breaker already acted on it).
        reports: ``{instance: time of its latest opening}`` within the window.
        live: which of those reporters are live members (``QuorumShare`` counts only them).
        members: live members, this instance included (at least 1 is assumed).
    """
    members = max(1, members)
    if isinstance(quorum, QuorumShare):
        counted = {who: at for who, at in reports.items() if who != me and who in live}
    else:
        counted = {who: at for who, at in reports.items() if who != me}
    return QuorumCount(
        reporters=tuple(sorted(counted)),
        members=members,
        needed=reports_needed(quorum, members - 1),
        newest=max(counted.values(), default=-math.inf),
    )


class QuorumFollower:
    """When a quorum trips the local breaker: once per new evidence, and only a CLOSED one.

    A reached quorum trips when at least one counting report is newer than every report already
    acted on (the watermark). A reached quorum seen while the local breaker cannot be tripped (open,
    half-open or disabled) moves the watermark too: those reports are absorbed, so once the local
    breaker's own probes close it, the same reports do not open it again (recovery stays local).
    A quorum not reached leaves the watermark alone: if members leave and the threshold falls to the
    reports already there, the next poll trips.
    """

    __slots__ = ("watermark",)

    def __init__(self) -> None:
        #: the newest report (Redis ms) acted on or absorbed.
        self.watermark = -math.inf

    def observe(self, count: QuorumCount, can_trip: bool) -> bool:
        """True: trip the local breaker now (``can_trip``: it is CLOSED and not disabled)."""
        if not count.reached or count.newest <= self.watermark:
            return False
        self.watermark = count.newest
        return can_trip
