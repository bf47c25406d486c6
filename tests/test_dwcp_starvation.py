"""A DWCP peer cannot be starved: with every connection slot held by connections that never send a
byte, or by writers that trickle one byte per second, a well-behaved client is served within 2 s.

Real TCP on loopback, real time, the peer's default slot settings (1,024 slots, 1 s eviction);
asyncio and uvloop (1,024 sockets each side).
"""

from __future__ import annotations

import math
import resource
from typing import Any

import anyio
import anyio.abc
import pytest
from helpers import real_time_backends, wait_until

from dwcp_resilience.dwcp import (
    DWCPConnection,
    DWCPPeer,
    DWCPResilienceConfig,
    DWCPResilientClient,
    ErrorCode,
    MessageType,
    PeerError,
    encode_frame,
)
from dwcp_resilience.dwcp.slots import ConnectionSlots

pytestmark = pytest.mark.anyio

anyio_backend = real_time_backends("asyncio", "uvloop")

SLOTS = 1024
FRAME = encode_frame(MessageType.PING, bytes(16), b"x" * 64)


@pytest.fixture(autouse=True)
def enough_file_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 4 * SLOTS + 256  # both ends of every connection, twice over
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.fail(f"the test needs {needed} file descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def hold(port: int, streams: list[anyio.abc.SocketStream]) -> None:
    """Open ``SLOTS`` connections that send nothing."""
    streams.extend([await anyio.connect_tcp("127.0.0.1", port) for _ in range(SLOTS)])


async def trickle(port: int, connected: list[int]) -> None:
    """One slowloris writer: a valid frame, one byte per second, for ever."""
    try:
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            connected.append(1)
            for byte in FRAME:
                await stream.send(bytes([byte]))
                await anyio.sleep(1.0)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        return  # the peer closed it: that is the defence working


async def served_in(port: int) -> float:
    """Seconds until a default resilient client's first send succeeds."""
    config = DWCPResilienceConfig(node_id="good", peers=(f"127.0.0.1:{port}",))
    start = anyio.current_time()
    async with DWCPResilientClient(config) as client:
        await client.send_message("bob", b"hello")
    return anyio.current_time() - start


@pytest.mark.parametrize("per_source", [None, 256], ids=["one-source-may-hold-all", "default"])
async def test_silent_connections_on_every_slot(per_source: int | None) -> None:
    streams: list[anyio.abc.SocketStream] = []
    async with DWCPPeer("peer", max_connections_per_source=per_source) as peer:
        try:
            await hold(peer.port, streams)
            await anyio.sleep(0.2)  # the peer has accepted (or refused) them all
            held = peer.statistics().connections_active
            assert held == (SLOTS if per_source is None else per_source)
            with anyio.fail_after(5):
                seconds = await served_in(peer.port)
            print(f"served after {seconds:.2f} s with {held} silent connections held")
            assert seconds <= 2.0
        finally:
            for stream in streams:
                await anyio.aclose_forcefully(stream)


async def test_one_byte_per_second_writers_on_every_slot() -> None:
    connected: list[int] = []
    async with (
        DWCPPeer("peer", max_connections_per_source=None) as peer,
        anyio.create_task_group() as tg,
    ):
        for _ in range(SLOTS):
            tg.start_soon(trickle, peer.port, connected)
        # 1,024 connects take well over 2 s on a loaded 2-core machine (CI 3.12 timed out at 2 s);
        # the writers' frames take 108 s to trickle in, so frame_timeout (10 s) closes none before.
        await wait_until(lambda: peer.statistics().connections_active == SLOTS, within=9)
        with anyio.fail_after(5):
            seconds = await served_in(peer.port)
        print(f"served after {seconds:.2f} s with {SLOTS} trickling writers")
        assert seconds <= 2.0
        tg.cancel_scope.cancel()


async def test_busy_carries_a_retry_after() -> None:
    async with DWCPPeer("peer", max_connections=1, evict_after=5.0) as peer:
        async with await DWCPConnection.connect("127.0.0.1", peer.port) as first:
            await first.ping()
            async with await DWCPConnection.connect("127.0.0.1", peer.port) as second:
                with pytest.raises(PeerError) as info:
                    await second.ping()
        assert info.value.code == ErrorCode.BUSY
        retry_after: Any = info.value.retry_after
        assert 4.0 < retry_after <= 5.0  # when the first connection becomes evictable


async def test_busy_when_no_slot_will_ever_free_up_saturates_its_retry_after() -> None:
    """``evict_after=inf`` and an idle connection on the one slot: no slot will free up, and
    the newcomer's BUSY says so with the largest ``retry_after`` the frame holds (it used to
    crash the peer: ``ceil(inf)``)."""
    async with DWCPPeer("peer", max_connections=1, evict_after=math.inf) as peer:
        async with await DWCPConnection.connect("127.0.0.1", peer.port) as first:
            await first.ping()
            async with await DWCPConnection.connect("127.0.0.1", peer.port) as second:
                with pytest.raises(PeerError) as info:
                    await second.ping()
            await first.ping()  # still serving
    assert info.value.code == ErrorCode.BUSY
    assert info.value.retry_after == 0xFFFFFFFF / 1000


def test_slots_validate_their_config() -> None:
    good: dict[str, Any] = {
        "max_connections": 4,
        "max_per_source": None,
        "idle_timeout": 1.0,
        "frame_timeout": 1.0,
        "send_timeout": 1.0,
        "evict_after": 1.0,
    }
    ConnectionSlots(**good)
    for field, bad in [
        ("max_connections", 0),
        ("max_per_source", 0),
        ("idle_timeout", 0),
        ("frame_timeout", -1),
        ("send_timeout", float("nan")),
        ("evict_after", -1),
    ]:
        with pytest.raises(ValueError):
            ConnectionSlots(**{**good, field: bad})
