"""Relaying: client -> peer A -> peer B, with the deadline passed on (real loopback TCP; asyncio,
trio and uvloop in real time).

The next hop is a real ``DWCPPeer`` where exactly-once is checked, and a scripted one
(:class:`fake_hop.FakeHop`) where the test must see the budget a frame carried or hold an answer.
A relay's processing is made long without timers: its one forwarding slot is held by a SEND whose
answer the fake hop keeps until the test releases it, so the next SEND waits at the relay for at
least as long as the test held it.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest
from fake_hop import fake_hop
from helpers import wait_until

from dwcp_resilience import OperationContext
from dwcp_resilience.core.clock import loop_time
from dwcp_resilience.dwcp.client import DWCPResilienceConfig, DWCPResilientClient
from dwcp_resilience.dwcp.errors import (
    ConnectionLost,
    ErrorCode,
    PeerDeadlineExceeded,
    PeerError,
    is_retryable,
)
from dwcp_resilience.dwcp.peer import DWCPPeer
from dwcp_resilience.dwcp.protocol import (
    FLAG_RELAYED,
    MessageType,
    encode_error,
    encode_frame,
    encode_send,
    new_message_id,
)
from dwcp_resilience.dwcp.relay import Relay, split_address
from dwcp_resilience.dwcp.transport import DWCPConnection

pytestmark = [pytest.mark.anyio, pytest.mark.real_time, pytest.mark.timeout(30)]

M = MessageType
HOLD = 0.3  # seconds the test holds the relay's one forwarding slot


async def connect(port: int) -> DWCPConnection:
    return await DWCPConnection.connect("127.0.0.1", port, connect_timeout=5)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- the budget shrinks at each hop --------------------------------------------------------------


async def test_the_budget_shrinks_by_the_time_spent_at_the_relay() -> None:
    """B sees at most the client's budget minus what A spent: the request waited at A for at least
    ``HOLD`` seconds (A's one slot was busy), and A passes on only what is left."""
    async with fake_hop() as hop, DWCPPeer("a", routes={"bob": hop.address}, max_forwards=1) as a:
        async with await connect(a.port) as first, await connect(a.port) as second:
            async with anyio.create_task_group() as tg:
                tg.start_soon(first.send, "bob", b"first")
                await wait_until(lambda: len(hop.sends()) == 1)

                async def send_second() -> None:
                    with anyio.fail_after(10):  # the client's budget: at most 10,000 ms
                        await second.send("bob", b"second")

                tg.start_soon(send_second)
                await wait_until(lambda: a.statistics().frames_received == 2)
                await anyio.sleep(HOLD)  # the second SEND now waits at A for at least HOLD
                hop.release.set()
        first_seen, second_seen = hop.sends()
    assert first_seen.budget_ms == 30_000 or first_seen.budget_ms <= 30_000  # A's own bound
    assert second_seen.flags & FLAG_RELAYED
    assert 0 < second_seen.budget_ms <= 10_000 - HOLD * 1000 + 1  # +1: the rounding up
    assert a.statistics().relayed == 2


async def test_a_budget_spent_at_the_relay_is_refused_there_and_never_reaches_b() -> None:
    """The caller's deadline runs out while its SEND waits at A: A answers DEADLINE_EXCEEDED and B
    never sees it. (The caller's deadline is an ``OperationContext``'s, which arms no local timer,
    so the answer the caller gets is A's.)"""
    async with fake_hop() as hop, DWCPPeer("a", routes={"bob": hop.address}, max_forwards=1) as a:
        async with await connect(a.port) as first, await connect(a.port) as second:
            async with anyio.create_task_group() as tg:
                tg.start_soon(first.send, "bob", b"held")
                await wait_until(lambda: len(hop.sends()) == 1)
                start = loop_time()
                with (
                    OperationContext.with_timeout("op", HOLD).activate(),
                    pytest.raises(PeerDeadlineExceeded) as info,
                ):
                    await second.send("bob", b"too late")
                assert loop_time() - start >= HOLD
                hop.release.set()
        assert [seen.message_id for seen in hop.sends()] == [hop.sends()[0].message_id]
        stats = a.statistics()
    assert isinstance(info.value, TimeoutError)
    assert info.value.code == ErrorCode.DEADLINE_EXCEEDED
    assert "waited here" in info.value.detail
    assert (stats.deadline_exceeded, stats.relayed) == (1, 1)


async def test_a_deadline_that_passes_before_the_next_hop_answers() -> None:
    """A forwarded the request, B did not answer in time: DEADLINE_EXCEEDED from A. B got the
    request, so it may have stored it: a resend with the same id would be its duplicate."""
    async with fake_hop() as hop, DWCPPeer("a", routes={"bob": hop.address}) as a:
        async with await connect(a.port) as conn:
            with (
                OperationContext.with_timeout("op", HOLD).activate(),
                pytest.raises(PeerDeadlineExceeded) as info,
            ):
                await conn.send("bob", b"x")
        assert len(hop.sends()) == 1
        assert hop.sends()[0].budget_ms <= HOLD * 1000
    assert "before" in info.value.detail


async def test_without_a_deadline_the_relay_passes_on_its_own_bound_or_none() -> None:
    async with fake_hop() as hop:
        hop.release.set()
        async with DWCPPeer("a", routes={"bob": hop.address}, forward_timeout=2.0) as a:
            async with await connect(a.port) as conn:
                await conn.send("bob", b"x")  # budget 0 from the client
        async with DWCPPeer("a", routes={"bob": hop.address}, forward_timeout=math.inf) as a:
            async with await connect(a.port) as conn:
                await conn.send("bob", b"y")
        bounded, unbounded = (seen.budget_ms for seen in hop.sends())
    assert 0 < bounded <= 2000
    assert unbounded == 0


# -- exactly once through the relay ----------------------------------------------------------------


async def test_client_to_relay_to_peer_exactly_once() -> None:
    async with (
        DWCPPeer("b") as b,
        DWCPPeer("a", routes={"bob": f"127.0.0.1:{b.port}"}, max_forwards=4) as a,
    ):
        config = DWCPResilienceConfig(node_id="alice", peers=(f"127.0.0.1:{a.port}",))
        async with DWCPResilientClient(config) as alice:
            ids: list[bytes] = []

            async def send(i: int) -> None:  # 100 tasks: the client's bulkhead admits 100
                for j in range(2):
                    mid = await alice.send_message("bob", b"m%d-%d" % (i, j))
                    ids.append(mid)

            async with anyio.create_task_group() as tg:
                for i in range(100):
                    tg.start_soon(send, i)
        async with await connect(a.port) as conn:  # a resend of an acknowledged message
            assert await conn.send("bob", b"m0-0", sender="alice", message_id=ids[0]) is True
        assert a.mailboxes.pending("bob") == 0  # A keeps nothing for bob
        assert b.mailboxes.pending("bob") == 200
        assert b.statistics().duplicates == 1
        assert a.statistics().relayed == 201
        assert a.relay is not None
        assert a.relay.statistics().in_flight == 0
        async with await connect(b.port) as conn:
            got = set()
            while (delivery := await conn.receive("bob")) is not None:
                got.add(delivery.message_id)
                await conn.ack("bob", delivery.message_id)
    assert got == set(ids)


async def test_many_senders_through_a_relay_with_few_slots() -> None:
    """64 tasks on 8 connections, 4 forwarding slots: every SEND is answered once, B stores each
    id once, and the relay's counters add up (the oracle: the set of ids sent)."""
    async with (
        DWCPPeer("b") as b,
        DWCPPeer("a", routes={"bob": f"127.0.0.1:{b.port}"}, max_forwards=4) as a,
    ):
        conns = [await connect(a.port) for _ in range(8)]
        sent: list[bytes] = []
        duplicates = 0

        async def sender(k: int) -> None:
            nonlocal duplicates
            conn = conns[k % len(conns)]
            for i in range(5):
                mid = new_message_id()
                with anyio.fail_after(10):
                    duplicates += await conn.send("bob", b"%d-%d" % (k, i), message_id=mid)
                sent.append(mid)

        async with anyio.create_task_group() as tg:
            for k in range(64):
                tg.start_soon(sender, k)
        for conn in conns:
            await conn.aclose()
        relayed = a.relay.statistics() if a.relay else None
        stored = b.mailboxes.pending("bob")
    assert duplicates == 0
    assert len(set(sent)) == len(sent) == stored == 320
    assert relayed is not None
    assert (relayed.relayed, relayed.refused, relayed.expired, relayed.failed) == (320, 0, 0, 0)
    assert relayed.in_flight == 0


async def test_a_resend_while_the_first_copy_is_relayed_waits_for_it() -> None:
    async with fake_hop() as hop, DWCPPeer("a", routes={"bob": hop.address}) as a:
        mid = new_message_id()
        async with await connect(a.port) as one, await connect(a.port) as two:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: one.send("bob", b"x", message_id=mid))
                await wait_until(lambda: len(hop.sends()) == 1)
                tg.start_soon(lambda: two.send("bob", b"x", message_id=mid))
                await wait_until(lambda: a.statistics().frames_received == 2)
                assert len(hop.sends()) == 1  # the resend waits for the first copy
                hop.release.set()
        assert [seen.message_id for seen in hop.sends()] == [mid, mid]


