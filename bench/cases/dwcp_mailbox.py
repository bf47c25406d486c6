"""The DWCP peer's mailboxes in memory and in SQLite (issue 18): messages per second through a real
peer on loopback, each message sent (SEND), received (RECEIVE) and acknowledged (DELIVER_ACK).

Each sample starts a fresh peer (for the durable rows on a fresh database file in the system's
temporary directory, on disk), opens the connections, then times N SENDs followed by N RECEIVE +
DELIVER_ACK, by one task or by ``TASKS`` tasks each on a connection of its own. A durable peer answers
each of those requests only after its change is committed: serially that is three transactions per
message; with many connections, the changes queued while one transaction is written share the next
one (group commit). ``FULL`` fsyncs at every commit, ``NORMAL`` does not (see
``dwcp_resilience.dwcp.journal``).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from dwcp_resilience.dwcp.journal import Synchronous
from dwcp_resilience.dwcp.peer import DWCPPeer
from dwcp_resilience.dwcp.transport import DWCPConnection

from ..harness import Call, Case, Contender, Op

N = 480
TASKS = 16
BODY = b"x" * 64

Workload = Callable[[], Awaitable[float]]


def _peer_run(store: Synchronous | None, tasks: int) -> Workload:
    async def run() -> float:
        with tempfile.TemporaryDirectory(prefix="dwcp-bench-") as tmp:
            options: dict[str, Any] = {}
            if store is not None:
                options = {"store_path": Path(tmp) / "mail.db", "store_synchronous": store}
            async with DWCPPeer("bench", mailbox_capacity=1_000_000, **options) as peer:
                return await _send_receive_ack(peer, tasks)

    return run


async def _send_receive_ack(peer: DWCPPeer, tasks: int) -> float:
    """Seconds per message: N sends, then N receive + ack, spread over ``tasks`` connections."""
    conns = [await DWCPConnection.connect("127.0.0.1", peer.port) for _ in range(tasks)]
    per_task = N // tasks
    try:

        async def send(conn: DWCPConnection) -> None:
            for _ in range(per_task):
                await conn.send("bob", BODY, sender="alice")

        async def take(conn: DWCPConnection) -> None:
            for _ in range(per_task):
                delivery = await conn.receive("bob")
                assert delivery is not None
                await conn.ack("bob", delivery.message_id)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for conn in conns:
                tg.start_soon(send, conn)
        async with anyio.create_task_group() as tg:
            for conn in conns:
                tg.start_soon(take, conn)
        elapsed = time.perf_counter() - start
    finally:
        for conn in conns:
            await conn.aclose()
    stats = peer.statistics()
    assert (stats.messages_stored, stats.messages_delivered) == (per_task * tasks,) * 2
    assert stats.messages_held == 0
    return elapsed / (per_task * tasks)


def _make(run: Workload) -> Callable[[Op], Awaitable[Call]]:
    async def make(op: Op) -> Call:
        return run

    return make


def _verify(run: Workload) -> Callable[[], Awaitable[None]]:
    async def verify() -> None:
        per_message = await run()  # its own asserts: every message stored, delivered, acked
        assert 0 < per_message < 0.1, per_message

    return verify


async def _measure(call: Call) -> Any:
    return await call()


def _contender(label: str, store: Synchronous | None, tasks: int) -> Contender:
    run = _peer_run(store, tasks)
    return Contender(label, _make(run), _verify(run), ours=store is not None)


CASES = [
    Case(
        key="dwcp_mailbox",
        title=(
            f"DWCP peer mailboxes, in memory vs SQLite: send + receive + ack per message "
            f"({N} messages per sample, 64-byte body, loopback)"
        ),
        note=(
            "Ratios are to the first row (in memory, one task). Lower ns/message is better; "
            "msg/s is 1 / median."
        ),
        include_baseline=False,
        measure=_measure,
        throughput="msg/s",
        contenders=[
            _contender("in memory, 1 task", None, 1),
            _contender("SQLite synchronous=FULL, 1 task", "FULL", 1),
            _contender("SQLite synchronous=NORMAL, 1 task", "NORMAL", 1),
            _contender(f"in memory, {TASKS} connections", None, TASKS),
            _contender(f"SQLite synchronous=FULL, {TASKS} connections", "FULL", TASKS),
            _contender(f"SQLite synchronous=NORMAL, {TASKS} connections", "NORMAL", TASKS),
        ],
    )
]
