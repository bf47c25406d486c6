"""The fleet breaker's event and statistics records (re-exported by
:mod:`dwcp_resilience.redis.breaker`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.events import Event
from ..policies.breaker import BreakerState
from ._quorum import Quorum

__all__ = ("FleetBreakerFollowed", "FleetBreakerStatistics")


@dataclass(frozen=True, slots=True)
class FleetBreakerFollowed(Event):
    """The local breaker was tripped because a quorum of other instances reported an opening.

    :ivar reporters: the other instances whose reports counted (within the window; with a
        :class:`~dwcp_resilience.redis.QuorumShare`, live members only).
    :ivar quorum: the reports that were needed (an ``int`` quorum itself, or what a
        :class:`~dwcp_resilience.redis.QuorumShare` asked of the live members then).
    :ivar members: the live members then, this instance included.
    """

    reporters: tuple[str, ...]
    quorum: int
    members: int


@dataclass(frozen=True, slots=True)
class FleetBreakerStatistics:
    """A snapshot of a :class:`~dwcp_resilience.redis.FleetBreaker`.

    :ivar name: the fleet breaker's name (the shared key's name).
    :ivar instance: this instance's id in shared state.
    :ivar quorum: the configured quorum (an ``int``, or a
        :class:`~dwcp_resilience.redis.QuorumShare`).
    :ivar window: seconds a report counts.
    :ivar member_ttl: seconds a member stays live after its latest poll.
    :ivar shared: True while Redis is reachable (False: local-only decisions).
    :ivar state: the local breaker's state.
    :ivar reports_published: own openings written to Redis (re-publications included).
    :ivar reports_pending: 1 while an own opening waits to be published, else 0.
    :ivar quorum_trips: times the fleet tripped the local breaker.
    :ivar fallbacks: times this fleet breaker fell back to local-only decisions.
    :ivar last_reporters: other instances whose reports counted at the last poll.
    :ivar polls: successful polls of the shared state (each one a heartbeat).
    :ivar members: live members at the last poll, this instance included (0 before the first).
    :ivar reports_needed: reports needed to trip, as of the last poll (before the first, with no
        other member known).
    """

    name: str
    instance: str
    quorum: Quorum
    window: float
    member_ttl: float
    shared: bool
    state: BreakerState
    reports_published: int
    reports_pending: int
    quorum_trips: int
    fallbacks: int
    last_reporters: int
    polls: int
    members: int
    reports_needed: int
