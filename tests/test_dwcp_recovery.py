"""The DWCP client recovers in seconds after a peer restart, and counts one fault per connection.

Real TCP on loopback, real time, asyncio, uvloop and trio. The peer is stopped (every connection
closed, new connections refused) and a new one started on the same port 2.5 s later; 16 senders
keep sending through one client with its default breaker settings.
"""

from __future__ import annotations

import math
import socket
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from helpers import real_time_backends

from dwcp_resilience import BreakerState, BreakerStateChanged, CircuitOpen
from dwcp_resilience.dwcp import (
    SEND,
    ChaosProxy,
    DWCPError,
    DWCPPeer,
    DWCPResilienceConfig,
    DWCPResilientClient,
    Stall,
)

pytestmark = pytest.mark.anyio

anyio_backend = real_time_backends("asyncio", "uvloop", "trio")

OUTAGE = 2.5


async def serve(tg: anyio.abc.TaskGroup, service: DWCPPeer | ChaosProxy) -> anyio.CancelScope:
    """Serve ``service`` in ``tg`` until the returned scope is cancelled (returns once listening)."""
    scope = anyio.CancelScope()

    async def run(*, task_status: anyio.abc.TaskStatus[int]) -> None:
        with scope:
            await service.serve(task_status=task_status)

    await tg.start(run)
    return scope


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_traffic_resumes_within_3_s_of_a_peer_restart() -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    config = DWCPResilienceConfig(node_id="alice", peers=(address,), connect_timeout=0.5)
    client = DWCPResilientClient(config)
    stopped_at = restarted_at = math.inf
    first_ok_after_restart = math.inf
    outage_attempts = 0  # connection attempts while the peer was down
    stop = anyio.Event()

    async def sender() -> None:
        nonlocal first_ok_after_restart
        while not stop.is_set():
            try:
                await client.send_message("bob", b"x")
            except (CircuitOpen, DWCPError, TimeoutError):
                await anyio.sleep(0.01)
                continue
            now = anyio.current_time()
            if now >= restarted_at and first_ok_after_restart == math.inf:
                first_ok_after_restart = now
                stop.set()
            await anyio.sleep(0.005)

    connect = client.manager.get_all_metrics
    async with client:
        async with anyio.create_task_group() as tg:
            first = await serve(tg, DWCPPeer("peer", port=port))
            for _ in range(16):
                tg.start_soon(sender)
            await anyio.sleep(0.3)
            first.cancel()  # the peer is gone: connections closed, new ones refused
            await anyio.lowlevel.checkpoint()
            stopped_at = anyio.current_time()
            before = connect().operations["concurrent-connections"]
            await anyio.sleep(OUTAGE)
            during = connect().operations["concurrent-connections"]
            outage_attempts = (during.successes + during.failures + during.rejected) - (
                before.successes + before.failures + before.rejected
            )
            await serve(tg, DWCPPeer("peer", port=port))
            restarted_at = anyio.current_time()
            with anyio.fail_after(10):
                await stop.wait()
            tg.cancel_scope.cancel()
    recovery = first_ok_after_restart - restarted_at
    breaker = client.manager.circuit_breaker(SEND)
    assert breaker is not None
    stats = breaker.statistics()
    print(
        f"recovery {recovery:.2f} s after the restart; {outage_attempts} connection attempts "
        f"in the {OUTAGE} s outage; send breaker opened {stats.times_opened} times"
    )
    assert stopped_at < restarted_at
    assert recovery <= 3.0
    # Bounded probing: before the breaker opens, each of the 16 senders may spend its retries;
    # then one probe per open period (0.25, 0.5, 1, 2 s) per operation.
    assert outage_attempts <= 16 * 4 + 12


async def test_one_broken_connection_counts_as_one_breaker_failure() -> None:
    errors: list[BaseException] = []
    async with DWCPPeer("peer") as peer, anyio.create_task_group() as outer:
        proxy = ChaosProxy("127.0.0.1", peer.port)
        proxy_scope = await serve(outer, proxy)
        config = DWCPResilienceConfig(
            node_id="alice", peers=(f"127.0.0.1:{proxy.port}",), max_retries=0, max_failures=5
        )
        async with DWCPResilientClient(config) as client:
            await client.send_message("bob", b"warm-up")  # one shared connection
            proxy.set_faults(Stall(direction="downstream"))  # requests arrive, replies do not

            async def send() -> None:
                try:
                    await client.send_message("bob", b"x")
                except DWCPError as exc:
                    errors.append(exc)

            async with anyio.create_task_group() as tg:
                for _ in range(16):
                    tg.start_soon(send)
                await anyio.sleep(0.3)  # all 16 wait on the stalled connection
                proxy_scope.cancel()  # the connection dies under all of them
            breaker = client.manager.circuit_breaker(SEND)
            assert breaker is not None
            stats = breaker.statistics()
    assert len(errors) == 16
    assert stats.failures == 1  # the first request to see the broken connection
    assert stats.ignored == 15  # the same fault, seen by the others
    assert stats.state_changes == {}  # 1 < max_failures: still CLOSED
    repeats = [exc for exc in errors if any("counted once" in n for n in exc.__notes__ or [])]
    assert len(repeats) == 15


def test_the_go_fixed_reset_stays_available() -> None:
    config = DWCPResilienceConfig(circuit_reset_initial=60.0, circuit_reset_time=60.0)
    client = DWCPResilientClient(config)
    breaker = client.manager.circuit_breaker(SEND)
    assert breaker is not None
    breaker.trip()
    retry_after: Any = breaker.statistics().retry_after
    assert retry_after == pytest.approx(60.0, abs=0.1)
    with pytest.raises(ValueError, match="must not exceed"):
        DWCPResilienceConfig(circuit_reset_initial=3.0, circuit_reset_time=2.0)


async def test_a_successful_health_check_ends_the_open_period() -> None:
    async with DWCPPeer("peer") as peer:
        config = DWCPResilienceConfig(
            node_id="alice",
            peers=(f"127.0.0.1:{peer.port}",),
            circuit_reset_initial=60.0,
            circuit_reset_time=60.0,
            health_check_interval=0.2,
        )
        async with DWCPResilientClient(config) as client:
            breaker = client.manager.circuit_breaker(SEND)
            assert breaker is not None
            half_open = anyio.Event()
            breaker.add_listener(
                lambda event: (
                    half_open.set()
                    if isinstance(event, BreakerStateChanged)
                    and event.new is BreakerState.HALF_OPEN
                    else None
                )
            )
            breaker.trip()
            with pytest.raises(CircuitOpen):
                await client.send_message("bob", b"refused")
            with anyio.fail_after(5):
                await half_open.wait()
            assert breaker.state is BreakerState.HALF_OPEN  # long before the 60 s period ends
            for _ in range(3):  # half_open_successes=3 (the Go default)
                await client.send_message("bob", b"a probe")
            state: BreakerState = breaker.state  # (mypy narrowed it to HALF_OPEN above)
            assert state is BreakerState.CLOSED
