"""``SQLiteJournal``: the mailbox core's changes kept in one SQLite file, in WAL mode.

It is a :class:`~dwcp_resilience.dwcp.mailbox.MailboxJournal`: each change the pure core decides
(a message stored, leased, back at the front, acknowledged; an id remembered or forgotten) is queued
as one SQL statement on the caller's thread, with no I/O; :meth:`SQLiteJournal.write` runs queued
statements in one transaction. :meth:`SQLiteJournal.open` loads the file into a fresh core, and every
lease of the past run waits again at the front (``Mailboxes.release_all``). Nothing is decided here;
:class:`~dwcp_resilience.dwcp.durable.DurableMailboxes` runs this from the event loop.

The file: table ``message``, one row per held message with its order among the waiting messages of
its node, or among the leased ones; table ``seen``, the de-duplication window, oldest first.

Durability, ``synchronous``: in WAL mode, SQLite's ``NORMAL`` writes each commit to the WAL file
without an fsync: the commit survives a crash of the process (the OS holds the data), but a power
loss or an OS crash can roll back the commits since the last checkpoint. ``FULL`` (the default)
fsyncs the WAL at each commit, so a committed change survives a power loss too, as far as the disk
honours fsync (``PRAGMA fullfsync`` is set as well; it matters on macOS only).

One process at a time: the file is opened in SQLite's exclusive locking mode, and a second opener
gets :class:`MailboxStoreError` (the lock of a killed process goes away with it).
"""

from __future__ import annotations

import os
import sqlite3
from itertools import groupby
from operator import itemgetter
from typing import Literal

from ..core.validate import check_name
from .errors import DWCPError
from .mailbox import Mailboxes, StoredMessage

__all__ = ("MailboxStoreError", "SQLiteJournal", "Synchronous")

Synchronous = Literal["FULL", "NORMAL"]
"""The ``synchronous`` settings offered: ``"FULL"`` or ``"NORMAL"``."""
Change = tuple[str, tuple[object, ...]]

_SCHEMA_VERSION = 1
_SCHEMA = (
    # position: order of the waiting messages of a node (lowest first); lease: order of the leased
    # ones (lowest first), NULL while the message waits.
    "CREATE TABLE message (node TEXT NOT NULL, id BLOB NOT NULL, sender TEXT NOT NULL,"
    " body BLOB NOT NULL, deliveries INTEGER NOT NULL, position INTEGER NOT NULL, lease INTEGER,"
    " PRIMARY KEY (node, id))",
    "CREATE TABLE seen (node TEXT NOT NULL, id BLOB NOT NULL, position INTEGER NOT NULL,"
    " PRIMARY KEY (node, id))",
    f"PRAGMA user_version = {_SCHEMA_VERSION}",
)
_INSERT = "INSERT INTO message VALUES (?, ?, ?, ?, 0, ?, NULL)"
_LEASE = "UPDATE message SET deliveries = ?, lease = ? WHERE node = ? AND id = ?"
_RETURN = "UPDATE message SET lease = NULL, position = ? WHERE node = ? AND id = ?"
_REMOVE = "DELETE FROM message WHERE node = ? AND id = ?"
_REMEMBER = "INSERT INTO seen VALUES (?, ?, ?)"
_FORGET = "DELETE FROM seen WHERE node = ? AND id = ?"
# Statements that must change exactly one row each: anything else means the file and the core
# disagree, and the store stops.
_ONE_ROW = frozenset({_LEASE, _RETURN, _REMOVE, _FORGET})


class MailboxStoreError(DWCPError):
    """The mailbox store could not be opened, or a commit failed (the store then stays failed)."""


def _check_synchronous(value: object) -> Synchronous:
    if value == "FULL":
        return "FULL"
    if value == "NORMAL":
        return "NORMAL"
    raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', got {value!r}")


def _check_path(path: object) -> str:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return check_name(os.fspath(path), "path")


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite rolls some failures back itself (a full disk, an I/O error): ROLLBACK would then fail
    # and hide the error that matters.
    if conn.in_transaction:
        conn.execute("ROLLBACK")


