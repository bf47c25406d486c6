"""The bare DWCP transport over loopback: the yardstick for the resilient client's throughput.

Each row starts a fresh ``DWCPPeer`` on 127.0.0.1, connects, and times N round trips (setup is not
timed). The first row is the floor: a raw anyio stream writing one frame and reading one frame back,
with no correlation, lock or statistics. The issue's target (client with every protection on >= 85%
of the bare transport's throughput) compares the client rows against the DWCPConnection.send rows.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from dwcp_resilience.dwcp.client import DWCPResilienceConfig, DWCPResilientClient
from dwcp_resilience.dwcp.peer import DWCPPeer
from dwcp_resilience.dwcp.protocol import FrameDecoder, MessageType, encode_frame, new_message_id
from dwcp_resilience.dwcp.transport import DWCPConnection

from ..harness import Call, Case, Contender, Op

N = 2000
PIPELINE = 16
BODY = b"x" * 64

Workload = Callable[[DWCPPeer], Awaitable[float]]


def _row(workload: Workload) -> Callable[[Op], Awaitable[Call]]:
    async def make(op: Op) -> Call:
        async def run() -> float:
            async with DWCPPeer("bench", mailbox_capacity=1_000_000) as peer:
                return await workload(peer)

        return run

    return make


async def _raw(peer: DWCPPeer) -> float:
    stream = await anyio.connect_tcp("127.0.0.1", peer.port)
    async with stream:
        decoder = FrameDecoder()
        frame = encode_frame(MessageType.PING, new_message_id(), BODY)
        start = time.perf_counter()
        for _ in range(N):
            await stream.send(frame)
            while decoder.next_frame() is None:
                decoder.feed(await stream.receive())
        return (time.perf_counter() - start) / N


async def _ping(peer: DWCPPeer) -> float:
    async with await DWCPConnection.connect("127.0.0.1", peer.port) as conn:
        start = time.perf_counter()
        for _ in range(N):
            await conn.ping(BODY)
        return (time.perf_counter() - start) / N


async def _send(peer: DWCPPeer) -> float:
    async with await DWCPConnection.connect("127.0.0.1", peer.port) as conn:
        start = time.perf_counter()
        for _ in range(N):
            await conn.send("bob", BODY, sender="alice")
        elapsed = time.perf_counter() - start
    assert peer.statistics().messages_stored == N
    return elapsed / N


async def _send_pipelined(peer: DWCPPeer) -> float:
    async with await DWCPConnection.connect("127.0.0.1", peer.port) as conn:

        async def worker() -> None:
            for _ in range(N // PIPELINE):
                await conn.send("bob", BODY, sender="alice")

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(PIPELINE):
                tg.start_soon(worker)
        elapsed = time.perf_counter() - start
    assert peer.statistics().messages_stored == N // PIPELINE * PIPELINE
    return elapsed / (N // PIPELINE * PIPELINE)


def _client(peer: DWCPPeer, node: str) -> DWCPResilientClient:
    # Go defaults, except a rate no sample can exhaust: the row measures the protections' cost,
    # not the 1000/s token bucket's pacing.
    config = DWCPResilienceConfig(
        node_id=node, peers=(f"127.0.0.1:{peer.port}",), requests_per_second=1e9, burst_size=10**6
    )
    return DWCPResilientClient(config)


async def _client_send(peer: DWCPPeer) -> float:
    client = _client(peer, "alice")
    try:
        await client.establish_connection()  # connection setup is not timed, as in the rows above
        await client.send_message("bob", BODY)
        start = time.perf_counter()
        for _ in range(N - 1):
            await client.send_message("bob", BODY)
        elapsed = time.perf_counter() - start
    finally:
        await client.aclose()
    assert peer.statistics().messages_stored == N
    return elapsed / (N - 1)


async def _client_send_pipelined(peer: DWCPPeer) -> float:
    client = _client(peer, "alice")
    try:
        await client.send_message("bob", BODY)

        async def worker() -> None:
            for _ in range(N // PIPELINE):
                await client.send_message("bob", BODY)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(PIPELINE):
                tg.start_soon(worker)
        elapsed = time.perf_counter() - start
    finally:
        await client.aclose()
    assert peer.statistics().messages_stored == N // PIPELINE * PIPELINE + 1
    return elapsed / (N // PIPELINE * PIPELINE)


def _verify(workload: Workload) -> Callable[[], Awaitable[None]]:
    async def verify() -> None:
        async with DWCPPeer("verify") as peer:
            per_op = await workload(peer)
            assert 0 < per_op < 0.01, per_op
            stats = peer.statistics()
            assert stats.frames_received == stats.frames_sent >= N
            assert stats.protocol_errors == 0

    return verify


async def _measure(call: Call) -> Any:
    return await call()


CASES = [
    Case(
        key="dwcp_transport",
        title=f"DWCP transport over loopback: one round trip ({N} per sample, 64-byte body)",
        note="Ratios are to the raw stream row (first). Lower is better.",
        include_baseline=False,
        measure=_measure,
        contenders=[
            Contender("raw anyio stream: frame out, frame back", _row(_raw), _verify(_raw)),
            Contender("DWCPConnection.ping, serial", _row(_ping), _verify(_ping), ours=True),
            Contender("DWCPConnection.send, serial", _row(_send), _verify(_send), ours=True),
            Contender(
                f"DWCPConnection.send, {PIPELINE} tasks pipelined (per message)",
                _row(_send_pipelined),
                _verify(_send_pipelined),
                ours=True,
            ),
            Contender(
                "DWCPResilientClient.send_message, serial (every protection on)",
                _row(_client_send),
                _verify(_client_send),
                ours=True,
            ),
            Contender(
                f"DWCPResilientClient.send_message, {PIPELINE} tasks (every protection on)",
                _row(_client_send_pipelined),
                _verify(_client_send_pipelined),
                ours=True,
            ),
        ],
    )
]
