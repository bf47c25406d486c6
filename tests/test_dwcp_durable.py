"""The durable mailbox store (SQLite, WAL): the same behaviour as the in-memory core across reopens
and crashes (Hypothesis), answers only after the commit, group commit, fail-stop, and its errors.

The peer-level tests run on asyncio, trio and uvloop in real time (a worker thread writes the file);
``gate`` holds every transaction in its thread, so "not answered before the commit" is checked
without timing anything. The SIGKILL test is tests/test_dwcp_mailbox_crash.py.
"""

from __future__ import annotations

import copy
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from helpers import wait_until
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dwcp_resilience.dwcp import DurableMailboxes, MailboxStoreError, SQLiteJournal
from dwcp_resilience.dwcp.errors import ConnectionLost, IncompleteFrame
from dwcp_resilience.dwcp.journal import Synchronous
from dwcp_resilience.dwcp.mailbox import Mailboxes, StoredMessage
from dwcp_resilience.dwcp.peer import DWCPPeer
from dwcp_resilience.dwcp.protocol import new_message_id
from dwcp_resilience.dwcp.transport import DWCPConnection

pytestmark = [pytest.mark.anyio, pytest.mark.real_time, pytest.mark.timeout(60)]

# -- the durable core behaves like the in-memory one (Hypothesis) -----------------------------------

CONFIG: dict[str, Any] = {"capacity": 3, "max_nodes": 1, "dedup_window": 3, "lease_timeout": 5.0}
NODES = st.sampled_from(["a", "b"])
MIDS = st.sampled_from([bytes([i]) * 16 for i in range(6)])
HOLDERS = st.integers(1, 2)


def view(message: StoredMessage | None) -> tuple[bytes, str, bytes, int] | None:
    if message is None:
        return None
    return message.message_id, message.sender, message.body, message.deliveries


