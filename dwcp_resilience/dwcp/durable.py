"""``DurableMailboxes``: the peer's mailboxes kept in SQLite, so that what the peer acknowledged
survives a crash of the peer.

The decisions stay in the pure :class:`~dwcp_resilience.dwcp.mailbox.Mailboxes` core; an
:class:`~dwcp_resilience.dwcp.journal.SQLiteJournal` (WAL mode) queues each of its changes as an SQL
statement on the event loop, and :meth:`DurableMailboxes.commit` writes everything queued in one
transaction, in a worker thread of its own, so the event loop never waits on the disk. Changes
queued while a transaction is being written go into the next one (group commit): one fsync for all
of them.

What holds:

- ``await commit()`` returns once every change made before the call is committed. The peer answers
  SEND, RECEIVE and DELIVER_ACK only after that: an ACK means the message is on disk (a duplicate's
  ACK waits for its first copy), a DELIVER means its lease is, an answered DELIVER_ACK means the
  message will not come back.
- :meth:`DurableMailboxes.open` loads the file into a fresh core: a message handed out and not
  acknowledged before a crash is handed out again, first, flagged redelivered; an acknowledged one
  is gone, and its id stays in the de-duplication window. The core's counters (``stored``,
  ``delivered``, ...) count the current run only.
- ``synchronous="FULL"`` (the default) makes a commit survive a power loss; ``"NORMAL"`` a crash of
  the process only (see :mod:`~dwcp_resilience.dwcp.journal`). The default is ``FULL`` because an
  acknowledgement is a promise to the sender, who forgets the message once it has it; group commit
  keeps its cost to one fsync per transaction.
- Fail-stop: if a transaction fails (disk full, I/O error), the core holds changes that the disk does
  not, so every later ``commit`` raises :class:`~dwcp_resilience.dwcp.journal.MailboxStoreError`
  too; the peer then stops, and a restart recovers the last committed state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Self

import anyio

from .journal import MailboxStoreError, SQLiteJournal, Synchronous
from .mailbox import Mailboxes

__all__ = ("DurableMailboxes", "DurableStatistics")


@dataclass(frozen=True, slots=True)
class DurableStatistics:
    """A snapshot of a :class:`DurableMailboxes`' writing."""

    path: str
    synchronous: str
    commits: int  # transactions written in this run
    changes: int  # statements written in those transactions
    largest_commit: int  # statements in the largest one
    queued: int  # changes not yet handed to a transaction
    committing: bool  # a transaction is being written now


