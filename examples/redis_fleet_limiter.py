"""One rate limit shared by a fleet, through Redis; and what happens when Redis goes away.

Three instances (each with its own Redis connection, as three processes would have) hammer one
``RedisRateLimiter`` of 20 requests/s with a burst of 10. Together they get about
``burst + rate * seconds`` admissions, however many they are. Then Redis is stopped: each instance
falls back to a local limiter at ``rate / fleet_size`` and keeps serving (fail-open, bounded).

It starts its own throwaway ``redis-server`` on a free loopback port (Debian/Ubuntu package
``redis-server``; the ``redis`` extra for the client). Run it: ``python examples/redis_fleet_limiter.py``.
"""

from __future__ import annotations

import asyncio
import time

from dwcp_resilience.redis import RedisBackend, RedisRateLimiter
from dwcp_resilience.redis.server import RedisServer

RATE, BURST, FLEET, SECONDS = 20.0, 10, 3, 2.0


async def instance(url: str, seconds: float) -> int:
    """Try to take a token as fast as possible for ``seconds``; return how many were admitted."""
    async with RedisBackend(url, namespace="example") as backend:
        limiter = RedisRateLimiter(backend, "api", rate=RATE, burst=BURST, fleet_size=FLEET)
        admitted = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if await limiter.try_acquire():
                admitted += 1
            else:
                await asyncio.sleep(0.005)
        return admitted


async def main() -> None:
    with RedisServer() as server:
        counts = await asyncio.gather(*(instance(server.url, SECONDS) for _ in range(FLEET)))
        bound = BURST + RATE * SECONDS
        print(f"shared: instances admitted {counts}, total {sum(counts)} (bound {bound:g})")
        assert sum(counts) <= bound + 1  # +1: the last token may refill as the window closes

        server.stop()  # Redis is gone (SIGKILL)
        counts = await asyncio.gather(*(instance(server.url, SECONDS) for _ in range(FLEET)))
        print(
            f"Redis down: each instance on its local limiter at {RATE / FLEET:.3g}/s: "
            f"admitted {counts}, total {sum(counts)}"
        )


if __name__ == "__main__":
    asyncio.run(main())
