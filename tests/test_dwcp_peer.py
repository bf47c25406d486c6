"""DWCPPeer over real loopback TCP (asyncio, trio, uvloop in real time), and its pure mailbox core.

Bad input (R48-R54): each kind gets a clear ERROR frame, that connection is closed, the peer keeps
serving another client, and its connection count and buffers go back to baseline.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
from helpers import ID, header, wait_until
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dwcp_resilience.dwcp.errors import ConnectionLost, ErrorCode, IncompleteFrame, PeerError
from dwcp_resilience.dwcp.mailbox import Mailboxes, StoreResult
from dwcp_resilience.dwcp.peer import DWCPPeer
from dwcp_resilience.dwcp.protocol import (
    HEADER_SIZE,
    Frame,
    FrameDecoder,
    MessageType,
    PeerInfo,
    decode_error,
    encode_frame,
    encode_send,
    new_message_id,
)
from dwcp_resilience.dwcp.transport import DWCPConnection

pytestmark = [pytest.mark.anyio, pytest.mark.real_time, pytest.mark.timeout(30)]

NO_ID = bytes(16)


async def connect(peer: DWCPPeer) -> DWCPConnection:
    return await DWCPConnection.connect("127.0.0.1", peer.port, connect_timeout=2)


async def read_to_eof(stream: anyio.abc.SocketStream) -> bytes:
    """Everything the peer sends until it closes (a reset after its data also ends it)."""
    out = bytearray()
    with anyio.fail_after(3):
        while True:
            try:
                out += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return bytes(out)


@asynccontextmanager
async def peer_and_client(**options: Any) -> AsyncIterator[tuple[DWCPPeer, DWCPConnection]]:
    async with DWCPPeer("p1", **options) as peer:
        async with await connect(peer) as conn:
            yield peer, conn


# -- the protocol, end to end ----------------------------------------------------------------------


async def test_send_receive_ack() -> None:
    async with peer_and_client() as (peer, conn):
        mid = new_message_id()
        assert await conn.send("bob", b"hi bob", sender="alice", message_id=mid) is False
        delivery = await conn.receive("bob")
        assert delivery is not None
        assert (delivery.message_id, delivery.sender, delivery.body) == (mid, "alice", b"hi bob")
        assert not delivery.redelivered
        assert await conn.receive("bob") is None  # leased, not handed out twice
        await conn.ack("bob", mid)
        await conn.ack("bob", mid)  # idempotent
        assert await conn.receive("bob") is None
        stats = peer.statistics()
        assert (stats.messages_stored, stats.messages_delivered, stats.messages_held) == (1, 1, 0)
        assert stats.deliveries == 1


async def test_retried_send_is_stored_once_and_acked_again() -> None:
    async with peer_and_client() as (peer, conn):
        mid = new_message_id()
        assert await conn.send("bob", b"x", message_id=mid) is False
        assert await conn.send("bob", b"x", message_id=mid) is True
        delivery = await conn.receive("bob")
        assert delivery is not None
        await conn.ack("bob", delivery.message_id)
        # a retry that arrives after the message was read and acknowledged is still a duplicate
        assert await conn.send("bob", b"x", message_id=mid) is True
        assert await conn.receive("bob") is None
        assert peer.statistics().duplicates == 2
        assert peer.statistics().messages_stored == 1


async def test_unacked_message_is_delivered_again_after_the_connection_drops() -> None:
    """At-least-once: delivered, connection lost before the ack -> handed out again, flagged."""
    async with DWCPPeer("p1") as peer:
        async with await connect(peer) as sender:
            mid = new_message_id()
            await sender.send("bob", b"payload", message_id=mid)
        first = await connect(peer)
        delivery = await first.receive("bob")
        assert delivery is not None
        assert delivery.message_id == mid
        await first.aclose()
        await wait_until(lambda: peer.statistics().leases == 0)
        async with await connect(peer) as second:
            again = await second.receive("bob")
            assert again is not None
            assert (again.message_id, again.body, again.redelivered) == (mid, b"payload", True)
            await second.ack("bob", mid)
        assert peer.statistics().redeliveries == 1
        assert peer.statistics().messages_held == 0


async def test_lease_times_out_and_the_message_comes_back() -> None:
    async with peer_and_client(lease_timeout=0.05) as (_, conn):
        await conn.send("bob", b"x")
        first = await conn.receive("bob")
        assert await conn.receive("bob") is None
        await anyio.sleep(0.08)
        again = await conn.receive("bob")
        assert first is not None
        assert again is not None
        assert again.message_id == first.message_id
        assert again.redelivered


async def test_messages_come_out_oldest_first_and_pipelined_receives_get_distinct_ones() -> None:
    async with peer_and_client() as (_, conn):
        for i in range(10):
            await conn.send("bob", b"%d" % i)
        got: list[bytes] = []

        async def take() -> None:
            delivery = await conn.receive("bob")
            assert delivery is not None
            got.append(delivery.body)

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(take)
        assert sorted(got) == sorted(b"%d" % i for i in range(10))
        assert await conn.receive("bob") is None


async def test_discover_lists_seeds_and_peers_that_said_hello() -> None:
    async with peer_and_client(seeds=["127.0.0.1:9", PeerInfo("s2", "127.0.0.1:10")]) as (
        peer,
        conn,
    ):
        me = await conn.hello("client")  # a client (no address) is not a peer to discover
        assert me == PeerInfo("p1", peer.address)
        async with await connect(peer) as other:
            await other.hello("p2", "127.0.0.1:4242")
        assert await conn.discover() == (
            PeerInfo("", "127.0.0.1:9"),
            PeerInfo("s2", "127.0.0.1:10"),
            PeerInfo("p2", "127.0.0.1:4242"),
        )
        assert peer.statistics().known_peers == 1


async def test_ping_echoes() -> None:
    async with peer_and_client() as (peer, conn):
        rtt = await conn.ping(b"abc")
        assert 0 <= rtt < 1
        assert peer.statistics().frames_received == 1


async def test_full_mailbox_is_a_retryable_peer_error_and_the_connection_stays() -> None:
    async with peer_and_client(mailbox_capacity=2) as (_, conn):
        await conn.send("bob", b"1")
        await conn.send("bob", b"2")
        with pytest.raises(PeerError) as info:
            await conn.send("bob", b"3")
        assert info.value.code == ErrorCode.MAILBOX_FULL
        assert info.value.retryable
        assert conn.usable
        assert await conn.send("carol", b"fine") is False


async def test_too_many_connections_get_busy() -> None:
    async with DWCPPeer("p1", max_connections=1) as peer:
        async with await connect(peer) as first:
            await first.ping()
            async with await connect(peer) as second:
                with pytest.raises(PeerError) as info:
                    await second.ping()
                assert info.value.code == ErrorCode.BUSY
                assert not second.usable
            await first.ping()
        assert peer.statistics().connections_rejected == 1


async def test_many_senders_and_readers_deliver_each_message_exactly_once() -> None:
    """Oracle: 8 tasks x 25 sends over 4 connections, each sent twice (a retry) -> stored once;
    4 readers drain it with receive+ack -> every id exactly once."""
    async with DWCPPeer("p1") as peer:
        conns = [await connect(peer) for _ in range(4)]
        sent: set[bytes] = set()

        async def sender(k: int) -> None:
            for i in range(25):
                mid = new_message_id()
                sent.add(mid)
                conn = conns[(k + i) % 4]
                assert await conn.send("bob", b"%d-%d" % (k, i), message_id=mid) is False
                assert await conns[(k + i + 1) % 4].send("bob", b"dup", message_id=mid) is True

        async with anyio.create_task_group() as tg:
            for k in range(8):
                tg.start_soon(sender, k)
        received: list[bytes] = []

        async def reader(conn: DWCPConnection) -> None:
            while (delivery := await conn.receive("bob")) is not None:
                received.append(delivery.message_id)
                await conn.ack("bob", delivery.message_id)

        async with anyio.create_task_group() as tg:
            for conn in conns:
                tg.start_soon(reader, conn)
        assert sorted(received) == sorted(sent)
        stats = peer.statistics()
        assert (stats.messages_stored, stats.duplicates, stats.messages_delivered) == (
            200,
            200,
            200,
        )
        for conn in conns:
            await conn.aclose()


async def test_peer_config_is_validated() -> None:
    with pytest.raises(ValueError, match="node_id"):
        DWCPPeer("")
    with pytest.raises(ValueError, match="port"):
        DWCPPeer("a", port=70000)
    with pytest.raises(ValueError, match="max_connections"):
        DWCPPeer("a", max_connections=0)
    with pytest.raises(ValueError, match="idle_timeout"):
        DWCPPeer("a", idle_timeout=0)
    with pytest.raises(TypeError, match="seeds"):
        DWCPPeer("a", seeds=[""])
    with pytest.raises(RuntimeError, match="not serving"):
        _ = DWCPPeer("a").port


async def test_start_and_aclose_from_the_same_task() -> None:
    peer = DWCPPeer("p1")
    await peer.start()
    port = peer.port
    assert f"127.0.0.1:{port}" in repr(peer)
    with pytest.raises(RuntimeError, match="already"):
        await peer.start()
    await peer.aclose()
    await peer.aclose()
    with pytest.raises(OSError):
        await anyio.connect_tcp("127.0.0.1", port)


async def test_serve_in_a_task_group() -> None:
    peer = DWCPPeer("p1")
    async with anyio.create_task_group() as tg:
        port = await tg.start(peer.serve)
        async with await DWCPConnection.connect("127.0.0.1", port) as conn:
            await conn.ping()
        tg.cancel_scope.cancel()


# -- bad input (R48-R54) -----------------------------------------------------------------------------

GOOD_PING = encode_frame(MessageType.PING, ID, b"hi")


def flipped(data: bytes, offset: int) -> bytes:
    """``data`` with one bit of byte ``offset`` flipped (what a corrupting middlebox does)."""
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


BAD_INPUTS = [
    # id, bytes, end with EOF?, expected code, ERROR addressed to the frame's id?
    ("garbage", b"\x00\xffgarbage!" * 8, False, ErrorCode.BAD_FRAME, False),
    ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False, ErrorCode.BAD_FRAME, False),
    ("tls-alert", b"\x15\x03\x03\x00\x02\x02\x28", False, ErrorCode.BAD_FRAME, False),
    ("length-2**63", header(MessageType.SEND, 2**63), False, ErrorCode.FRAME_TOO_LARGE, True),
    ("over-max", header(MessageType.SEND, 4097) + b"x" * 4097, False, ErrorCode.FRAME_TOO_LARGE, True),
    ("partial-header-eof", GOOD_PING[:20], True, ErrorCode.INCOMPLETE_FRAME, False),
    ("partial-body-eof", header(MessageType.SEND, 100) + b"x" * 50, True, ErrorCode.INCOMPLETE_FRAME, False),
    ("unknown-type", header(99, 0), False, ErrorCode.UNKNOWN_TYPE, True),
    ("version-1", header(MessageType.PING, 0, version=1), False, ErrorCode.UNSUPPORTED_VERSION, True),
    ("reply-as-request", encode_frame(MessageType.ACK, ID), False, ErrorCode.UNEXPECTED_FRAME, True),
    ("bad-payload", encode_frame(MessageType.SEND, ID, b"\x05ab"), False, ErrorCode.BAD_PAYLOAD, True),
    ("good-then-garbage", GOOD_PING + b"\xde\xad" * 20, False, ErrorCode.BAD_FRAME, False),
    ("corrupt-header", flipped(GOOD_PING, 30), False, ErrorCode.BAD_CHECKSUM, False),
    ("corrupt-payload", flipped(GOOD_PING, HEADER_SIZE), False, ErrorCode.BAD_CHECKSUM, True),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "eof", "code", "addressed"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS],
)
async def test_bad_input_gets_an_error_and_is_closed_while_others_are_served(
    data: bytes, eof: bool, code: ErrorCode, addressed: bool
) -> None:
    async with peer_and_client(max_payload=4096) as (peer, good):
        await good.ping()
        bad = await anyio.connect_tcp("127.0.0.1", peer.port)
        async with bad:
            await bad.send(data)
            if eof:
                await bad.send_eof()  # a half-closed socket in the middle of a frame
            received = await read_to_eof(bad)  # the peer closes it: no hang
        frames = FrameDecoder().frames(received)
        if data.startswith(GOOD_PING):
            assert frames[0] == Frame(MessageType.PONG, ID, b"hi")  # answered before the error
        error = frames[-1]
        assert error.type is MessageType.ERROR
        assert decode_error(error.payload)[0] == code
        assert error.message_id == (ID if addressed else NO_ID)
        assert await good.send("bob", b"still here") is False  # the peer serves the others
        await wait_until(lambda: peer.statistics().connections_active == 1)
        stats = peer.statistics()
        assert stats.protocol_errors == 1
        assert stats.buffered_bytes == 0


async def test_half_close_after_a_complete_request_is_answered_then_closed_cleanly() -> None:
    """R54: FIN after a whole request: the answer still comes, then EOF once; no error."""
    async with peer_and_client() as (peer, good):
        bad = await anyio.connect_tcp("127.0.0.1", peer.port)
        async with bad:
            await bad.send(GOOD_PING)
            await bad.send_eof()
            received = await read_to_eof(bad)
        assert FrameDecoder().frames(received) == [Frame(MessageType.PONG, ID, b"hi")]
        await good.ping()
        await wait_until(lambda: peer.statistics().connections_active == 1)
        assert peer.statistics().protocol_errors == 0


async def test_reset_mid_frame_is_a_connection_error_and_releases_leases() -> None:
    """R48 on the peer's side: a client resets in the middle of a frame holding a lease."""
    async with peer_and_client() as (peer, good):
        await good.send("bob", b"m")
        bad = await anyio.connect_tcp("127.0.0.1", peer.port)
        await bad.send(encode_frame(MessageType.RECEIVE, ID, b"\x03bob"))
        frames = FrameDecoder().frames(await bad.receive())
        assert frames[0].type is MessageType.DELIVER
        await bad.send(GOOD_PING[:40])
        raw = bad.extra(anyio.abc.SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
        await bad.aclose()
        await wait_until(lambda: peer.statistics().connections_active == 1)
        assert peer.statistics().leases == 0
        delivery = await good.receive("bob")
        assert delivery is not None
        assert delivery.redelivered


async def test_frame_timeout_closes_a_stalled_partial_frame() -> None:
    """Slowloris: half a header, then nothing: closed after frame_timeout, the slot comes back."""
    async with peer_and_client(frame_timeout=0.1) as (peer, _):
        bad = await anyio.connect_tcp("127.0.0.1", peer.port)
        async with bad:
            await bad.send(GOOD_PING[:10])
            with anyio.fail_after(2):
                assert await read_to_eof(bad) == b""
        assert peer.statistics().connection_errors >= 1


async def test_idle_timeout_closes_a_silent_connection() -> None:
    async with peer_and_client(idle_timeout=0.1) as (peer, _):
        bad = await anyio.connect_tcp("127.0.0.1", peer.port)
        async with bad:
            with anyio.fail_after(2):
                assert await read_to_eof(bad) == b""
        assert peer.statistics().connection_errors >= 1


async def test_memory_stays_flat_after_many_bad_connections() -> None:
    async with peer_and_client(max_payload=4096) as (peer, good):
        await good.send("bob", b"keep")
        baseline = peer.statistics()
        for i in range(60):
            data, eof = BAD_INPUTS[i % len(BAD_INPUTS)][1:3]
            bad = await anyio.connect_tcp("127.0.0.1", peer.port)
            async with bad:
                await bad.send(data)
                if eof:
                    await bad.send_eof()
                await read_to_eof(bad)
        await wait_until(lambda: peer.statistics().connections_active == 1)
        stats = peer.statistics()
        assert stats.buffered_bytes == 0
        assert stats.protocol_errors == 60
        assert (stats.messages_held, stats.leases) == (baseline.messages_held, 0)
        assert stats.connections_total == baseline.connections_total + 60
        assert peer.mailboxes.nodes == 1
        await good.ping()


async def test_oversized_send_for_delivery_is_refused_without_closing() -> None:
    async with peer_and_client(max_payload=100) as (_, conn):
        with pytest.raises(PeerError) as info:
            await conn.send("b", b"x" * 90)  # fits a SEND, but its DELIVER would not
        assert info.value.code == ErrorCode.FRAME_TOO_LARGE
        assert conn.usable
        await conn.send("b", b"x" * 80)
        assert (await conn.receive("b")) is not None


async def test_send_payload_bytes_are_what_the_codec_writes() -> None:
    """A raw SEND from another implementation is understood."""
    async with peer_and_client() as (peer, conn):
        raw = await anyio.connect_tcp("127.0.0.1", peer.port)
        async with raw:
            await raw.send(encode_frame(MessageType.SEND, ID, encode_send("bob", "raw", b"body")))
            reply = FrameDecoder().frames(await raw.receive())
        assert reply == [Frame(MessageType.ACK, ID, b"", 0)]
        delivery = await conn.receive("bob")
        assert delivery is not None
        assert (delivery.message_id, delivery.sender, delivery.body) == (ID, "raw", b"body")
        assert len(encode_frame(MessageType.PING, ID)) == HEADER_SIZE


# -- the pure mailbox core ---------------------------------------------------------------------------

NODES = st.sampled_from(["a", "b"])
MIDS = st.sampled_from([bytes([i]) * 16 for i in range(6)])
HOLDERS = st.integers(1, 3)


class MailboxMachine(RuleBasedStateMachine):
    """Model: per node an ordered list of waiting ids, leased ids with their holder, acked ids."""

    @initialize()
    def setup(self) -> None:
        self.mail = Mailboxes(capacity=3, lease_timeout=float("inf"))
        self.waiting: dict[str, list[bytes]] = {"a": [], "b": []}
        self.leased: dict[str, dict[bytes, int]] = {"a": {}, "b": {}}
        self.acked: set[tuple[str, bytes]] = set()
        self.stored: set[tuple[str, bytes]] = set()

    def held(self, node: str) -> int:
        return len(self.waiting[node]) + len(self.leased[node])

    @rule(node=NODES, mid=MIDS)
    def store(self, node: str, mid: bytes) -> None:
        result = self.mail.store(node, mid, "s", mid)
        known = (node, mid) in self.acked or mid in self.waiting[node] or mid in self.leased[node]
        if known:
            assert result is StoreResult.DUPLICATE
        elif self.held(node) >= 3:
            assert result is StoreResult.FULL
        else:
            assert result is StoreResult.STORED
            self.waiting[node].append(mid)
            self.stored.add((node, mid))

    @rule(node=NODES, holder=HOLDERS)
    def take(self, node: str, holder: int) -> None:
        message = self.mail.take(node, holder, 0.0)
        if not self.waiting[node]:
            assert message is None
            return
        expected = self.waiting[node].pop(0)
        assert message is not None
        assert message.message_id == expected
        self.leased[node][expected] = holder

    @rule(node=NODES, mid=MIDS)
    def ack(self, node: str, mid: bytes) -> None:
        held = mid in self.waiting[node] or mid in self.leased[node]
        assert self.mail.ack(node, mid) is held
        if held:
            self.leased[node].pop(mid, None)
            if mid in self.waiting[node]:
                self.waiting[node].remove(mid)
            self.acked.add((node, mid))

    @rule(holder=HOLDERS)
    def release(self, holder: int) -> None:
        returned = 0
        for node in ("a", "b"):
            back = [mid for mid, h in self.leased[node].items() if h == holder]
            for mid in back:
                del self.leased[node][mid]
            self.waiting[node] = back + self.waiting[node]
            returned += len(back)
        assert self.mail.release(holder) == returned

    @invariant()
    def nothing_is_lost(self) -> None:
        for node in ("a", "b"):
            assert self.mail.pending(node) == self.held(node)
        unacked = {k for k in self.stored if k not in self.acked}
        held = {(n, m) for n in ("a", "b") for m in [*self.waiting[n], *self.leased[n]]}
        assert unacked == held
        assert len(self.mail) == len(held)
        assert self.mail.leases == sum(len(v) for v in self.leased.values())


MailboxMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
TestMailboxMachine = MailboxMachine.TestCase


def test_mailbox_bounds_nodes_and_dedup_window() -> None:
    mail = Mailboxes(max_nodes=1, dedup_window=1)
    assert mail.store("a", ID, "", b"") is StoreResult.STORED
    assert mail.store("b", ID, "", b"") is StoreResult.FULL
    assert mail.ack("a", ID)
    assert mail.nodes == 0  # an empty mailbox is removed
    assert mail.store("a", ID, "", b"") is StoreResult.DUPLICATE
    assert mail.ack("a", NO_ID) is False
    mail.store("a", NO_ID, "", b"")
    mail.ack("a", NO_ID)  # pushes ID out of the one-id window
    assert mail.store("a", ID, "", b"") is StoreResult.STORED
    assert "held=1" in repr(mail)


def test_mailbox_lease_expiry_keeps_order() -> None:
    mail = Mailboxes(lease_timeout=10)
    for i in range(3):
        mail.store("a", bytes([i]) * 16, "", b"")
    first = mail.take("a", 1, 0.0)
    second = mail.take("a", 1, 1.0)
    assert first is not None
    assert second is not None
    assert mail.take("a", 2, 10.5) is not None  # only the first lease expired: it comes back first
    again = mail.take("a", 2, 11.5)
    assert again is not None
    assert again.message_id == second.message_id
    assert again.deliveries == 2
    assert mail.release(1) == 0  # its leases moved on
    assert mail.redeliveries == 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"capacity": 0}, "capacity"),
        ({"max_nodes": True}, "max_nodes"),
        ({"dedup_window": -1}, "dedup_window"),
        ({"lease_timeout": 0}, "lease_timeout"),
        ({"lease_timeout": float("nan")}, "lease_timeout"),
    ],
)
def test_mailbox_config(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises((ValueError, TypeError), match=field):
        Mailboxes(**kwargs)


async def test_send_timeout_closes_a_client_that_never_reads() -> None:
    """A client that sends and never reads its answers pins no handler: closed after send_timeout."""
    async with peer_and_client(send_timeout=0.1) as (peer, good):
        bad = await anyio.connect_tcp("127.0.0.1", peer.port)
        frame = encode_frame(MessageType.PING, ID, b"x" * 65536)
        with anyio.move_on_after(3):
            try:
                for _ in range(1000):
                    await bad.send(frame)  # blocks once both socket buffers are full
            except (anyio.BrokenResourceError, OSError):
                pass  # the peer gave up on us
        await wait_until(lambda: peer.statistics().connections_active == 1)
        assert peer.statistics().connection_errors == 1
        assert peer.statistics().buffered_bytes == 0
        await good.ping()
        await anyio.aclose_forcefully(bad)


async def test_aclose_closes_live_connections() -> None:
    peer = DWCPPeer("p1")
    await peer.start()
    conn = await connect(peer)
    await conn.send("bob", b"x")
    await peer.aclose()
    assert peer.statistics().connections_active == 0
    with pytest.raises((ConnectionLost, IncompleteFrame)):
        await conn.ping()
    await conn.aclose()
