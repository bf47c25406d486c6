"""One fleet breaker member in its own process, driven line by line over stdin/stdout
(tests/test_redis_breaker.py, tests/test_redis_membership.py).

Usage: ``python tests/fleet_member.py URL KIND INSTANCE QUORUM WINDOW POLL_INTERVAL MEMBER_TTL
TIMEOUT``: KIND is ``server`` or ``cluster``; QUORUM an int (absolute count) or ``F/MIN``
(``QuorumShare(F, MIN)``); MEMBER_TTL ``-`` for the default. Prints ``ready`` after its first poll
and ``event STATE REASON`` for every state change of its local breaker. Commands: ``fail`` (one
failing call), ``call`` (prints ``call ok|rejected RAN``), ``stats`` (prints ``stats MEMBERS
NEEDED REPORTERS STATE``); anything else ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from dwcp_resilience import BreakerStateChanged, CircuitBreaker, CircuitOpen, Event
from dwcp_resilience.redis import FleetBreaker, QuorumShare, RedisBackend


def _quorum(text: str) -> int | QuorumShare:
    if "/" in text:
        fraction, minimum = text.split("/")
        return QuorumShare(float(fraction), int(minimum))
    return int(text)


async def _boom() -> None:
    raise RuntimeError("sick")


async def serve(argv: list[str]) -> None:
    url, kind, instance, quorum, window, poll_interval, member_ttl, timeout = argv

    def on_event(event: Event) -> None:
        if isinstance(event, BreakerStateChanged):
            print("event", event.new.name, event.reason, flush=True)

    breaker = CircuitBreaker("payments", max_failures=1, reset_timeout=60.0, listeners=[on_event])
    async with (
        RedisBackend(
            url, cluster=kind == "cluster", instance=instance, timeout=float(timeout)
        ) as backend,
        FleetBreaker(
            backend,
            breaker,
            quorum=_quorum(quorum),
            window=float(window),
            poll_interval=float(poll_interval),
            member_ttl=None if member_ttl == "-" else float(member_ttl),
        ) as fleet,
    ):
        while fleet.statistics().polls == 0:  # noqa: ASYNC110 - polling a counter
            await asyncio.sleep(0.01)
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while True:
            command = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if command == "fail":
                with contextlib.suppress(RuntimeError):
                    await breaker.call(_boom)
            elif command == "call":
                ran: list[int] = []

                async def callee(ran: list[int] = ran) -> None:
                    ran.append(1)

                try:
                    await breaker.call(callee)
                    print("call ok", bool(ran), flush=True)
                except CircuitOpen:
                    print("call rejected", bool(ran), flush=True)
            elif command == "stats":
                s = fleet.statistics()
                print(
                    "stats", s.members, s.reports_needed, s.last_reporters, s.state.name, flush=True
                )
            else:
                break


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1:]))
