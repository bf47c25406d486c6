"""Deadlines on the wire, one hop (real loopback TCP; asyncio, trio and uvloop in real time).

A request's frame carries the time left before the innermost deadline in force when it is written;
a request whose deadline has passed is not written; a peer refuses a request whose deadline passed
while it waited there, touching nothing; a request without a deadline (budget 0) is served as
before. Timing assertions only bound from the side the test controls (a budget is at most what was
given; a wait is at least what the test held it for).
"""

from __future__ import annotations

import math
from pathlib import Path

import anyio
import anyio.abc
import pytest
from fake_hop import FakeHop, fake_hop
from helpers import wait_until
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dwcp_resilience import OperationContext, Timeout
from dwcp_resilience.core.clock import loop_time
from dwcp_resilience.dwcp.answers import PeerAnswers
from dwcp_resilience.dwcp.client import SEND, DWCPResilienceConfig, DWCPResilientClient
from dwcp_resilience.dwcp.errors import (
    ErrorCode,
    PeerDeadlineExceeded,
    PeerError,
    RequestExpired,
)
from dwcp_resilience.dwcp.mailbox import Mailboxes
from dwcp_resilience.dwcp.peer import DWCPPeer
from dwcp_resilience.dwcp.protocol import (
    FLAG_DUPLICATE,
    FLAG_RELAYED,
    Frame,
    FrameDecoder,
    MessageType,
    decode_error,
    encode_error,
    encode_frame,
    encode_send,
)
from dwcp_resilience.dwcp.relay import Relay
from dwcp_resilience.dwcp.transport import DWCPConnection, deadline_in_force

pytestmark = [pytest.mark.anyio, pytest.mark.real_time, pytest.mark.timeout(30)]

M = MessageType


async def connect(port: int) -> DWCPConnection:
    return await DWCPConnection.connect("127.0.0.1", port, connect_timeout=5)


def ping_budgets(hop: FakeHop) -> list[int]:
    return [seen.budget_ms for seen in hop.seen if seen.type is M.PING]


# -- what a request carries ------------------------------------------------------------------------


async def test_a_request_carries_the_time_left_before_the_innermost_deadline() -> None:
    async with fake_hop() as hop:
        hop.release.set()
        async with await connect(hop.port) as conn:
            await conn.ping()  # no deadline in force: 0
            with anyio.fail_after(5):  # an anyio cancel scope
                await conn.ping()
            with anyio.fail_after(5), OperationContext.with_timeout("op", 2).activate():
                await conn.ping()  # the context's deadline is the earlier one
            with OperationContext.with_timeout("op", 3).activate(), anyio.fail_after(1):
                await conn.ping()  # the scope's is
            await Timeout(0.5).call(conn.ping)  # our own Timeout policy
            with anyio.move_on_after(math.inf):
                await conn.ping()  # a scope without a deadline: 0
        none, scope, context, inner_scope, timeout, endless = ping_budgets(hop)
    assert none == 0
    assert endless == 0
    # At most the deadline given, rounded up to the ms; at least what it can have cost to get
    # from the scope's entry to the write (generously: this machine is shared).
    assert 2500 < scope <= 5000
    assert 1000 < context <= 2000
    assert 500 < inner_scope <= 1000
    assert 0 < timeout <= 500


async def test_a_request_past_its_deadline_is_not_sent() -> None:
    async with fake_hop() as hop:
        hop.release.set()
        async with await connect(hop.port) as conn:
            with (
                OperationContext("op", deadline=loop_time() - 0.001).activate(),
                pytest.raises(RequestExpired),
            ):
                await conn.send("bob", b"late", sender="alice")
            assert isinstance(RequestExpired(), TimeoutError)
            stats = conn.statistics()
            assert (stats.requests, stats.bytes_sent, stats.in_flight) == (0, 0, 0)
            assert conn.usable  # nothing was written: the connection is as good as before
            assert await conn.send("bob", b"on time", sender="alice") is False
        assert [seen.type for seen in hop.seen] == [M.SEND]  # only the one in time


async def test_a_cancelled_scope_cancels_the_request_rather_than_expiring_it() -> None:
    """``current_effective_deadline()`` is -inf in a cancelled scope: the request is cancelled
    (a cancellation stays a cancellation), not turned into ``RequestExpired``."""
    async with fake_hop() as hop:
        hop.release.set()
        async with await connect(hop.port) as conn:
            with anyio.CancelScope() as scope:
                scope.cancel()
                assert deadline_in_force() == -math.inf
                await conn.ping()
            assert scope.cancelled_caught
            assert conn.statistics().bytes_sent == 0
            assert conn.usable
            await conn.ping()
        assert len(ping_budgets(hop)) == 1


