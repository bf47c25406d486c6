"""Every way in to a rate limiter admits through the one decision (``TokenBucket.take``).

These pin three bugs of the hand-copied fast paths (fixed by giving the take one home):

- a still clock admitted ``burst - 1`` at once: the copies compared ``tat <= now`` without the
  core's float tolerance (``rate=50, burst=3`` at 0.0 admitted 2, ``rate=100, burst=5`` 4);
- through ``call``, the decorator and ``async with``, an injected clock that stands still did not
  limit at all: the waiter armed a loop timer at the injected clock's reading (another timebase)
  and was then granted as if the timer had fired a tick early;
- ``try_acquire`` read the raw clock, so a clock that stepped back locked it out while
  ``statistics().tokens`` said the tokens were there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from dwcp_resilience import (
    CircuitBreaker,
    KeyedRateLimiter,
    OperationContext,
    Pipeline,
    RateLimited,
    RateLimiter,
    ResilienceManager,
)
from dwcp_resilience.testing import FakeClock

pytestmark = pytest.mark.anyio

# (clock start, rate, burst): each admits one token fewer than its burst without the tolerance.
FLOAT_EDGES = [(0.0, 50, 3), (0.0, 100, 5), (100.0, 100, 5)]

Attempt = Callable[[], Awaitable[bool]]


async def _nothing() -> None:
    return None


def _entry_points(limiter: RateLimiter) -> dict[str, Attempt]:
    """One admission through each entry point of ``limiter``: True if admitted without waiting.

    ``limiter`` must have ``max_wait=0``, so a refusal is ``RateLimited`` at once.
    """

    @limiter
    async def decorated() -> None:
        return None

    pipeline = Pipeline(limiter, name="p")
    fused = Pipeline(CircuitBreaker("b", max_failures=100), limiter, name="fused")

    async def refused(run: Callable[[], Awaitable[Any]]) -> bool:
        try:
            await run()
        except RateLimited:
            return False
        return True

    async def try_acquire() -> bool:
        return limiter.try_acquire()

    async def acquire() -> bool:
        return await refused(limiter.acquire)

    async def call() -> bool:
        return await refused(lambda: limiter.call(_nothing))

    async def decorator() -> bool:
        return await refused(decorated)

    async def enter() -> None:
        async with limiter:
            pass

    async def async_with() -> bool:
        return await refused(enter)

    async def in_pipeline() -> bool:
        return await refused(lambda: pipeline.call(_nothing))

    async def breaker_then_limiter() -> bool:
        return await refused(lambda: fused.call(_nothing))

    return {
        "try_acquire": try_acquire,
        "acquire": acquire,
        "call": call,
        "decorator": decorator,
        "async with": async_with,
        "Pipeline": in_pipeline,
        "Pipeline(breaker, limiter)": breaker_then_limiter,
    }


ENTRY_POINTS = list(_entry_points(RateLimiter("names", rate=1, burst=1, max_wait=0)))


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(("start", "rate", "burst"), FLOAT_EDGES)
async def test_a_still_injected_clock_admits_exactly_the_burst(
    backend_name: str, entry: str, start: float, rate: int, burst: int
) -> None:
    clock = FakeClock(start)
    limiter = RateLimiter("l", rate=rate, burst=burst, max_wait=0, clock=clock)
    attempt = _entry_points(limiter)[entry]
    admitted = [await attempt() for _ in range(burst + 3)]
    assert admitted == [True] * burst + [False] * 3
    stats = limiter.statistics()
    assert (stats.allowed, stats.rejected, stats.waiting) == (burst, 3, 0)
    clock.advance(1 / rate)  # one token's worth: exactly one more
    assert [await attempt() for _ in range(2)] == [True, False]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
async def test_a_clock_stepping_back_does_not_lock_out(backend_name: str, entry: str) -> None:
    clock = FakeClock(10.0)
    limiter = RateLimiter("l", rate=2, burst=2, max_wait=0, clock=clock)
    attempt = _entry_points(limiter)[entry]
    assert [await attempt() for _ in range(3)] == [True, True, False]
    clock.advance(1.0)  # the bucket is full again: 2 tokens
    assert await attempt()
    clock.now = 9.0  # the clock steps back 2 s: read as the latest reading, 11.0
    assert limiter.statistics().tokens == pytest.approx(1.0)
    assert [await attempt() for _ in range(2)] == [True, False]
    clock.now = 11.5  # half a second after the latest reading: one more token
    assert [await attempt() for _ in range(2)] == [True, False]


@pytest.mark.parametrize("idiom", ["call", "decorator", "async with", "acquire", "Pipeline"])
async def test_a_waiter_on_a_still_injected_clock_waits_for_that_clock(
    backend_name: str, idiom: str
) -> None:
    """With ``max_wait=None`` the waiter sleeps on the loop's timer for what the injected clock says
    is left, reads that clock again, and is admitted only once it has moved."""
    clock = FakeClock(0.0)
    limiter = RateLimiter("l", rate=50, burst=3, clock=clock)  # max_wait=None: waits

    @limiter
    async def decorated() -> None:
        return None

    async def enter() -> None:
        async with limiter:
            pass

    pipeline = Pipeline(limiter, name="p")
    runs: dict[str, Callable[[], Awaitable[Any]]] = {
        "call": lambda: limiter.call(_nothing),
        "decorator": decorated,
        "async with": enter,
        "acquire": limiter.acquire,
        "Pipeline": lambda: pipeline.call(_nothing),
    }
    run = runs[idiom]
    admitted = 0

    async def caller() -> None:
        nonlocal admitted
        for _ in range(100):
            await run()
            admitted += 1

    async with anyio.create_task_group() as group:
        group.start_soon(caller)
        await anyio.sleep(0.3)  # loop time passes, the injected clock stands still
        assert admitted == 3
        assert limiter.statistics().waiting == 1
        clock.advance(1 / 50)  # one token: the waiter is admitted once its timer fires
        await anyio.sleep(0.1)
        assert admitted == 4
        group.cancel_scope.cancel()
    stats = limiter.statistics()
    assert (stats.allowed, stats.cancelled, stats.waiting) == (4, 1, 0)


@pytest.mark.parametrize(("start", "rate", "burst"), FLOAT_EDGES)
async def test_keyed_limiter_admits_exactly_the_burst(
    backend_name: str, start: float, rate: int, burst: int
) -> None:
    clock = FakeClock(start)
    keyed = KeyedRateLimiter("k", rate=rate, burst=burst, max_wait=0, clock=clock)
    assert [keyed.try_acquire("a") for _ in range(burst + 1)] == [True] * burst + [False]
    for _ in range(burst):
        await keyed.acquire("b")
    with pytest.raises(RateLimited):
        await keyed.acquire("b")
    clock.now = start - 5.0  # a step back: no lockout, no extra tokens
    assert not keyed.try_acquire("a")
    clock.now = start + 1 / rate
    assert keyed.try_acquire("a") and not keyed.try_acquire("a")


@pytest.mark.virtual_time
@pytest.mark.parametrize(("rate", "burst"), [(50, 3), (100, 5)])
async def test_the_managers_lane_admits_exactly_the_burst(
    backend_name: str, rate: int, burst: int
) -> None:
    """The lane runs on the loop's clock (asyncio in virtual time: it stands still between
    sleeps); on trio the manager takes the chain, which must agree."""
    manager = ResilienceManager("m")
    manager.register_rate_limiter("send", rate=rate, burst=burst)
    lane = type(manager._stacks["send"]).__name__ == "_LaneStack"
    assert lane  # the manager runs this stack through its lane (on trio the lane takes the chain)
    starts: list[float] = []

    async def op(ctx: OperationContext) -> None:
        starts.append(anyio.current_time())

    t0 = anyio.current_time()
    for _ in range(burst + 2):
        await manager.execute_with_all_protections(OperationContext("send"), op)
    assert starts[:burst] == [t0] * burst
    assert starts[burst] == pytest.approx(t0 + 1 / rate)
    assert starts[burst + 1] == pytest.approx(t0 + 2 / rate)


def test_the_cores_bookkeeping_is_not_public_api() -> None:
    """The limiter and the bulkhead hold their cores: a user cannot call the bookkeeping (at
    eba41f1 ``Bulkhead.release()`` drove ``concurrent`` to -1 without an error)."""
    from dwcp_resilience import Bulkhead

    limiter = RateLimiter("l", rate=1, burst=1)
    for name in ("reserve", "grant_due", "abandon", "finish", "head", "reconfigure", "take"):
        assert not hasattr(limiter, name), name
    bulkhead = Bulkhead("b", max_concurrent=1)
    for name in ("release", "enqueue", "abandon", "resume", "try_enter", "exit", "reject"):
        assert not hasattr(bulkhead, name), name
    assert (bulkhead.available, bulkhead.statistics().concurrent) == (1, 0)