async def test_a_relayed_send_is_kept_where_it_arrives_never_relayed_again() -> None:
    """A routes bob to B and B routes bob to A (a loop): the SEND stops at B."""
    port_a = free_port()
    async with DWCPPeer("b", routes={"bob": f"127.0.0.1:{port_a}"}) as b:
        async with DWCPPeer("a", port=port_a, routes={"bob": f"127.0.0.1:{b.port}"}) as a:
            async with await connect(a.port) as conn:
                assert await conn.send("bob", b"x") is False
            assert (a.mailboxes.pending("bob"), b.mailboxes.pending("bob")) == (0, 1)
            assert b.statistics().relayed == 0


# -- failures of the next hop ------------------------------------------------------------------------


async def test_an_unreachable_next_hop_is_a_retryable_forward_failure() -> None:
    async with DWCPPeer("a", routes={"bob": f"127.0.0.1:{free_port()}"}) as a:
        async with await connect(a.port) as conn:
            with pytest.raises(PeerError) as info:
                await conn.send("bob", b"x")
        assert a.statistics().relay_failures == 1
    assert info.value.code == ErrorCode.FORWARD_FAILED
    assert is_retryable(info.value)


async def test_a_next_hop_silent_for_forward_timeout_is_closed_and_reconnected() -> None:
    async with (
        fake_hop() as hop,
        DWCPPeer("a", routes={"bob": hop.address}, forward_timeout=HOLD) as a,
    ):
        async with await connect(a.port) as conn:
            with pytest.raises(PeerError) as info:
                await conn.send("bob", b"x")
            assert info.value.code == ErrorCode.FORWARD_FAILED
            assert "within" in info.value.detail
            await wait_until(lambda: hop.closed == 1)  # stalled: its connection was closed
            hop.release.set()
            assert await conn.send("bob", b"y") is False
        hellos = [seen for seen in hop.seen if seen.type is M.HELLO]
    assert len(hellos) == 2  # connected again, saying who A is
    assert all(seen.budget_ms <= HOLD * 1000 for seen in hop.sends())