async def test_the_resilient_client_sends_its_attempt_timeout_or_the_callers_deadline() -> None:
    async with fake_hop() as hop:
        hop.release.set()
        config = DWCPResilienceConfig(node_id="alice", peers=(hop.address,), circuit_timeout=3.0)
        async with DWCPResilientClient(config) as client:
            await client.send_message("bob", b"1")
            ctx = OperationContext.with_timeout(SEND, 1.0)
            await client.send_message("bob", b"2", ctx=ctx)
        hello = next(seen for seen in hop.seen if seen.type is M.HELLO)
        first, second = (seen.budget_ms for seen in hop.sends())
    assert 0 < hello.budget_ms <= 5000  # the connect timeout bounds the HELLO
    assert 1500 < first <= 3000  # the attempt timeout
    assert 0 < second <= 1000  # the caller's deadline, earlier than the attempt timeout


# -- the peer's refusal, as the client sees it -------------------------------------------------------


async def test_a_peers_deadline_exceeded_is_a_timeout_the_client_does_not_retry() -> None:
    async with fake_hop() as hop:
        hop.error = encode_error(ErrorCode.DEADLINE_EXCEEDED, "waited too long")
        hop.release.set()
        config = DWCPResilienceConfig(
            node_id="alice", peers=(hop.address,), max_retries=3, initial_retry_delay=0.01
        )
        async with DWCPResilientClient(config) as client:
            with pytest.raises(TimeoutError) as info:
                await client.send_message("bob", b"x")
            breaker = client.manager.circuit_breaker(SEND)
            assert breaker is not None
            assert breaker.statistics().failures == 1  # counted, like a timeout
        assert isinstance(info.value, PeerDeadlineExceeded)
        assert info.value.code == ErrorCode.DEADLINE_EXCEEDED
        assert len(hop.sends()) == 1  # not resent


async def test_a_forward_failure_is_retried_with_the_same_id() -> None:
    async with fake_hop() as hop:
        hop.error = encode_error(ErrorCode.FORWARD_FAILED, "next hop down")
        hop.release.set()
        config = DWCPResilienceConfig(
            node_id="alice", peers=(hop.address,), max_retries=2, initial_retry_delay=0.01
        )
        async with DWCPResilientClient(config) as client:
            with pytest.raises(PeerError) as info:
                await client.send_message("bob", b"x")
        assert info.value.code == ErrorCode.FORWARD_FAILED
        sends = hop.sends()
        assert len(sends) == 3
        assert len({seen.message_id for seen in sends}) == 1


# -- the peer: refusing what expired while it waited -------------------------------------------------


async def read_replies(stream: anyio.abc.SocketStream, n: int) -> dict[bytes, Frame]:
    decoder = FrameDecoder()
    replies: dict[bytes, Frame] = {}
    with anyio.fail_after(10):
        while len(replies) < n:
            for frame in decoder.frames(await stream.receive()):
                replies[frame.message_id] = frame
    return replies


def send_frame(mid: int, recipient: str, budget: int) -> bytes:
    payload = encode_send(recipient, "alice", b"body %d" % mid)
    return encode_frame(M.SEND, bytes([mid]) * 16, payload, budget_ms=budget)


async def test_an_expired_request_is_refused_without_touching_the_store(tmp_path: Path) -> None:
    """A peer that relays ``carol`` (one forwarding slot, held by the next hop) and keeps ``bob``
    in SQLite. Pipelined behind a SEND for carol that waits for the slot, a SEND for bob whose
    budget ran out meanwhile is refused and not stored; one without a budget is stored, as
    before; a PING whose budget ran out is refused too."""
    store = tmp_path / "mail.db"
    async with fake_hop() as hop:
        async with DWCPPeer(
            "p", routes={"carol": hop.address}, max_forwards=1, store_path=store
        ) as peer:
            stream = await anyio.connect_tcp("127.0.0.1", peer.port)
            async with stream:
                await stream.send(send_frame(1, "carol", 0))  # takes the slot, held at the hop
                await wait_until(lambda: len(hop.sends()) == 1)
                start = loop_time()
                ping = encode_frame(M.PING, bytes([5]) * 16, b"", budget_ms=100)
                await stream.send(  # one write: the peer reads them in one go
                    send_frame(2, "carol", 300)
                    + send_frame(3, "bob", 100)
                    + send_frame(4, "bob", 0)
                    + ping
                )
                replies = await read_replies(stream, 4)
                waited = loop_time() - start
                assert peer.mailboxes.pending("bob") == 1
                assert peer.statistics().messages_stored == 1
                hop.release.set()
                replies |= await read_replies(stream, 1)
            stats = peer.statistics()
        assert len(hop.sends()) == 1  # the expired SEND for carol never left
    assert waited >= 0.3
    for mid in (2, 3, 5):
        reply = replies[bytes([mid]) * 16]
        assert reply.type is M.ERROR
        code, detail = decode_error(reply.payload)
        assert code == ErrorCode.DEADLINE_EXCEEDED, detail
    assert replies[bytes([4]) * 16].type is M.ACK  # no budget: served as before
    assert replies[bytes([1]) * 16].type is M.ACK
    assert (stats.deadline_exceeded, stats.relayed) == (3, 1)
    async with DWCPPeer("p", store_path=store) as again:  # what reached the disk
        assert again.mailboxes.pending("bob") == 1
        async with await connect(again.port) as conn:
            delivery = await conn.receive("bob")
    assert delivery is not None
    assert delivery.message_id == bytes([4]) * 16


