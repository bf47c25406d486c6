"""Testing a client's circuit breaker and rate limiter in virtual time, with pytest-asyncio.

A 60 s breaker reset and a rate-limited burst of 25 requests, each test well under a second of real
time: the ``resilience_virtual_time`` marker (the pytest plugin that comes with dwcp-resilience) runs
each test on a looptime loop, whose clock jumps ahead whenever every task waits. The client's policies
live at module level, as in an application; ``resilience_reset`` gives each test a clean breaker and
a full bucket, since each test's loop starts its clock at 0 again.

Run it (a copy in your own tests, or here with the dev extra installed)::

    pip install 'dwcp-resilience[testing]' pytest-asyncio
    pytest examples/test_virtual_time.py
"""

from __future__ import annotations

import asyncio
import time

import pytest

from dwcp_resilience import BreakerState, CircuitBreaker, CircuitOpen, RateLimiter

# -- the code under test: a small price client -----------------------------------------------------

# The provider's quota: 10 requests per second, at most 5 at once.
breaker = CircuitBreaker("prices", max_failures=3, reset_timeout=60.0, half_open_successes=1)
limiter = RateLimiter("prices", rate=10.0, burst=5)


class Provider:
    """A fake upstream: up or down; it records the loop time of every request it gets."""

    def __init__(self) -> None:
        self.up = True
        self.requests: list[float] = []

    async def price(self, item: str) -> float:
        self.requests.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.05)  # the network
        if not self.up:
            raise ConnectionError("provider unreachable")
        return 9.99


async def fetch_price(provider: Provider, item: str) -> float:
    """Wait for the quota, then ask the provider through the breaker."""
    async with limiter:
        return await breaker.call(provider.price, item)


# -- the tests --------------------------------------------------------------------------------------

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.resilience_virtual_time,
    pytest.mark.resilience_reset(breaker, limiter),
]

QUOTA_RATE, QUOTA_BURST = 10.0, 5  # what the provider allows: the limiter must hold to it


async def test_the_breaker_opens_and_recovers_after_60_seconds() -> None:
    real = time.perf_counter()
    provider = Provider()
    provider.up = False
    for _ in range(3):
        with pytest.raises(ConnectionError):
            await fetch_price(provider, "book")
    with pytest.raises(CircuitOpen) as refused:
        await fetch_price(provider, "book")
    assert refused.value.retry_after == pytest.approx(60.0, abs=0.01)
    assert len(provider.requests) == 3  # an open breaker does not call the provider

    provider.up = True
    await asyncio.sleep(59.0)
    with pytest.raises(CircuitOpen):  # one second early: still open
        await fetch_price(provider, "book")
    await asyncio.sleep(1.0)
    assert await fetch_price(provider, "book") == 9.99  # the probe goes through, and closes it
    assert breaker.state is BreakerState.CLOSED
    assert time.perf_counter() - real < 1.0  # 60 s of the loop's time, in no real time


async def test_a_burst_of_requests_keeps_to_the_quota() -> None:
    real = time.perf_counter()
    provider = Provider()
    start = asyncio.get_running_loop().time()
    prices = await asyncio.gather(*(fetch_price(provider, f"item{n}") for n in range(25)))
    assert prices == [9.99] * 25
    sent = [t - start for t in provider.requests]
    # Never more than the quota: by any time t, at most burst + rate * t requests were sent.
    for t in sent:
        sent_by_t = sum(s <= t for s in sent)
        assert sent_by_t <= QUOTA_BURST + QUOTA_RATE * t + 1e-6, f"{sent_by_t} sent by t={t:.2f}s"
    # And no slower: 5 at once, then one every 0.1 s.
    assert sent[:QUOTA_BURST] == [0.0] * QUOTA_BURST
    assert sent[-1] == pytest.approx((25 - QUOTA_BURST) / QUOTA_RATE)
    assert time.perf_counter() - real < 1.0