@pytest.mark.parametrize(
    ("code", "counter"), [(ErrorCode.MAILBOX_FULL, "refused"), (ErrorCode.BUSY, "refused")]
)
async def test_the_next_hops_refusal_is_passed_on(code: ErrorCode, counter: str) -> None:
    async with fake_hop() as hop, DWCPPeer("a", routes={"bob": hop.address}) as a:
        hop.error = encode_error(code, "from b", retry_after=1.5)
        hop.release.set()
        async with await connect(a.port) as conn:
            with pytest.raises(PeerError) as info:
                await conn.send("bob", b"x")
        assert a.relay is not None
        assert getattr(a.relay.statistics(), counter) == 1
    assert (info.value.code, info.value.detail, info.value.retry_after) == (code, "from b", 1.5)


async def test_a_next_hop_with_no_free_slot_is_busy_with_its_retry_after() -> None:
    async with (
        DWCPPeer("b", max_connections=1, evict_after=30.0) as b,
        DWCPPeer("a", routes={"bob": f"127.0.0.1:{b.port}"}) as a,
        await connect(b.port) as holder,
    ):
        await holder.ping()  # B's one slot is taken
        b_address = b.address
        async with await connect(a.port) as conn:
            with pytest.raises(PeerError) as info:
                await conn.send("bob", b"x")
        assert a.relay is not None
        assert a.relay.statistics().refused == 1
    assert info.value.code == ErrorCode.BUSY
    retry_after = info.value.retry_after
    assert retry_after is not None
    assert 20.0 < retry_after <= 30.0  # when B's idle connection may be evicted
    assert info.value.detail.startswith(f"{b_address}: ")
    assert is_retryable(info.value)


