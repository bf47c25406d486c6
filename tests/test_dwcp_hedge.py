"""The DWCP client hedges peer discovery: a slow discovery on the shared connection is beaten by a
hedged one on the spare connection (real TCP on loopback, every backend in real time)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from dwcp_resilience import Hedge, Percentile
from dwcp_resilience.dwcp import DWCPPeer, DWCPResilienceConfig, DWCPResilientClient
from dwcp_resilience.dwcp.client import DISCOVER, SEND
from dwcp_resilience.dwcp.transport import DWCPConnection

pytestmark = [pytest.mark.anyio, pytest.mark.real_time]


def _config(address: str, **options: Any) -> DWCPResilienceConfig:
    return DWCPResilienceConfig(node_id="carol", peers=(address,), **options)


def test_discovery_is_hedged_by_default_and_can_be_turned_off() -> None:
    client = DWCPResilientClient(_config("127.0.0.1:1"))
    hedge = client.manager.components(DISCOVER)["hedge"]
    assert isinstance(hedge, Hedge)
    assert hedge.percentile == Percentile(
        0.95, window=200, min_samples=20, fallback=0.25, minimum=0.002
    )
    assert "hedge" not in client.manager.components(SEND)  # sends are not idempotent
    off = DWCPResilientClient(_config("127.0.0.1:1", discover_hedge=None))
    assert "hedge" not in off.manager.components(DISCOVER)
    fixed = DWCPResilientClient(_config("127.0.0.1:1", discover_hedge=0.05))
    fixed_hedge = fixed.manager.components(DISCOVER)["hedge"]
    assert isinstance(fixed_hedge, Hedge) and fixed_hedge.statistics().delay == 0.05
    for bad, error in ((-1.0, ValueError), ("soon", TypeError)):
        with pytest.raises(error, match="discover_hedge"):
            _config("127.0.0.1:1", discover_hedge=bad)


async def test_a_slow_discovery_is_beaten_by_a_hedge_on_the_spare_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with DWCPPeer("peer-a", seeds=("127.0.0.1:7001",)) as peer:
        address = f"127.0.0.1:{peer.port}"
        async with DWCPResilientClient(_config(address, discover_hedge=0.05)) as client:
            expected = await client.discover_peers()  # warms the shared connection up
            shared = client._connections[address]
            stalled: list[str] = []
            discover = DWCPConnection.discover

            async def stalled_discover(conn: DWCPConnection) -> Any:
                if conn is not shared:
                    return await discover(conn)
                stalled.append("asked")
                await anyio.sleep(30)  # a stalled connection: only a cancellation ends this
                raise AssertionError("not cancelled")

            monkeypatch.setattr(DWCPConnection, "discover", stalled_discover)
            with anyio.fail_after(5):
                assert await client.discover_peers() == expected
            hedge = client.manager.components(DISCOVER)["hedge"]
            assert isinstance(hedge, Hedge)
            stats = hedge.statistics()
            assert (stats.calls, stats.hedges_started, stats.hedge_wins) == (2, 1, 1)
            assert stalled == ["asked"]
            # The loser was cancelled on the shared connection, which is closed like any
            # connection a request was cancelled on; the next call connects afresh.
            assert not shared.usable
            assert client._connections.get(address) is not shared
            spare = client._spares[address]
            assert spare.usable and spare is not shared  # kept for the next hedge
            assert await client.discover_peers() == expected
            breaker = client.manager.circuit_breaker(DISCOVER)
            assert breaker is not None and breaker.statistics().failures == 0


async def test_a_failed_discovery_is_left_to_the_retry_not_hedged_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """hedge_after_failure=False: a refused connection is one attempt per retry attempt (the
    retry backs off), not two."""
    async with DWCPPeer("peer-a") as peer:
        port = peer.port
    connects = 0
    original = DWCPConnection.connect

    async def counting(*args: Any, **kwargs: Any) -> DWCPConnection:
        nonlocal connects
        connects += 1
        return await original(*args, **kwargs)

    config = _config(f"127.0.0.1:{port}", max_retries=1, initial_retry_delay=0.01)
    client = DWCPResilientClient(config)  # no health checks: they would connect too
    monkeypatch.setattr(DWCPConnection, "connect", counting)
    with pytest.raises(Exception, match="after 2 attempts"):
        await client.discover_peers()
    await client.aclose()
    assert connects == 2
