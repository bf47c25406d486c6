"""ChaosProxy: each fault observably happens to a real DWCP exchange through the proxy (loopback,
real time, asyncio, trio and uvloop), on a schedule and at runtime."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
from helpers import wait_until

from dwcp_resilience.dwcp.errors import (
    ConnectionClosed,
    ConnectionLost,
    IncompleteFrame,
    TransportError,
    is_retryable,
)
from dwcp_resilience.dwcp.faults import Bandwidth, Drop, Fault, Latency, ResetPeer, Slicer, Stall
from dwcp_resilience.dwcp.peer import DWCPPeer
from dwcp_resilience.dwcp.protocol import (
    CHECKSUM_SIZE,
    HEADER_SIZE,
    Frame,
    FrameDecoder,
    MessageType,
    encode_frame,
)
from dwcp_resilience.dwcp.proxy import ChaosProxy
from dwcp_resilience.dwcp.transport import DWCPConnection

pytestmark = [pytest.mark.anyio, pytest.mark.real_time, pytest.mark.timeout(30)]

ID = bytes(range(16))
BROKEN = (ConnectionLost, IncompleteFrame)  # what a cut connection looks like to the client


@asynccontextmanager
async def through_proxy(
    *faults: Fault, **options: Any
) -> AsyncIterator[tuple[DWCPPeer, ChaosProxy]]:
    async with DWCPPeer("p1") as peer, ChaosProxy("127.0.0.1", peer.port, **options) as proxy:
        proxy.set_faults(*faults)
        yield peer, proxy


async def connect(proxy: ChaosProxy) -> DWCPConnection:
    return await DWCPConnection.connect("127.0.0.1", proxy.port, connect_timeout=2)


async def test_passthrough_without_faults() -> None:
    async with through_proxy() as (peer, proxy), await connect(proxy) as conn:
        await conn.send("bob", b"hello")
        delivery = await conn.receive("bob")
        assert delivery is not None
        assert delivery.body == b"hello"
        stats = proxy.statistics()
        assert stats.connections_active == 1
        assert stats.bytes_upstream == peer.statistics().bytes_received
        assert stats.bytes_downstream == peer.statistics().bytes_sent
        assert (stats.delayed_chunks, stats.resets, stats.drops, stats.stalled_chunks) == (
            0,
            0,
            0,
            0,
        )


async def test_latency_delays_both_directions() -> None:
    async with through_proxy(Latency(0.05)) as (_, proxy), await connect(proxy) as conn:
        start = time.monotonic()
        await conn.ping()
        assert time.monotonic() - start >= 0.095
        assert proxy.statistics().delayed_chunks == 2


async def test_jitter_stays_within_its_bounds() -> None:
    async with (
        through_proxy(Latency(0.03, jitter=0.02, direction="downstream"), seed=7) as (
            _,
            proxy,
        ),
        await connect(proxy) as conn,
    ):
        for _ in range(5):
            start = time.monotonic()
            await conn.ping()
            assert 0.009 <= time.monotonic() - start < 0.2
        assert proxy.statistics().delayed_chunks == 5


async def test_a_partial_latency_delays_only_its_share_of_chunks() -> None:
    """probability=0.25 over 40 pings (80 chunks): some delayed, most not (seeded, so exact)."""
    tail = Latency(0.001, probability=0.25)
    async with through_proxy(tail, seed=3) as (_, proxy), await connect(proxy) as conn:
        for _ in range(40):
            await conn.ping()
        delayed = proxy.statistics().delayed_chunks
    assert 5 <= delayed <= 40  # 20 expected; never all 80, never none
    async with through_proxy(Latency(0.001, probability=0.0)) as (_, proxy):
        async with await connect(proxy) as conn:
            await conn.ping()
        assert proxy.statistics().delayed_chunks == 0


async def test_bandwidth_caps_throughput() -> None:
    async with through_proxy(Bandwidth(20_000, direction="upstream")) as (_, proxy):
        async with await connect(proxy) as conn:
            start = time.monotonic()
            await conn.send("bob", b"x" * 4000)  # 4 KB at 20 KB/s: at least 0.15 s
            assert time.monotonic() - start >= 0.15
        assert proxy.statistics().throttled_chunks >= 1


async def test_reset_cuts_a_frame_in_the_middle() -> None:
    async with through_proxy(ResetPeer()) as (peer, proxy):
        conn = await connect(proxy)
        with pytest.raises(BROKEN):
            await conn.ping(b"x" * 100)
        await conn.aclose()
        stats = proxy.statistics()
        assert stats.resets == 1
        frame = HEADER_SIZE + 100 + CHECKSUM_SIZE
        assert stats.bytes_downstream == frame // 2  # half a frame reached the client
        await wait_until(lambda: proxy.statistics().connections_active == 0)
        async with await DWCPConnection.connect("127.0.0.1", peer.port) as direct:
            await direct.ping()  # the peer behind it is fine


async def test_reset_upstream_mid_frame_never_stores_a_partial_message() -> None:
    async with through_proxy(ResetPeer(after_bytes=40, direction="upstream")) as (peer, proxy):
        conn = await connect(proxy)
        with pytest.raises(BROKEN):
            await conn.send("bob", b"y" * 100)
        await conn.aclose()
        await wait_until(lambda: peer.statistics().connections_active == 0)
        stats = peer.statistics()
        assert stats.messages_stored == 0
        assert stats.protocol_errors + stats.connection_errors == 1


async def test_stall_accepts_and_never_answers_until_switched_off() -> None:
    async with through_proxy(Stall()) as (_, proxy), await connect(proxy) as conn:
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.1):
                await conn.ping()
        stats = proxy.statistics()
        assert stats.stalled_chunks == 1
        assert stats.stalled_bytes == HEADER_SIZE
        assert stats.connections_active == 1  # held open
        proxy.clear_faults()  # at runtime
        await conn.ping()


async def test_slicer_delivers_one_byte_segments() -> None:
    async with through_proxy(Slicer(1, delay=0.002)) as (_, proxy):
        stream = await anyio.connect_tcp("127.0.0.1", proxy.port)
        async with stream:
            await stream.send(encode_frame(MessageType.PING, ID, b"z" * 20))
            decoder = FrameDecoder()
            sizes: list[int] = []
            frames: list[Frame] = []
            with anyio.fail_after(3):
                while not frames:
                    chunk = await stream.receive()
                    sizes.append(len(chunk))
                    frames = decoder.frames(chunk)
        assert frames == [Frame(MessageType.PONG, ID, b"z" * 20)]
        size = HEADER_SIZE + 20 + CHECKSUM_SIZE
        assert sum(sizes) == size
        assert sizes.count(1) >= size // 2  # most reads saw a single byte
        assert proxy.statistics().sliced_segments == size


async def test_drop_resets_the_connection() -> None:
    async with through_proxy(Drop(1.0)) as (_, proxy), await connect(proxy) as conn:
        with pytest.raises(BROKEN):
            await conn.ping()
        assert proxy.statistics().drops == 1


async def _drop_outcomes(seed: int) -> list[bool]:
    outcomes: list[bool] = []
    async with through_proxy(Drop(0.5), seed=seed) as (_, proxy):
        for _ in range(12):
            conn = await connect(proxy)
            try:
                await conn.ping()
                outcomes.append(True)
            except BROKEN:
                outcomes.append(False)
            finally:
                await conn.aclose()
            await wait_until(lambda: proxy.statistics().connections_active == 0)
        assert proxy.statistics().drops == outcomes.count(False)
    return outcomes


async def test_random_drops_are_reproducible_from_the_seed() -> None:
    first = await _drop_outcomes(42)
    assert first == await _drop_outcomes(42)
    assert True in first
    assert False in first


async def test_schedule_switches_faults_by_time() -> None:
    async with through_proxy(schedule=[(0.0, 0.15, Stall())]) as (_, proxy):
        async with await connect(proxy) as conn:
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.08):
                    await conn.ping()
        await anyio.sleep(0.15)
        assert proxy.active_faults() == ()
        async with await connect(proxy) as conn:
            await conn.ping()


async def test_callable_schedule_and_set_schedule() -> None:
    def schedule(elapsed: float) -> list[Fault]:
        return [Latency(0.05)] if elapsed < 10 else []

    async with through_proxy(schedule=schedule) as (_, proxy), await connect(proxy) as conn:
        start = time.monotonic()
        await conn.ping()
        assert time.monotonic() - start >= 0.095
        proxy.set_schedule([(0.05, 10.0, Stall(direction="upstream"))])
        assert proxy.active_faults() == ()
        await conn.ping()
        await anyio.sleep(0.06)
        assert proxy.active_faults("downstream") == ()
        assert proxy.active_faults("upstream") == (Stall(direction="upstream"),)


async def test_half_close_propagates_through_the_proxy() -> None:
    async with through_proxy() as (_, proxy):
        stream = await anyio.connect_tcp("127.0.0.1", proxy.port)
        async with stream:
            await stream.send(encode_frame(MessageType.PING, ID, b"hi"))
            await stream.send_eof()
            received = b""
            with anyio.fail_after(2):
                while True:
                    try:
                        received += await stream.receive()
                    except anyio.EndOfStream:
                        break
        assert FrameDecoder().frames(received) == [Frame(MessageType.PONG, ID, b"hi")]


async def test_target_down_closes_the_client_side() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()
    async with ChaosProxy("127.0.0.1", port) as proxy, await connect(proxy) as conn:
        with pytest.raises((ConnectionClosed, *BROKEN)):
            await conn.ping()
        assert proxy.statistics().connect_failures == 1


async def test_aclose_cuts_every_proxied_connection() -> None:
    async with DWCPPeer("p1") as peer:
        proxy = ChaosProxy("127.0.0.1", peer.port)
        await proxy.start()
        conn = await connect(proxy)
        await conn.ping()
        await proxy.aclose()
        await proxy.aclose()
        with pytest.raises(TransportError):
            await conn.ping()
        await conn.aclose()
        with pytest.raises(RuntimeError, match="not serving"):
            _ = proxy.port


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Latency(-1), "delay"),
        (lambda: Latency(0.1, jitter=float("nan")), "jitter"),
        (lambda: Latency(0.1, probability=1.5), "probability"),
        (lambda: Bandwidth(0), "rate"),
        (lambda: Slicer(0), "size"),
        (lambda: Slicer(1, delay=-1), "delay"),
        (lambda: Drop(1.5), "probability"),
        (lambda: ResetPeer(after_bytes=-1), "after_bytes"),
        (lambda: Stall(direction="sideways"), "direction"),  # type: ignore[arg-type]
        (lambda: ChaosProxy("127.0.0.1", 0), "target_port"),
        (lambda: ChaosProxy("127.0.0.1", 1, schedule=[(-1, 1, Stall())]), "start_offset"),
        (lambda: ChaosProxy("127.0.0.1", 1, schedule=[(0, -1, Stall())]), "duration"),
        (lambda: ChaosProxy("127.0.0.1", 1, schedule=[(0, 1, "stall")]), "fault"),  # type: ignore[list-item]
        (lambda: ChaosProxy("127.0.0.1", 1).set_faults("stall"), "Fault"),  # type: ignore[arg-type]
    ],
)
async def test_bad_config_names_the_field(build: Any, field: str) -> None:
    with pytest.raises((ValueError, TypeError), match=field):
        build()


async def test_repr_and_manual_faults_add_to_the_schedule() -> None:
    async with through_proxy(Latency(0.001), schedule=[(0, 10, Slicer(4))]) as (_, proxy):
        assert proxy.active_faults() == (Latency(0.001), Slicer(4))
        assert proxy.active_faults("upstream") == (Latency(0.001),)
        assert f"127.0.0.1:{proxy.port}" in repr(proxy)
        assert "faults=2" in repr(proxy)


def _chaos(elapsed: float) -> list[Fault]:
    """A 0.4 s cycle: a stall window, a reset window, and always jitter and rare drops."""
    phase = elapsed % 0.4
    faults: list[Fault] = [Latency(0.001, jitter=0.001), Drop(0.02)]
    if phase < 0.04:
        faults.append(Stall())
    elif 0.2 <= phase < 0.24:
        faults.append(ResetPeer())
    return faults


@pytest.mark.slow
async def test_messages_through_chaos_arrive_exactly_once_with_idempotent_retries() -> None:
    """The transport's contract for the resilient client: resend with the same message id after
    any retryable error or timeout, acknowledge after handling, de-duplicate by id on the reader:
    every message arrives exactly once, none is lost, the peer stores each once."""
    n = 120
    sent: list[bytes] = []
    handled: list[bytes] = []
    errors: list[str] = []
    async with (
        DWCPPeer("p1", lease_timeout=0.15) as peer,
        ChaosProxy("127.0.0.1", peer.port, schedule=_chaos, seed=3) as proxy,
    ):

        async def attempt(conn: list[DWCPConnection | None], op: Any) -> Any:
            while True:
                try:
                    if conn[0] is None or not conn[0].usable:
                        conn[0] = await connect(proxy)
                    with anyio.fail_after(0.1):
                        return await op(conn[0])
                except Exception as exc:
                    if not (isinstance(exc, TimeoutError) or is_retryable(exc)):
                        raise
                    errors.append(type(exc).__name__)
                    if conn[0] is not None:
                        await conn[0].aclose()  # a stalled or broken connection is dropped
                        conn[0] = None

        async def sender() -> None:
            conn: list[DWCPConnection | None] = [None]
            for i in range(n):
                mid = bytes(12) + i.to_bytes(4, "big")
                sent.append(mid)
                await attempt(conn, lambda c, m=mid, i=i: c.send("bob", b"%d" % i, message_id=m))
            if conn[0] is not None:
                await conn[0].aclose()

        async def receiver() -> None:
            conn: list[DWCPConnection | None] = [None]
            seen: set[bytes] = set()
            while len(seen) < n:
                delivery = await attempt(conn, lambda c: c.receive("bob"))
                if delivery is None:
                    await anyio.sleep(0.005)
                    continue
                if delivery.message_id not in seen:
                    seen.add(delivery.message_id)
                    handled.append(delivery.message_id)
                await attempt(conn, lambda c, m=delivery.message_id: c.ack("bob", m))
            if conn[0] is not None:
                await conn[0].aclose()

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sender)
                tg.start_soon(receiver)
        stats = peer.statistics()
        injected = proxy.statistics()
    assert sorted(handled) == sorted(sent)
    assert len(handled) == len(set(handled)) == n
    assert stats.messages_stored == n  # retried sends were recognised as duplicates
    assert stats.messages_held == 0
    assert errors  # the chaos really happened ...
    assert injected.stalled_chunks + injected.resets + injected.drops > 0  # ... in the proxy