# -- cancellation --------------------------------------------------------------------------------------


async def test_stopping_the_relay_mid_forward_ends_every_relayed_send() -> None:
    """A stops while one SEND is at the next hop and another waits for A's one slot: both end,
    the clients see their connections lost, and A stops promptly."""
    errors: list[BaseException] = []

    async def send(conn: DWCPConnection) -> None:
        try:
            await conn.send("bob", b"x")
        except ConnectionLost as exc:
            errors.append(exc)

    async with fake_hop() as hop, anyio.create_task_group() as tg:
        async with DWCPPeer("a", routes={"bob": hop.address}, max_forwards=1) as a:
            one, two = await connect(a.port), await connect(a.port)
            tg.start_soon(send, one)
            await wait_until(lambda: len(hop.sends()) == 1)
            tg.start_soon(send, two)
            await wait_until(lambda: a.statistics().frames_received == 2)
            relay = a.relay
            assert relay is not None
            assert relay.statistics().in_flight == 1
            stopping = loop_time()
        assert loop_time() - stopping < 5  # stopped at once, not after the held answer
        assert relay.statistics().in_flight == 0
        with anyio.fail_after(5):
            await wait_until(lambda: len(errors) == 2)
        await one.aclose()
        await two.aclose()
    assert len(hop.sends()) == 1


async def test_a_deadline_that_passes_while_the_relay_connects_closes_that_connection() -> None:
    """The next hop accepts but never answers the relay's HELLO: the request's deadline ends the
    wait, the half-made connection is closed, and nothing was sent."""
    async with fake_hop() as hop, DWCPPeer("a", routes={"bob": hop.address}) as a:
        hop.answer_hello = False
        async with await connect(a.port) as conn:
            with (
                OperationContext.with_timeout("op", HOLD).activate(),
                pytest.raises(PeerDeadlineExceeded),
            ):
                await conn.send("bob", b"x")
            await wait_until(lambda: hop.closed == 1)
        assert [seen.type for seen in hop.seen] == [M.HELLO]


async def test_stopping_the_relay_while_a_resend_waits_for_its_first_copy() -> None:
    """A resend waits for the first copy of its message (at the next hop); stopping A ends both
    waits and leaves nothing in flight."""
    mid = new_message_id()
    lost: list[BaseException] = []

    async def send(conn: DWCPConnection) -> None:
        try:
            await conn.send("bob", b"x", message_id=mid)
        except ConnectionLost as exc:
            lost.append(exc)

    async with fake_hop() as hop, anyio.create_task_group() as tg:
        async with DWCPPeer("a", routes={"bob": hop.address}) as a:
            one, two = await connect(a.port), await connect(a.port)
            tg.start_soon(send, one)
            await wait_until(lambda: len(hop.sends()) == 1)
            tg.start_soon(send, two)
            await wait_until(lambda: a.statistics().frames_received == 2)
            relay = a.relay
            assert relay is not None
            assert relay.statistics().in_flight == 1  # the resend waits, not in flight
        assert relay.statistics().in_flight == 0
        with anyio.fail_after(5):
            await wait_until(lambda: len(lost) == 2)
        await one.aclose()
        await two.aclose()
    assert len(hop.sends()) == 1


