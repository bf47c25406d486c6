"""The pure core of a DWCP peer: bounded mailboxes with de-duplication and delivery leases.

Plain ``def``\\ s, no I/O, no ``await``; the peer calls them between reads and writes, and property tests
drive them directly.

- ``store`` puts a message in its recipient's mailbox once per message id: a retried SEND finds the id
  (waiting, handed out, or acknowledged within the last ``dedup_window`` ids) and is a duplicate.
- ``take`` hands out the oldest waiting message and *leases* it to a holder (a connection). It stays in
  the mailbox until ``ack``; if the holder goes away (``release``) or the lease runs out
  (``lease_timeout``), it waits again at the front, to be handed out again: at-least-once delivery,
  with the message id for the reader to de-duplicate.
- Memory is bounded: ``capacity`` messages per mailbox, ``max_nodes`` mailboxes, ``dedup_window``
  remembered ids; an empty mailbox is removed.

Persistence is not decided here: a :class:`MailboxJournal` passed as ``journal`` is told every change
the core made, in order (a message stored, leased, back at the front, removed; an id remembered or
forgotten), and mirrors it. :class:`~dwcp_resilience.dwcp.durable.DurableMailboxes` is such a
journal, on SQLite; it rebuilds a core from disk with :meth:`Mailboxes.load`,
:meth:`Mailboxes.load_seen` and :meth:`Mailboxes.release_all`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from ..core.validate import check_int, check_number

__all__ = ("MailboxJournal", "Mailboxes", "StoreResult", "StoredMessage")


class StoreResult(Enum):
    """What ``store`` did."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    FULL = "full"


@dataclass(slots=True, eq=False)
class StoredMessage:
    """A message in a mailbox."""

    message_id: bytes
    sender: str
    body: bytes
    deliveries: int = 0
    holder: int | None = None
    leased_at: float = 0.0


class MailboxJournal(Protocol):
    """What a store is told of each change :class:`Mailboxes` makes, in the order it makes them.

    Plain calls, made inside the core's own ``def``\\ s (on the event loop): keep them cheap and let
    them not raise (record the change, write it later). The ``message`` objects are the core's own,
    read them at once: the core changes them later.
    """

    def stored(self, node: str, message: StoredMessage) -> None:
        """``message`` now waits at the back of ``node``'s mailbox."""

    def leased(self, node: str, message: StoredMessage) -> None:
        """``message`` was handed out (its ``deliveries`` went up by one)."""

    def returned(self, node: str, message: StoredMessage) -> None:
        """``message``'s lease ended (released or expired): it waits again, at the front."""

    def removed(self, node: str, message_id: bytes) -> None:
        """The message was acknowledged by its reader and is gone."""

    def remembered(self, node: str, message_id: bytes) -> None:
        """The id joins the de-duplication window (newest)."""

    def forgotten(self, node: str, message_id: bytes) -> None:
        """The id left the de-duplication window."""


@dataclass(slots=True, eq=False)
class _Box:
    waiting: OrderedDict[bytes, StoredMessage] = field(default_factory=OrderedDict)
    leased: OrderedDict[bytes, StoredMessage] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return len(self.waiting) + len(self.leased)


