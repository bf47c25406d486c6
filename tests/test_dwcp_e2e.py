"""End to end: 2000 messages from A to B through a peer behind a chaos proxy (real TCP, loopback).

Resets, delays, stalls, drops and 1-byte slicing hit the connection on a schedule; every send and
receive goes through the client's ResilienceManager. Each message must reach B exactly once; none is
lost; a caller sees an error only from the protections (a rejection, the deadline) or once retries
ran out, and such a message, re-sent later with the same id, is still delivered once.
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers import real_time_backends

from dwcp_resilience.dwcp import (
    ChaosProxy,
    Drop,
    DWCPPeer,
    DWCPResilienceConfig,
    DWCPResilientClient,
    Fault,
    Latency,
    ResetPeer,
    Slicer,
    Stall,
)
from dwcp_resilience.dwcp.scenario import run_scenario

pytestmark = pytest.mark.anyio

SCHEDULE: list[tuple[float, float, Fault]] = [
    (0.3, 1.2, Latency(0.02, 0.02)),
    (1.5, 1.0, Drop(0.05)),
    (2.5, 0.8, Stall()),
    (3.3, 0.8, Slicer(1)),
    (4.1, 0.6, ResetPeer()),
]

ALLOWED_CALLER_ERRORS = {
    "CircuitOpen",  # the breaker refused: the callee never ran, nothing was stored
    "BulkheadFull",
    "RateLimited",
    "DeadlineExceeded",  # the operation's deadline ran out
    "ConnectionReset",  # retries ran out (the note on the exception says after how many)
    "ConnectionClosed",
    "ConnectFailed",
    "ConnectTimeout",
}


anyio_backend = real_time_backends("asyncio", "trio")


async def test_2000_messages_exactly_once_through_faults() -> None:
    async with DWCPPeer("peer", lease_timeout=1.0) as peer:
        async with ChaosProxy("127.0.0.1", peer.port, schedule=SCHEDULE, seed=7) as proxy:
            options: dict[str, Any] = {
                "peers": (f"127.0.0.1:{proxy.port}",),
                "circuit_timeout": 0.3,
                "circuit_reset_time": 0.5,
                "initial_retry_delay": 0.02,
                "max_retry_delay": 0.2,
                "operation_deadline": 2.0,
                "connect_timeout": 0.5,
                "health_check_interval": 0.5,
            }
            sender = DWCPResilientClient(DWCPResilienceConfig(node_id="a", **options))
            receiver = DWCPResilientClient(DWCPResilienceConfig(node_id="b", **options))
            async with sender, receiver:
                summary = await run_scenario(
                    sender, receiver, messages=2000, concurrency=16, run="e2e"
                )
            faults = proxy.statistics()
        stored = peer.statistics()
    assert summary.lost == 0
    assert summary.duplicates == 0
    assert summary.delivered == 2000
    assert summary.undelivered == 0
    assert set(summary.errors) <= ALLOWED_CALLER_ERRORS, summary.errors
    assert summary.failed_for_caller == summary.resent_ok  # every failed send went through later
    assert stored.messages_stored == 2000  # retried and re-sent messages were stored once
    assert stored.messages_held == 0
    assert faults.resets + faults.drops > 0 and faults.stalled_chunks > 0
    assert faults.sliced_segments > 0 and faults.delayed_chunks > 0