async def test_a_bad_frame_behind_a_relayed_send_gives_its_slot_back() -> None:
    """A routed SEND and garbage in one write: the connection is closed at the garbage and the
    task relaying the SEND is cancelled, at once after it was started. Its forwarding slot comes
    back all the same: with one slot, the next SEND goes through."""
    async with fake_hop() as hop, DWCPPeer("a", routes={"bob": hop.address}, max_forwards=1) as a:
        hop.release.set()
        stream = await anyio.connect_tcp("127.0.0.1", a.port)
        async with stream:
            frame = encode_frame(M.SEND, new_message_id(), encode_send("bob", "x", b"1"))
            await stream.send(frame + b"garbage!" * 8)
            with anyio.fail_after(5):
                while True:  # until the peer closes it
                    try:
                        await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
        async with await connect(a.port) as conn:
            with anyio.fail_after(5):
                assert await conn.send("bob", b"2") is False
        relay = a.relay
        assert relay is not None
        assert relay.statistics().in_flight == 0
        assert a.statistics().protocol_errors == 1


async def test_a_client_gone_while_its_send_waits_leaves_the_relay_whole() -> None:
    """The second client closes while its SEND waits for the slot: once the slot frees, that SEND
    is relayed, its answer goes nowhere, and the relay and the peer are back to idle."""
    async with fake_hop() as hop, DWCPPeer("a", routes={"bob": hop.address}, max_forwards=1) as a:
        async with await connect(a.port) as one:
            async with anyio.create_task_group() as tg:
                tg.start_soon(one.send, "bob", b"1")
                await wait_until(lambda: len(hop.sends()) == 1)
                two = await connect(a.port)

                async def doomed() -> None:  # no deadline: it would wait for the slot for ever
                    with pytest.raises(ConnectionLost):
                        await two.send("bob", b"2")

                tg.start_soon(doomed)
                await wait_until(lambda: a.statistics().frames_received == 2)
                await two.aclose()
                hop.release.set()
            await wait_until(lambda: a.statistics().connections_active == 1)
            assert await one.send("bob", b"3") is False
        relay = a.relay
        assert relay is not None
        stats = relay.statistics()
    assert (stats.relayed, stats.in_flight) == (3, 0)


# -- configuration -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"routes": [("bob", "127.0.0.1:1")]}, TypeError, "routes"),
        ({"routes": {"": "127.0.0.1:1"}}, ValueError, "routes"),
        ({"routes": {"bob": "127.0.0.1"}}, ValueError, r"routes\['bob'\]"),
        ({"routes": {"bob": "127.0.0.1:0"}}, ValueError, r"routes\['bob'\]"),
        ({"routes": {"bob": 7000}}, ValueError, r"routes\['bob'\]"),
        ({"max_forwards": 0}, ValueError, "max_forwards"),
        ({"max_forwards": True}, TypeError, "max_forwards"),
        ({"max_forwards": 1.5}, TypeError, "max_forwards"),
        ({"forward_timeout": math.nan}, ValueError, "forward_timeout"),
        ({"forward_timeout": 0}, ValueError, "forward_timeout"),
        ({"forward_timeout": -1.0}, ValueError, "forward_timeout"),
        ({"forward_timeout": "1"}, TypeError, "forward_timeout"),
    ],
)
def test_bad_relay_settings_are_refused_naming_them(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        DWCPPeer("a", **options)


def test_split_address() -> None:
    assert split_address("127.0.0.1:7000") == ("127.0.0.1", 7000)
    assert split_address("::1:7000") == ("::1", 7000)
    with pytest.raises(ValueError, match="next"):
        split_address("nope", "next")


def test_a_peer_without_routes_has_no_relay() -> None:
    assert DWCPPeer("a").relay is None
    assert DWCPPeer("a", routes={}).relay is None
    relay = DWCPPeer("a", routes={"bob": "127.0.0.1:7000"}).relay
    assert isinstance(relay, Relay)
    assert relay.routes == {"bob": "127.0.0.1:7000"}
    assert relay.routes_to("bob")
    assert not relay.routes_to("carol")