class DurableMailboxes:
    """Mailboxes stored in SQLite: a :class:`Mailboxes` core with a :class:`SQLiteJournal`, and
    group commit in a worker thread (see the module docstring).

    Args:
        path: the database file (created if missing; its directory must exist).
        capacity, max_nodes, dedup_window, lease_timeout: see :class:`Mailboxes`.
        synchronous: ``"FULL"`` (default: a commit survives power loss) or ``"NORMAL"`` (it survives
            a crash of the process only).

    Use: ``async with DurableMailboxes(path) as store:``, change ``store.mailboxes`` (the core,
    plain calls), then ``await store.commit()`` before telling anyone about the change. The peer does
    this when given ``store_path=``.

    Raises:
        TypeError, ValueError: a bad path or setting (naming it).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        capacity: int = 10_000,
        max_nodes: int = 10_000,
        dedup_window: int = 100_000,
        lease_timeout: float = 30.0,
        synchronous: Synchronous = "FULL",
    ) -> None:
        self._journal = SQLiteJournal(path, synchronous=synchronous)  # validates both
        self.path, self.synchronous = self._journal.path, self._journal.synchronous
        # A fresh journal and core per open (a core kept from a past open writes nowhere); one is
        # built now to validate the settings, naming the field.
        self._new_core = partial(
            Mailboxes,
            capacity=capacity,
            max_nodes=max_nodes,
            dedup_window=dedup_window,
            lease_timeout=lease_timeout,
        )
        self._new_core()
        self._core: Mailboxes | None = None  # None: not open
        self._limiter: anyio.CapacityLimiter | None = None
        self._written: anyio.Event | None = None
        self._failed: BaseException | None = None
        self._taken = self._committed = 0  # batches handed to a transaction, and committed
        self._writing = False
        self._commits = self._changes = self._largest = 0

    # -- reading -----------------------------------------------------------------------------------

    @property
    def mailboxes(self) -> Mailboxes:
        """The core (``RuntimeError`` when not open)."""
        if self._core is None:
            raise RuntimeError(f"mailbox store {self.path!r} is not open")
        return self._core

    def statistics(self) -> DurableStatistics:
        """A snapshot of the counters."""
        return DurableStatistics(
            self.path,
            self.synchronous,
            self._commits,
            self._changes,
            self._largest,
            self._journal.queued,
            self._writing,
        )

    def __repr__(self) -> str:
        state = "open" if self._core is not None else "closed"
        if self._failed is not None:
            state = "failed"
        return (
            f"<DurableMailboxes {self.path!r} {state} synchronous={self.synchronous} "
            f"commits={self._commits} changes={self._changes}>"
        )

    # -- lifetime ----------------------------------------------------------------------------------

    async def open(self) -> Mailboxes:
        """Load the file into a fresh core and return it (also :attr:`mailboxes`).

        Raises:
            RuntimeError: it is open already.
            MailboxStoreError: see :meth:`SQLiteJournal.open`.
        """
        if self._core is not None:
            raise RuntimeError(f"mailbox store {self.path!r} is open already")
        journal = SQLiteJournal(self.path, synchronous=self.synchronous)
        core = self._new_core(journal=journal)
        limiter = anyio.CapacityLimiter(1)  # one thread at a time uses the connection
        with anyio.CancelScope(shield=True):  # a cancelled open must not leak an open file
            await anyio.to_thread.run_sync(journal.open, core, limiter=limiter)
        self._journal, self._core, self._limiter = journal, core, limiter
        self._written = anyio.Event()
        self._failed = None
        self._taken = self._committed = 0
        self._commits = self._changes = self._largest = 0
        return core

    async def aclose(self) -> None:
        """Commit what is queued (unless the store failed), then close the file (idempotent)."""
        if self._core is None:
            return
        try:
            if self._failed is None:
                with anyio.CancelScope(shield=True):
                    await self.commit()
        finally:
            self._core = None
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._journal.close, limiter=self._limiter)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- committing --------------------------------------------------------------------------------

    async def commit(self) -> None:
        """Return once every change made to :attr:`mailboxes` before this call is committed.

        Immediate when nothing is queued or being written. Otherwise one caller writes everything
        queued in one transaction in the worker thread while the others wait for it (their changes
        are in it, or in the next one).

        Raises:
            RuntimeError: the store is not open.
            MailboxStoreError: a transaction failed, now or before (the store stays failed).
        """
        journal = self._journal
        if self._core is None:
            raise RuntimeError(f"mailbox store {self.path!r} is not open")
        target = self._taken + 1 if journal.queued else self._taken
        while self._committed < target:
            self._raise_if_failed()
            if self._writing:
                assert self._written is not None
                await self._written.wait()
            else:
                await self._write(journal)
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._failed is not None:
            raise MailboxStoreError(
                f"{self.path}: a commit failed ({self._failed!r}); restart to recover"
            ) from self._failed

    async def _write(self, journal: SQLiteJournal) -> None:
        changes = journal.take()
        self._taken += 1
        batch = self._taken
        written = self._written
        self._writing = True
        try:
            with anyio.CancelScope(shield=True):  # the bookkeeping below must happen
                await anyio.to_thread.run_sync(journal.write, changes, limiter=self._limiter)
        except Exception as exc:
            self._failed = exc
        else:
            self._committed = batch
            self._commits += 1
            self._changes += len(changes)
            self._largest = max(self._largest, len(changes))
        finally:
            self._writing = False
            self._written = anyio.Event()
            if written is not None:
                written.set()
