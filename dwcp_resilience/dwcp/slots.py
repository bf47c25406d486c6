"""Connection slots of a DWCP peer: who may connect, and who is closed to make room. Pure: plain
``def`` s that take ``now``; the peer calls them from its accept loop and its watchdog.

A peer has ``max_connections`` slots, and at most ``max_per_source`` of them per source address. A
connection that holds a slot without using it starves everyone else: 1,024 connections that never
send a byte, or writers that trickle one byte per second so that no frame ever completes. Three
rules keep the slots for clients that use them:

- **Idle timeout**: a connection that sent nothing for ``idle_timeout`` between frames is closed.
- **Frame timeout**: once the first byte of a frame has arrived, the whole frame (header and body)
  must arrive within ``frame_timeout``, however many bytes trickle in meanwhile.
- **Eviction under pressure**: when a new connection finds no free slot (in all, or for its
  source), the connection that has been unproductive longest (idle since its last answer, or
  inside one frame since its first byte) is closed to make room, if that has lasted at least
  ``evict_after``. Otherwise the newcomer gets ``BUSY`` with ``retry_after``: when the first slot
  becomes evictable. A connection that is being answered is never evicted.

A well-behaved client sends each frame in one write, so it is never inside a frame for long and is
idle only between its own requests: it keeps its slot, and a newcomer is served within
``evict_after`` (1 s by default) however many slots the attackers hold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from ..core.validate import check_int, check_number

__all__ = ("ConnectionSlots", "Slot")

_INF = math.inf


class Slot:
    """One admitted connection's timing, as the rules above read it.

    :ivar source: the remote address (host) it came from.
    :ivar since: when it last finished something (admitted, or its answers sent).
    :ivar frame_since: when the first byte of the frame it is inside arrived (``None`` between
        frames).
    :ivar busy: its requests are being answered (never evicted, no idle or frame timeout).
    :ivar sending: its answers are being written (``send_timeout`` applies).
    :ivar closed_by: why the slots closed it (``"idle"``, ``"frame"``, ``"send"``, ``"evicted"``),
        ``None`` while it may run.
    """

    __slots__ = ("busy", "close", "closed_by", "frame_since", "sending", "since", "source")

    def __init__(self, source: str, now: float, close: Callable[[], None]) -> None:
        self.source = source
        self.since = now
        self.frame_since: float | None = None
        self.busy = False
        self.sending = False
        self.closed_by: str | None = None
        self.close = close

    def unproductive_since(self) -> float:
        """Since when it has held its slot without a request to answer (``inf``: it has one)."""
        if self.busy or self.sending:
            return _INF
        return self.since if self.frame_since is None else self.frame_since


class ConnectionSlots:
    """The slots of one peer (rules in the module docstring).

    Args:
        max_connections: slots in all.
        max_per_source: slots per source address (``None``: no per-source cap).
        idle_timeout: seconds between frames before a connection is closed (``None``: never).
        frame_timeout: seconds from a frame's first byte to its last.
        send_timeout: seconds a connection may take to read its answers.
        evict_after: seconds of being unproductive after which a connection may be closed to make
            room for a newcomer (``inf``: never evict).
    """

    __slots__ = (
        "_by_source",
        "_live",
        "evict_after",
        "evicted",
        "frame_timeout",
        "idle_timeout",
        "max_connections",
        "max_per_source",
        "rejected",
        "send_timeout",
        "timed_out",
    )

    def __init__(
        self,
        *,
        max_connections: int,
        max_per_source: int | None,
        idle_timeout: float | None,
        frame_timeout: float,
        send_timeout: float,
        evict_after: float,
    ) -> None:
        self.max_connections = check_int(max_connections, "max_connections", min_value=1)
        self.max_per_source = (
            None
            if max_per_source is None
            else check_int(max_per_source, "max_connections_per_source", min_value=1)
        )
        self.idle_timeout = (
            None
            if idle_timeout is None
            else check_number(idle_timeout, "idle_timeout", min_value=0, allow_zero=False)
        )
        self.frame_timeout = check_number(
            frame_timeout, "frame_timeout", min_value=0, allow_zero=False
        )
        self.send_timeout = check_number(
            send_timeout, "send_timeout", min_value=0, allow_zero=False
        )
        self.evict_after = check_number(evict_after, "evict_after", min_value=0, allow_inf=True)
        self._live: set[Slot] = set()
        self._by_source: dict[str, int] = {}
        self.rejected = self.evicted = self.timed_out = 0

    def __len__(self) -> int:
        return len(self._live)

    def admit(self, source: str, now: float, close: Callable[[], None]) -> Slot | float:
        """A slot for a new connection from ``source``, or the ``retry_after`` (seconds) to answer
        with ``BUSY``. Evicting a connection to make room calls its ``close`` at once."""
        per_source = self.max_per_source
        if per_source is not None and self._by_source.get(source, 0) >= per_source:
            room = self._make_room(now, source)
        elif len(self._live) >= self.max_connections:
            room = self._make_room(now, None)
        else:
            room = None
        if room is not None:
            self.rejected += 1
            return room
        slot = Slot(source, now, close)
        self._live.add(slot)
        self._by_source[source] = self._by_source.get(source, 0) + 1
        return slot

    def _make_room(self, now: float, source: str | None) -> float | None:
        """Evict the longest-unproductive slot (of ``source``, if given); ``None`` once done, else
        the seconds until one may be evicted."""
        victim: Slot | None = None
        oldest = _INF
        for slot in self._live:
            if source is not None and slot.source != source:
                continue
            since = slot.unproductive_since()
            if since < oldest:
                victim, oldest = slot, since
        if victim is None or oldest == _INF:
            return self.evict_after if self.evict_after != _INF else 1.0  # all busy
        wait = oldest + self.evict_after - now
        if wait > 0:
            return wait
        self._drop(victim, "evicted")
        self.evicted += 1
        return None

    def _drop(self, slot: Slot, reason: str) -> None:
        if slot.closed_by is not None:
            return
        slot.closed_by = reason
        self._live.discard(slot)
        left = self._by_source[slot.source] - 1
        if left:
            self._by_source[slot.source] = left
        else:
            del self._by_source[slot.source]
        slot.close()

    def release(self, slot: Slot) -> None:
        """The connection ended (by itself, or after :meth:`admit` or :meth:`expire` closed it)."""
        if slot.closed_by is None:
            slot.closed_by = "ended"
            self._live.discard(slot)
            left = self._by_source[slot.source] - 1
            if left:
                self._by_source[slot.source] = left
            else:
                del self._by_source[slot.source]

    def expire(self, now: float) -> int:
        """Close every slot past its idle, frame or send timeout; return how many."""
        overdue: list[tuple[Slot, str]] = []
        idle = self.idle_timeout
        for slot in self._live:
            if slot.sending:
                if now - slot.since > self.send_timeout:
                    overdue.append((slot, "send"))
            elif slot.busy:
                continue
            elif slot.frame_since is not None:
                if now - slot.frame_since > self.frame_timeout:
                    overdue.append((slot, "frame"))
            elif idle is not None and now - slot.since > idle:
                overdue.append((slot, "idle"))
        for slot, reason in overdue:
            self._drop(slot, reason)
        self.timed_out += len(overdue)
        return len(overdue)

    def period(self) -> float:
        """How often the watchdog should call :meth:`expire`."""
        shortest = min(self.send_timeout, self.frame_timeout, self.idle_timeout or _INF)
        return min(1.0, max(0.01, shortest / 4))

    def by_source(self) -> Iterator[tuple[str, int]]:
        """``(source, live connections)`` pairs."""
        return iter(self._by_source.items())