class Mailboxes:
    """Every node's mailbox on one peer."""

    __slots__ = (
        "_boxes",
        "_capacity",
        "_dedup_window",
        "_holders",
        "_journal",
        "_lease_timeout",
        "_max_nodes",
        "_seen",
        "delivered",
        "deliveries",
        "duplicates",
        "redeliveries",
        "rejected_full",
        "stored",
    )

    def __init__(
        self,
        *,
        capacity: int = 10_000,
        max_nodes: int = 10_000,
        dedup_window: int = 100_000,
        lease_timeout: float = 30.0,
        journal: MailboxJournal | None = None,
    ) -> None:
        self._capacity = check_int(capacity, "capacity", min_value=1)
        self._max_nodes = check_int(max_nodes, "max_nodes", min_value=1)
        self._dedup_window = check_int(dedup_window, "dedup_window", min_value=0)
        self._lease_timeout = check_number(
            lease_timeout, "lease_timeout", min_value=0, allow_zero=False, allow_inf=True
        )
        self._boxes: dict[str, _Box] = {}
        self._seen: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._holders: dict[int, dict[tuple[str, bytes], None]] = {}
        self._journal = journal
        self.stored = self.duplicates = self.rejected_full = 0
        self.deliveries = self.redeliveries = self.delivered = 0

    # -- reading ---------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Messages held (waiting and leased) over all mailboxes."""
        return sum(len(box) for box in self._boxes.values())

    @property
    def nodes(self) -> int:
        """Mailboxes that hold at least one message."""
        return len(self._boxes)

    @property
    def leases(self) -> int:
        """Messages handed out and not yet acknowledged."""
        return sum(len(box.leased) for box in self._boxes.values())

    def pending(self, node: str) -> int:
        """Messages held for ``node``."""
        box = self._boxes.get(node)
        return 0 if box is None else len(box)

    # -- changing ----------------------------------------------------------------------------------------

    def store(self, recipient: str, message_id: bytes, sender: str, body: bytes) -> StoreResult:
        """Put a message in ``recipient``'s mailbox unless its id is known there."""
        box = self._boxes.get(recipient)
        if (recipient, message_id) in self._seen or (
            box is not None and (message_id in box.waiting or message_id in box.leased)
        ):
            self.duplicates += 1
            return StoreResult.DUPLICATE
        if box is None:
            if len(self._boxes) >= self._max_nodes:
                self.rejected_full += 1
                return StoreResult.FULL
            box = self._boxes[recipient] = _Box()
        elif len(box) >= self._capacity:
            self.rejected_full += 1
            return StoreResult.FULL
        message = box.waiting[message_id] = StoredMessage(message_id, sender, body)
        self.stored += 1
        if self._journal is not None:
            self._journal.stored(recipient, message)
        return StoreResult.STORED

    def take(self, node: str, holder: int, now: float) -> StoredMessage | None:
        """Lease the oldest waiting message of ``node`` to ``holder``; ``None`` if none waits."""
        box = self._boxes.get(node)
        if box is None:
            return None
        self._expire(node, box, now)
        if not box.waiting:
            return None
        mid, message = box.waiting.popitem(last=False)
        message.deliveries += 1
        message.holder = holder
        message.leased_at = now
        box.leased[mid] = message
        self._holders.setdefault(holder, {})[node, mid] = None
        self.deliveries += 1
        if message.deliveries > 1:
            self.redeliveries += 1
        if self._journal is not None:
            self._journal.leased(node, message)
        return message

    def ack(self, node: str, message_id: bytes) -> bool:
        """Forget a delivered message (waiting or leased). False if it was not held (idempotent)."""
        box = self._boxes.get(node)
        if box is None:
            return False
        message = box.leased.pop(message_id, None)
        if message is None:
            message = box.waiting.pop(message_id, None)
            if message is None:
                return False
        if message.holder is not None:
            leases = self._holders.get(message.holder)
            if leases is not None:
                leases.pop((node, message_id), None)
                if not leases:
                    del self._holders[message.holder]
        self.delivered += 1
        if self._journal is not None:
            self._journal.removed(node, message_id)
        self._remember(node, message_id)
        if not box:
            del self._boxes[node]
        return True

    def release(self, holder: int) -> int:
        """``holder`` went away: its leased messages wait again, at the front. Returns how many."""
        leases = self._holders.pop(holder, None)
        if not leases:
            return 0
        returned = 0
        for node, mid in reversed(leases):
            box = self._boxes.get(node)
            message = None if box is None else box.leased.get(mid)
            if box is None or message is None or message.holder != holder:
                continue
            del box.leased[mid]
            self._wait_again(node, box, message)
            returned += 1
        return returned

    def release_all(self) -> int:
        """Every holder went away (a restart): each leased message waits again at the front of
        its mailbox, the oldest lease first. Returns how many."""
        self._holders.clear()
        returned = 0
        for node, box in self._boxes.items():
            leased = box.leased
            while leased:
                _, message = (
                    leased.popitem()
                )  # the newest lease first: it ends up behind the others
                self._wait_again(node, box, message)
                returned += 1
        return returned

    # -- loading a stored state (no checks, no journal of the message itself) ----------------------------

    def load(
        self,
        node: str,
        message_id: bytes,
        sender: str,
        body: bytes,
        *,
        deliveries: int = 0,
        leased: bool = False,
    ) -> None:
        """Put back a message read from storage, behind the others of its kind in ``node``'s mailbox.

        A ``leased`` one is a lease of a past run: it has no holder and has expired already; call
        :meth:`release_all` once everything is loaded. ``capacity`` and ``max_nodes`` are not
        checked (they gate new messages; a stored one was acknowledged to its sender already).
        """
        box = self._boxes.get(node)
        if box is None:
            box = self._boxes[node] = _Box()
        message = StoredMessage(message_id, sender, body, deliveries)
        if leased:
            message.leased_at = float("-inf")
            box.leased[message_id] = message
        else:
            box.waiting[message_id] = message

    def load_seen(self, node: str, message_id: bytes) -> None:
        """Put back an acknowledged id read from storage (oldest first); the window keeps the newest
        ``dedup_window`` ids and tells the journal which ones it forgot."""
        self._remember(node, message_id, loaded=True)

    # -- internals -----------------------------------------------------------------------------------------

    def _wait_again(self, node: str, box: _Box, message: StoredMessage) -> None:
        """A lease ended: ``message`` (already out of ``box.leased``) waits again, at the front."""
        message.holder = None
        box.waiting[message.message_id] = message
        box.waiting.move_to_end(message.message_id, last=False)
        if self._journal is not None:
            self._journal.returned(node, message)

    def _expire(self, node: str, box: _Box, now: float) -> None:
        deadline = now - self._lease_timeout
        leased = box.leased
        expired: list[StoredMessage] = []
        while leased:
            message = next(iter(leased.values()))
            if message.leased_at > deadline:
                break
            del leased[message.message_id]
            expired.append(message)
        for message in reversed(expired):
            if message.holder is not None:
                leases = self._holders.get(message.holder)
                if leases is not None:
                    leases.pop((node, message.message_id), None)
                    if not leases:
                        del self._holders[message.holder]
            self._wait_again(node, box, message)

    def _remember(self, node: str, message_id: bytes, *, loaded: bool = False) -> None:
        journal = self._journal
        if self._dedup_window == 0:
            if loaded and journal is not None:
                journal.forgotten(node, message_id)
            return
        seen = self._seen
        seen[node, message_id] = None
        if journal is not None and not loaded:
            journal.remembered(node, message_id)
        if len(seen) > self._dedup_window:
            old_node, old_id = seen.popitem(last=False)[0]
            if journal is not None:
                journal.forgotten(old_node, old_id)

    def __repr__(self) -> str:
        return (
            f"<Mailboxes nodes={len(self._boxes)} held={len(self)} leases={self.leases} "
            f"stored={self.stored} delivered={self.delivered} duplicates={self.duplicates}>"
        )