class SQLiteJournal:
    """The synchronous half: a :class:`~dwcp_resilience.dwcp.mailbox.MailboxJournal` on one SQLite
    file. Each change is queued as a statement on the caller's thread; :meth:`write` runs queued
    statements in one transaction. Use the connection from one thread at a time.

    Args:
        path: the database file (created if missing; its directory must exist).
        synchronous: ``"FULL"`` or ``"NORMAL"`` (see the module docstring).
    """

    __slots__ = ("_back", "_conn", "_front", "_leases", "_queue", "_seen", "path", "synchronous")

    def __init__(self, path: str | os.PathLike[str], *, synchronous: Synchronous = "FULL") -> None:
        self.path = _check_path(path)
        self.synchronous = _check_synchronous(synchronous)
        self._conn: sqlite3.Connection | None = None
        self._queue: list[Change] = []
        self._back = self._front = self._leases = self._seen = 0

    # -- MailboxJournal: queue the change (no I/O) -------------------------------------------------

    def stored(self, node: str, message: StoredMessage) -> None:
        """Queue: ``message`` waits at the back."""
        self._back += 1
        self._queue.append(
            (_INSERT, (node, message.message_id, message.sender, message.body, self._back))
        )

    def leased(self, node: str, message: StoredMessage) -> None:
        """Queue: ``message`` was handed out."""
        self._leases += 1
        self._queue.append((_LEASE, (message.deliveries, self._leases, node, message.message_id)))

    def returned(self, node: str, message: StoredMessage) -> None:
        """Queue: ``message`` waits again, at the front."""
        self._front -= 1
        self._queue.append((_RETURN, (self._front, node, message.message_id)))

    def removed(self, node: str, message_id: bytes) -> None:
        """Queue: the message was acknowledged."""
        self._queue.append((_REMOVE, (node, message_id)))

    def remembered(self, node: str, message_id: bytes) -> None:
        """Queue: the id joins the de-duplication window."""
        self._seen += 1
        self._queue.append((_REMEMBER, (node, message_id, self._seen)))

    def forgotten(self, node: str, message_id: bytes) -> None:
        """Queue: the id left the de-duplication window."""
        self._queue.append((_FORGET, (node, message_id)))

    # -- I/O ---------------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Changes queued and not yet handed to :meth:`write`."""
        return len(self._queue)

    def take(self) -> list[Change]:
        """The queued changes, oldest first (the queue is then empty): pass them to :meth:`write`."""
        changes, self._queue = self._queue, []
        return changes

    def open(self, core: Mailboxes) -> None:
        """Open the file and load it into ``core`` (empty, built with ``journal=self``); the leases
        of the past run wait again, and that is committed before this returns.

        Raises:
            MailboxStoreError: the file is in use by another process, is not a mailbox store, or
                cannot be opened or read.
        """
        if self._conn is not None:
            raise MailboxStoreError(f"{self.path}: already open")
        self._queue = []  # changes queued after the last write of a past run never happened
        try:
            self._conn = self._connect()
            self._load(self._conn, core)
            core.release_all()
            self.write(self.take())
        except sqlite3.Error as exc:
            self.close()
            raise MailboxStoreError(f"{self.path}: cannot open the mailbox store: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions, ours are explicit. timeout=0: a file
        # locked by another process is an error at once, not a wait.
        conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
        try:
            self._prepare(conn)
        except sqlite3.OperationalError as exc:
            conn.close()
            if "locked" in str(exc):
                raise MailboxStoreError(f"{self.path}: in use by another process ({exc})") from exc
            raise
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")  # before WAL: no shared-memory index
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise MailboxStoreError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute(f"PRAGMA fullfsync = {'ON' if self.synchronous == 'FULL' else 'OFF'}")
        conn.execute("BEGIN EXCLUSIVE")  # takes the lock now, and keeps it (exclusive mode)
        try:
            self._schema(conn)
        except BaseException:
            _rollback(conn)
            raise
        conn.execute("COMMIT")

    def _schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == _SCHEMA_VERSION:
            return
        if version != 0:
            raise MailboxStoreError(
                f"{self.path}: mailbox store schema {version}, this code reads {_SCHEMA_VERSION}"
            )
        if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise MailboxStoreError(f"{self.path}: not a DWCP mailbox store")
        for statement in _SCHEMA:
            conn.execute(statement)

    def _load(self, conn: sqlite3.Connection, core: Mailboxes) -> None:
        one = conn.execute
        self._back, self._front, self._leases = one(
            "SELECT coalesce(max(position), 0), coalesce(min(position), 0),"
            " coalesce(max(lease), 0) FROM message"
        ).fetchone()
        self._seen = one("SELECT coalesce(max(position), 0) FROM seen").fetchone()[0]
        columns = "SELECT node, id, sender, body, deliveries FROM message"
        for node, mid, sender, body, deliveries in one(
            f"{columns} WHERE lease IS NOT NULL ORDER BY lease"
        ):
            core.load(node, mid, sender, body, deliveries=deliveries, leased=True)
        for node, mid, sender, body, deliveries in one(
            f"{columns} WHERE lease IS NULL ORDER BY position"
        ):
            core.load(node, mid, sender, body, deliveries=deliveries)
        for node, mid in one("SELECT node, id FROM seen ORDER BY position"):
            core.load_seen(node, mid)

    def write(self, changes: list[Change]) -> None:
        """Apply ``changes`` (from :meth:`take`) in one transaction; nothing of them on failure.

        Raises:
            MailboxStoreError: not open, or the file and the changes disagree.
            sqlite3.Error: the transaction failed (disk full, I/O error).
        """
        conn = self._conn
        if conn is None:
            raise MailboxStoreError(f"{self.path}: not open")
        if not changes:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._apply(conn, changes)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _apply(self, conn: sqlite3.Connection, changes: list[Change]) -> None:
        for statement, group in groupby(changes, key=itemgetter(0)):
            params = [p for _, p in group]
            cursor = conn.executemany(statement, params)
            if statement in _ONE_ROW and cursor.rowcount != len(params):
                raise MailboxStoreError(
                    f"{self.path}: {statement!r} changed {cursor.rowcount} rows for "
                    f"{len(params)} changes: the file and the mailboxes disagree"
                )

    def commit(self) -> int:
        """Write every queued change in one transaction (on this thread). Returns how many."""
        changes = self.take()
        self.write(changes)
        return len(changes)

    def close(self) -> None:
        """Close the file without writing what is queued (idempotent)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __repr__(self) -> str:
        state = "open" if self._conn is not None else "closed"
        return f"<SQLiteJournal {self.path!r} {state} synchronous={self.synchronous} queued={self.queued}>"
