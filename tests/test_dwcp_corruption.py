"""Corruption that TCP does not catch (a middlebox rewriting bytes and fixing the checksum): every
corrupted frame is caught by its checksum, answered BAD_CHECKSUM and its connection closed, and the
client retries it on a new connection as a transport fault. Every message arrives exactly once.

Real TCP on loopback through a :class:`ChaosProxy` with a :class:`Corrupt` fault both ways.
"""

from __future__ import annotations

import anyio
import pytest
from helpers import real_time_backends

from dwcp_resilience import CircuitOpen
from dwcp_resilience.dwcp import (
    RECEIVE,
    SEND,
    ChaosProxy,
    Corrupt,
    DWCPError,
    DWCPPeer,
    DWCPResilienceConfig,
    DWCPResilientClient,
    PeerError,
    ProtocolError,
    TransportError,
)

pytestmark = pytest.mark.anyio

anyio_backend = real_time_backends("asyncio", "uvloop", "trio")

MESSAGES = 120


async def test_corrupted_frames_are_retried_and_delivered_exactly_once() -> None:
    caller_errors: list[BaseException] = []
    async with (
        DWCPPeer("peer") as peer,
        ChaosProxy("127.0.0.1", peer.port, seed=11) as proxy,
    ):
        proxy.set_faults(Corrupt(0.1, direction="both"))
        options = {
            "peers": (f"127.0.0.1:{proxy.port}",),
            "initial_retry_delay": 0.005,
            "max_retry_delay": 0.05,
            "circuit_timeout": 1.0,
        }
        alice = DWCPResilientClient(DWCPResilienceConfig(node_id="alice", **options))  # type: ignore[arg-type]
        bob = DWCPResilientClient(DWCPResilienceConfig(node_id="bob", **options))  # type: ignore[arg-type]
        received: list[bytes] = []
        async with alice, bob:

            async def send(n: int) -> None:
                mid = n.to_bytes(16, "big")  # one id per message: resending it is idempotent
                while True:
                    try:
                        await alice.send_message("bob", f"m{n}".encode(), message_id=mid)
                        return
                    except (DWCPError, CircuitOpen) as exc:
                        caller_errors.append(exc)
                        await anyio.sleep(0.02)

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for n in range(MESSAGES):
                        tg.start_soon(send, n)
                while len(received) < MESSAGES:
                    try:
                        delivery = await bob.receive_message()
                    except (DWCPError, CircuitOpen) as exc:
                        caller_errors.append(exc)
                        await anyio.sleep(0.02)
                        continue
                    if delivery is not None:
                        received.append(delivery.body)
            corrupted = proxy.statistics().corrupted_chunks
            protocol_errors = peer.statistics().protocol_errors
            send_failures = alice.metrics().operations[SEND]
            receive_failures = bob.metrics().operations[RECEIVE]
    assert sorted(received) == sorted(f"m{n}".encode() for n in range(MESSAGES))  # once each
    assert corrupted > 10 and protocol_errors > 0  # the faults really happened
    # A caller whose retries ran out saw a fault of the connection (or the open breaker), never
    # a refusal by the peer: a corrupted frame is not the peer saying no.
    assert not [exc for exc in caller_errors if isinstance(exc, PeerError)]
    assert all(
        isinstance(exc, ProtocolError | TransportError | CircuitOpen) for exc in caller_errors
    )
    assert send_failures.successes >= MESSAGES
    assert receive_failures.successes >= MESSAGES
