"""Quickstart: a flaky async function behind a timeout, a retry, a circuit breaker and a limiter.

Run it: ``python examples/quickstart.py`` (a few seconds; nothing to start first).
"""

from __future__ import annotations

import random

import anyio

from dwcp_resilience import (
    CircuitBreaker,
    CircuitOpen,
    ExponentialBackoff,
    Pipeline,
    RateLimiter,
    Retry,
    Timeout,
)

rng = random.Random(7)  # seeded: the run prints the same numbers every time


async def fetch_price(item: str) -> float:
    """A backend that fails 30 % of the time and hangs 5 % of the time."""
    roll = rng.random()
    if roll < 0.30:
        raise ConnectionError("backend reset the connection")
    if roll < 0.35:
        await anyio.sleep(10)  # hangs: the timeout cuts it short
    await anyio.sleep(0.001)
    return 9.99 if item == "book" else 1.0


# Outermost first: retry each failed attempt (up to 3 more), with a breaker that sees every
# attempt, at most 200 attempts/s, and 0.2 s per attempt.
retry = Retry(
    "prices",
    max_retries=3,
    backoff=ExponentialBackoff(initial_delay=0.01, max_delay=0.1, jitter=True),
    retry_on=(ConnectionError, TimeoutError),
    rng=random.Random(1),
)
breaker = CircuitBreaker("prices", max_failures=5, reset_timeout=1.0)
limiter = RateLimiter("prices", rate=200, burst=20)
timeout = Timeout(0.2, name="prices-attempt")
protected = Pipeline(retry, breaker, limiter, timeout, name="prices")


async def main() -> None:
    ok = failed = refused = 0
    for _ in range(60):
        try:
            await protected.call(fetch_price, "book")
            ok += 1
        except CircuitOpen:
            refused += 1
        except (ConnectionError, TimeoutError):
            failed += 1  # the retries ran out: the last real error reaches the caller
    print(f"60 calls: {ok} ok, {failed} failed after retries, {refused} refused by the breaker")
    stats = retry.statistics()
    print(f"retry: {stats.calls} calls, {stats.retries} retries, attempts per try {stats.attempts}")
    b = breaker.statistics()
    print(f"breaker: {b.state.name}, {b.failures} failed attempts, opened {b.times_opened} times")
    print(f"limiter: {limiter.statistics().allowed} attempts admitted")


if __name__ == "__main__":
    anyio.run(main)
