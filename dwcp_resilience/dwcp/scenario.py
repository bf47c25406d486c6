"""A traffic scenario: one client sends N messages to another through a peer, and we count.

Used by ``make demo`` and by the end-to-end tests. The sender runs ``concurrency`` tasks; each message
gets a deterministic 16-byte id before its first attempt. A send that fails for the caller (retries,
breaker and deadline exhausted) is noted and, with ``resend_failed``, sent again later with the
*same* id, so the peer stores it at most once. The receiver hands every delivery to the application
(a counter per id) before acknowledging it. At the end:

- ``lost``: messages the sender was told were stored but that never reached the application (must
  be 0);
- ``duplicates``: messages the application saw more than once (must be 0);
- ``undelivered``: messages whose every send failed for the caller and never arrived (allowed: the
  caller was told).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from ..core.clock import loop_time
from ..core.errors import Rejected
from .client import DWCPResilientClient
from .protocol import Delivery

__all__ = ("SendRecord", "ScenarioSummary", "message_id", "run_scenario")


def message_id(run: str, index: int) -> bytes:
    """The deterministic 16-byte id of message ``index`` of run ``run``."""
    return hashlib.blake2b(f"{run}/{index}".encode(), digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class SendRecord:
    """One send call as the caller saw it.

    ``rejected``: the call ended with one of the package's own rejections (:class:`Rejected`:
    ``CircuitOpen``, ``RateLimited``, ``BulkheadFull``, ...): its last attempt was refused before
    it reached the wire (earlier attempts of the same call may have reached it).
    """

    index: int
    start: float
    latency: float
    ok: bool
    error: str | None
    rejected: bool = False


@dataclass(slots=True)
class ScenarioSummary:
    """What happened to every message of a run.

    ``sent_ok``, ``failed_for_caller`` and ``resent_ok`` count messages (first send, then re-sends);
    ``errors`` counts every failed send call by exception type, re-sends included, and ``rejected``
    how many of those ended with the package's own rejections (see :class:`SendRecord`).
    """

    messages: int
    sent_ok: int = 0
    failed_for_caller: int = 0
    rejected: int = 0
    resent_ok: int = 0
    delivered: int = 0
    duplicates: int = 0
    lost: int = 0
    undelivered: int = 0
    duration: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    records: list[SendRecord] = field(default_factory=list)

    @property
    def delivered_exactly_once(self) -> int:
        return self.delivered - self.duplicates


async def run_scenario(
    sender: DWCPResilientClient,
    receiver: DWCPResilientClient,
    *,
    messages: int,
    run: str = "run",
    concurrency: int = 8,
    resend_failed: bool = True,
    resend_deadline: float = 30.0,
    drain_timeout: float = 30.0,
    pace: float = 0.0,
    on_record: Callable[[SendRecord], None] | None = None,
) -> ScenarioSummary:
    """Send ``messages`` messages from ``sender`` to ``receiver`` and account for each one."""
    recipient = receiver.config.node_id
    summary = ScenarioSummary(messages)
    acked: set[int] = set()
    failed: list[int] = []
    seen: Counter[bytes] = Counter()
    index_of = {message_id(run, i): i for i in range(messages)}
    start = loop_time()
    next_index = 0
    sending_done = anyio.Event()

    async def send_one(i: int) -> bool:
        began = loop_time()
        try:
            await sender.send_message(
                recipient, f"{run}:{i}".encode(), message_id=message_id(run, i)
            )
        except Exception as exc:
            rejected = isinstance(exc, Rejected)
            name = type(exc).__name__
            record = SendRecord(i, began - start, loop_time() - began, False, name, rejected)
            summary.errors[name] += 1
            if rejected:
                summary.rejected += 1
        else:
            record = SendRecord(i, began - start, loop_time() - began, True, None)
        summary.records.append(record)
        if on_record is not None:
            on_record(record)
        return record.ok

    async def send_worker() -> None:
        nonlocal next_index
        while next_index < messages:
            i = next_index
            next_index += 1
            if await send_one(i):
                summary.sent_ok += 1
                acked.add(i)
            else:
                summary.failed_for_caller += 1
                failed.append(i)
            if pace:
                await anyio.sleep(pace)

    async def deliver(delivery: Delivery) -> None:
        seen[delivery.message_id] += 1

    async def receive_loop() -> None:
        idle_since: float | None = None
        while True:
            try:
                delivery = await receiver.receive_message(deliver)
            except Exception:
                delivery = None
                await anyio.sleep(0.05)
            if delivery is not None:
                idle_since = None
                continue
            now = loop_time()
            if sending_done.is_set():
                if all(message_id(run, i) in seen for i in acked):
                    idle_since = idle_since if idle_since is not None else now
                    if now - idle_since > 0.3:  # nothing more is coming
                        return
                if now - start > drain_timeout + resend_deadline + 120:
                    return
            await anyio.sleep(0.02)

    async def sender_main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(send_worker)
        if resend_failed:
            give_up = loop_time() + resend_deadline
            while failed and loop_time() < give_up:
                i = failed.pop(0)
                if await send_one(i):
                    summary.resent_ok += 1
                    acked.add(i)
                else:
                    failed.append(i)
                    await anyio.sleep(0.1)
        sending_done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(sender_main)
        tg.start_soon(receive_loop)

    delivered_ids = {index_of[mid] for mid in seen if mid in index_of}
    summary.delivered = sum(seen.values())
    summary.duplicates = sum(count - 1 for count in seen.values() if count > 1)
    summary.lost = len(acked - delivered_ids)
    summary.undelivered = len(set(range(messages)) - acked - delivered_ids)
    summary.duration = loop_time() - start
    return summary