async def test_requests_with_and_without_a_budget_get_the_same_answers() -> None:
    """A peer that waits for nothing refuses nothing: a budget changes no answer."""
    async with DWCPPeer("p") as peer:
        async with await connect(peer.port) as conn:
            with anyio.fail_after(5):
                assert await conn.send("bob", b"1", sender="a") is False
            assert await conn.send("bob", b"2", sender="a") is False
            with OperationContext.with_timeout("op", 0.5).activate():
                first = await conn.receive("bob")
                await conn.ping()
            second = await conn.receive("bob")
            assert first is not None and second is not None
            assert (first.body, second.body) == (b"1", b"2")
        assert peer.statistics().deadline_exceeded == 0


# -- the pure answers: deadlines and routing, against a model ------------------------------------------

RECIPIENTS = st.sampled_from(["bob", "carol"])  # the relay routes carol
IDS = st.sampled_from([bytes([i]) * 16 for i in range(4)])
BUDGETS = st.one_of(st.just(0), st.integers(1, 2_000))
# How long a frame waited, in ms relative to its budget (never on the boundary itself), or not at all.
WAITS = st.one_of(st.none(), st.integers(-50, 50).filter(bool))


class AnswersMachine(RuleBasedStateMachine):
    """``PeerAnswers`` over a real ``Mailboxes`` core, with a relay routing ``carol``: a request
    whose budget ran out while it waited is refused and changes nothing; a routed SEND is left to
    the relay unless it was relayed already; every other SEND is stored once per id."""

    @initialize()
    def setup(self) -> None:
        relay = Relay("p", {"carol": "127.0.0.1:7000"})
        self.answers = PeerAnswers("p", Mailboxes(), max_payload=1 << 20, relay=relay)
        self.stored: dict[str, set[bytes]] = {"bob": set(), "carol": set()}
        self.refused = 0
        self.clock = 1000.0

    def times(self, budget: int, wait: int | None) -> tuple[float, float]:
        """(arrived, now): ``now`` is ``budget + wait`` ms after ``arrived`` when it waited."""
        self.clock += 1.0
        arrived = self.clock
        if wait is None:
            return arrived, arrived
        return arrived, arrived + max(0, budget + wait) / 1000

    def expired(self, budget: int, wait: int | None) -> bool:
        return wait is not None and budget > 0 and wait > 0

    @rule(recipient=RECIPIENTS, mid=IDS, budget=BUDGETS, wait=WAITS, relayed=st.booleans())
    def send(
        self, recipient: str, mid: bytes, budget: int, wait: int | None, relayed: bool
    ) -> None:
        flags = FLAG_RELAYED if relayed else 0
        frame = Frame(M.SEND, mid, encode_send(recipient, "alice", b"x"), flags, budget)
        arrived, now = self.times(budget, wait)
        reply = self.answers.answer(1, frame, arrived, now)
        if self.expired(budget, wait):
            assert reply is not None
            assert FrameDecoder().frames(reply)[0].type is M.ERROR
            code = decode_error(FrameDecoder().frames(reply)[0].payload)[0]
            assert code == ErrorCode.DEADLINE_EXCEEDED
            self.refused += 1
            return
        if recipient == "carol" and not relayed:
            assert reply is None  # the relay's
            return
        assert reply is not None
        (ack,) = FrameDecoder().frames(reply)
        assert ack.type is M.ACK
        assert bool(ack.flags & FLAG_DUPLICATE) == (mid in self.stored[recipient])
        self.stored[recipient].add(mid)

    @rule(budget=BUDGETS, wait=WAITS)
    def ping(self, budget: int, wait: int | None) -> None:
        frame = Frame(M.PING, bytes(16), b"p", 0, budget)
        arrived, now = self.times(budget, wait)
        reply = self.answers.answer(1, frame, arrived, now)
        assert reply is not None
        kind = FrameDecoder().frames(reply)[0].type
        assert kind is (M.ERROR if self.expired(budget, wait) else M.PONG)
        self.refused += self.expired(budget, wait)

    @invariant()
    def mailboxes_hold_what_was_stored(self) -> None:
        for recipient, ids in self.stored.items():
            assert self.answers.mail.pending(recipient) == len(ids)
        assert self.answers.expired == self.refused


TestAnswersMachine = AnswersMachine.TestCase
TestAnswersMachine.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