class DurableMachine(RuleBasedStateMachine):
    """The model is a plain in-memory ``Mailboxes``. The durable one (an ``SQLiteJournal``) is
    committed, reopened (every lease released: the model calls ``release_all``) or crashed (its
    uncommitted changes dropped: the model goes back to its copy at the last commit) at random."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="dwcp-durable-")
        self.path = str(Path(self.dir) / "mail.db")
        self.model = Mailboxes(**CONFIG)
        self.at_commit = copy.deepcopy(self.model)
        self.now = 0.0
        self.journal, self.mail = self.open()
        self.reopens = 0

    def open(self) -> tuple[SQLiteJournal, Mailboxes]:
        journal = SQLiteJournal(self.path, synchronous="NORMAL")
        mail = Mailboxes(**CONFIG, journal=journal)
        journal.open(mail)
        return journal, mail

    def teardown(self) -> None:
        self.journal.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(node=NODES, mid=MIDS, body=st.binary(max_size=3))
    def store(self, node: str, mid: bytes, body: bytes) -> None:
        assert self.mail.store(node, mid, "s", body) is self.model.store(node, mid, "s", body)

    @rule(node=NODES, holder=HOLDERS)
    def take(self, node: str, holder: int) -> None:
        got = self.mail.take(node, holder, self.now)
        assert view(got) == view(self.model.take(node, holder, self.now))

    @rule(node=NODES, mid=MIDS)
    def ack(self, node: str, mid: bytes) -> None:
        assert self.mail.ack(node, mid) is self.model.ack(node, mid)

    @rule(holder=HOLDERS)
    def release(self, holder: int) -> None:
        assert self.mail.release(holder) == self.model.release(holder)

    @rule(dt=st.sampled_from([0.5, 2.0, 6.0]))
    def wait(self, dt: float) -> None:
        self.now += dt  # leases of 5 s expire

    @rule()
    def commit(self) -> None:
        self.journal.commit()
        self.at_commit = copy.deepcopy(self.model)

    @rule()
    def reopen(self) -> None:
        """A clean stop: everything committed, then started again."""
        self.journal.commit()
        self.journal.close()
        self.journal, self.mail = self.open()
        self.model.release_all()
        self.at_commit = copy.deepcopy(self.model)
        self.reopens += 1

    @precondition(lambda self: self.journal.queued > 0)
    @rule()
    def crash(self) -> None:
        """A crash: what was not committed never reached the file (and was never answered)."""
        self.journal.take()
        self.journal.close()
        self.journal, self.mail = self.open()
        self.model = self.at_commit
        self.model.release_all()
        self.at_commit = copy.deepcopy(self.model)
        self.reopens += 1

    @invariant()
    def same_state(self) -> None:
        for node in ("a", "b"):
            assert self.mail.pending(node) == self.model.pending(node)
        assert (len(self.mail), self.mail.leases, self.mail.nodes) == (
            len(self.model),
            self.model.leases,
            self.model.nodes,
        )


DurableMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
TestDurableMachine = DurableMachine.TestCase


# -- the synchronous journal ------------------------------------------------------------------------


def opened(path: Path, **config: Any) -> tuple[SQLiteJournal, Mailboxes]:
    journal = SQLiteJournal(path, synchronous="NORMAL")
    mail = Mailboxes(**config, journal=journal)
    journal.open(mail)
    return journal, mail


def test_reopen_hands_out_unacknowledged_leases_again_first_and_never_an_acked_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mail.db"
    journal, mail = opened(path)
    ids = [bytes([i]) * 16 for i in range(4)]
    for mid in ids:
        mail.store("bob", mid, "al", mid)
    first, second = mail.take("bob", 1, 0.0), mail.take("bob", 2, 0.0)
    assert first is not None
    assert second is not None
    assert mail.ack("bob", first.message_id)
    assert journal.commit() == 4 + 2 + 2  # stored x4, leased x2, removed + remembered
    journal.close()

    journal, mail = opened(path)
    assert (len(mail), mail.leases) == (3, 0)
    again = mail.take("bob", 1, 0.0)
    assert view(again) == (ids[1], "al", ids[1], 2)  # the lease of the past run, first, redelivered
    assert [view(mail.take("bob", 1, 0.0)) for _ in range(2)] == [
        (ids[2], "al", ids[2], 1),
        (ids[3], "al", ids[3], 1),
    ]
    assert mail.store("bob", ids[0], "al", b"retry").name == "DUPLICATE"  # the acked id is known
    journal.close()


def test_a_smaller_dedup_window_at_reopen_forgets_the_oldest_ids_for_good(tmp_path: Path) -> None:
    path = tmp_path / "mail.db"
    journal, mail = opened(path, dedup_window=10)
    ids = [bytes([i]) * 16 for i in range(5)]
    for mid in ids:
        mail.store("a", mid, "", b"")
        mail.ack("a", mid)
    journal.commit()
    journal.close()
    journal, mail = opened(path, dedup_window=2)  # keeps the newest two
    journal.close()
    journal, mail = opened(path, dedup_window=10)
    results = [mail.store("a", mid, "", b"").name for mid in ids]
    assert results == ["STORED", "STORED", "STORED", "DUPLICATE", "DUPLICATE"]
    journal.close()


def test_a_file_that_disagrees_with_the_core_fails_the_whole_transaction(tmp_path: Path) -> None:
    path = tmp_path / "mail.db"
    journal, mail = opened(path)
    mail.store("bob", bytes([1]) * 16, "", b"")
    journal.removed("bob", bytes(16))  # a change the file never saw the message of
    with pytest.raises(MailboxStoreError, match="disagree"):
        journal.commit()
    journal.close()
    journal.close()  # idempotent
    with pytest.raises(MailboxStoreError, match="not open"):
        journal.write([("DELETE FROM seen", ())])
    assert "closed" in repr(journal)
    journal, mail = opened(path)
    assert len(mail) == 0  # the store in the same transaction was rolled back
    journal.close()


def test_the_file_is_in_wal_mode_locked_and_synchronous_as_asked(tmp_path: Path) -> None:
    cases: list[tuple[Synchronous, int]] = [("FULL", 2), ("NORMAL", 1)]
    for synchronous, level in cases:
        journal = SQLiteJournal(tmp_path / f"{synchronous}.db", synchronous=synchronous)
        journal.open(Mailboxes(journal=journal))
        conn = journal._conn
        assert conn is not None
        pragma = [
            conn.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("journal_mode", "locking_mode", "synchronous")
        ]
        assert pragma == ["wal", "exclusive", level]
        assert f"synchronous={synchronous}" in repr(journal)
        journal.close()
    assert SQLiteJournal(tmp_path / "default.db").synchronous == "FULL"


def test_open_errors_are_clear(tmp_path: Path) -> None:
    path = tmp_path / "mail.db"
    journal, _ = opened(path)
    with pytest.raises(MailboxStoreError, match="in use by another process"):
        opened(path)  # the exclusive lock of the first
    with pytest.raises(MailboxStoreError, match="already open"):
        journal.open(Mailboxes(journal=journal))
    journal.close()
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(MailboxStoreError, match="not a DWCP mailbox store"):
        opened(other)
    with sqlite3.connect(other) as conn:
        conn.execute("PRAGMA user_version = 7")
    conn.close()
    with pytest.raises(MailboxStoreError, match="schema 7"):
        opened(other)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(MailboxStoreError, match="cannot open"):
        opened(garbage)
    with pytest.raises(MailboxStoreError, match="cannot open"):
        opened(tmp_path / "missing" / "mail.db")


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"path": ""}, ValueError, "path"),
        ({"path": b"mail.db"}, TypeError, "path"),
        ({"synchronous": "OFF"}, ValueError, "synchronous"),
        ({"synchronous": "full"}, ValueError, "synchronous"),
        ({"capacity": 0}, ValueError, "capacity"),
        ({"lease_timeout": float("nan")}, ValueError, "lease_timeout"),
        ({"dedup_window": True}, TypeError, "dedup_window"),
    ],
)
def test_config_is_validated(kwargs: dict[str, Any], error: type[Exception], field: str) -> None:
    arguments: dict[str, Any] = {"path": "mail.db", **kwargs}
    with pytest.raises(error, match=field):
        DurableMailboxes(**arguments)
    if set(kwargs) <= {"path", "synchronous"}:
        with pytest.raises(error, match=field):
            SQLiteJournal(arguments.pop("path"), **arguments)


def test_the_peer_validates_its_store_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        DWCPPeer("p", store_path=tmp_path / "m.db", store_synchronous="OFF")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="path"):
        DWCPPeer("p", store_path=3)  # type: ignore[arg-type]
    assert DWCPPeer("p").store is None


# -- the async store ----------------------------------------------------------------------------------


async def test_store_lifetime(tmp_path: Path) -> None:
    store = DurableMailboxes(tmp_path / "mail.db", synchronous="NORMAL")
    with pytest.raises(RuntimeError, match="not open"):
        _ = store.mailboxes
    with pytest.raises(RuntimeError, match="not open"):
        await store.commit()
    await store.aclose()  # closing a closed store does nothing
    async with store:
        with pytest.raises(RuntimeError, match="open already"):
            await store.open()
        await store.commit()  # nothing queued: at once
        assert store.statistics().commits == 0
        store.mailboxes.store("bob", bytes(16), "al", b"x")
        assert store.statistics().queued == 1
        await store.commit()
        stats = store.statistics()
        assert (stats.commits, stats.changes, stats.queued, stats.committing) == (1, 1, 0, False)
        assert "open" in repr(store)
        store.mailboxes.store("bob", bytes(15) + b"\x01", "al", b"y")  # committed by aclose
    assert "closed" in repr(store)
    async with DurableMailboxes(tmp_path / "mail.db") as again:
        assert again.mailboxes.pending("bob") == 2


# -- the peer: answers after the commit, group commit, fail-stop -----------------------------------


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """While cleared, every transaction waits in its worker thread before it writes."""
    event = threading.Event()
    event.set()
    write = SQLiteJournal.write

    def gated(self: SQLiteJournal, changes: list[tuple[str, tuple[object, ...]]]) -> None:
        event.wait(30)
        write(self, changes)

    monkeypatch.setattr(SQLiteJournal, "write", gated)
    yield event
    event.set()


async def connect(peer: DWCPPeer) -> DWCPConnection:
    return await DWCPConnection.connect("127.0.0.1", peer.port, connect_timeout=2)


def store_of(peer: DWCPPeer) -> DurableMailboxes:
    assert peer.store is not None
    return peer.store


async def test_send_is_acknowledged_only_after_its_commit(
    tmp_path: Path, gate: threading.Event
) -> None:
    async with DWCPPeer("p", store_path=tmp_path / "mail.db") as peer:
        store = store_of(peer)
        async with await connect(peer) as conn:
            commits_when_acked: list[int] = []

            async def send() -> None:
                await conn.send("bob", b"x")
                commits_when_acked.append(store.statistics().commits)

            gate.clear()
            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                await wait_until(lambda: store.statistics().committing)
                await anyio.sleep(0.05)  # a wrong peer would have answered by now
                assert commits_when_acked == []
                gate.set()
            assert commits_when_acked == [1]


async def test_a_duplicate_send_waits_for_its_first_copy(
    tmp_path: Path, gate: threading.Event
) -> None:
    async with DWCPPeer("p", store_path=tmp_path / "mail.db") as peer:
        store = store_of(peer)
        first, retry = await connect(peer), await connect(peer)
        mid = new_message_id()
        answers: list[bool] = []

        async def send(conn: DWCPConnection) -> None:
            answers.append(await conn.send("bob", b"x", message_id=mid))

        gate.clear()
        async with anyio.create_task_group() as tg:
            tg.start_soon(send, first)
            await wait_until(lambda: store.statistics().committing)
            tg.start_soon(send, retry)  # the retry finds the id and is a duplicate ...
            await wait_until(lambda: peer.statistics().duplicates == 1)
            await anyio.sleep(0.05)
            assert answers == []  # ... but is not acknowledged before the first copy is on disk
            gate.set()
        assert sorted(answers) == [False, True]
        await first.aclose()
        await retry.aclose()


async def test_concurrent_sends_share_one_transaction(
    tmp_path: Path, gate: threading.Event
) -> None:
    async with DWCPPeer("p", store_path=tmp_path / "mail.db") as peer:
        store = store_of(peer)
        conns = [await connect(peer) for _ in range(10)]
        gate.clear()
        async with anyio.create_task_group() as tg:
            for conn in conns:
                tg.start_soon(conn.send, "bob", b"x")
            # one transaction in flight (its first SEND), nine SENDs queued behind it
            await wait_until(
                lambda: store.statistics().committing and store.statistics().queued == 9
            )
            gate.set()
        stats = store.statistics()
        assert (stats.commits, stats.changes, stats.largest_commit) == (2, 10, 9)
        for conn in conns:
            await conn.aclose()


async def test_restart_keeps_acknowledged_messages_and_leases(tmp_path: Path) -> None:
    peer = DWCPPeer("p", store_path=tmp_path / "mail.db", store_synchronous="NORMAL")
    async with peer:
        async with await connect(peer) as conn:
            sent = [new_message_id() for _ in range(4)]
            for mid in sent:
                assert await conn.send("bob", mid, message_id=mid) is False
            acked = await conn.receive("bob")
            leased = await conn.receive("bob")
            assert acked is not None
            assert leased is not None
            await conn.ack("bob", acked.message_id)
    async with peer:  # the same peer started again: the file is loaded again
        assert len(peer.mailboxes) == 3
        async with await connect(peer) as conn:
            got = []
            while (delivery := await conn.receive("bob")) is not None:
                got.append((delivery.message_id, delivery.redelivered))
                await conn.ack("bob", delivery.message_id)
            assert got == [(sent[1], True), (sent[2], False), (sent[3], False)]
            assert await conn.send("bob", b"again", message_id=acked.message_id) is True
        assert peer.statistics().messages_held == 0


async def test_a_failed_commit_stops_the_peer_and_acknowledges_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mail.db"
    peer = DWCPPeer("p", store_path=path)

    def broken(self: SQLiteJournal, changes: list[tuple[str, tuple[object, ...]]]) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(BaseExceptionGroup) as info:
        async with anyio.create_task_group() as tg:
            port = await tg.start(peer.serve)
            monkeypatch.setattr(SQLiteJournal, "write", broken)
            conn = await DWCPConnection.connect("127.0.0.1", port, connect_timeout=2)
            with pytest.raises((ConnectionLost, IncompleteFrame)):
                await conn.send("bob", b"never acknowledged")
            await conn.aclose()
            await anyio.sleep_forever()  # the peer stops on its own
    assert info.group_contains(MailboxStoreError, match="disk I/O error")
    assert "failed" in repr(peer.store)
    monkeypatch.undo()
    async with DurableMailboxes(path) as store:
        assert len(store.mailboxes) == 0


def test_release_all_puts_every_lease_back_in_front_oldest_lease_first() -> None:
    mail = Mailboxes()
    ids = [bytes([i]) * 16 for i in range(4)]
    for mid in ids:
        mail.store("a", mid, "", b"")
    mail.store("b", ids[0], "", b"")
    for holder in (1, 2):
        mail.take("a", holder, 0.0)  # ids[0] to 1, ids[1] to 2
    mail.release(1)
    mail.take("a", 2, 0.0)  # ids[0] again: the leases are now ids[1], then ids[0]
    mail.take("b", 1, 0.0)
    assert mail.release_all() == 3
    assert (mail.leases, mail.release(1), mail.release(2)) == (0, 0, 0)
    order = [view(mail.take("a", 3, 0.0)) for _ in range(4)]
    assert [(m[0], m[3]) for m in order if m is not None] == [
        (ids[1], 2),
        (ids[0], 3),
        (ids[2], 1),
        (ids[3], 1),
    ]
