"""The adaptive concurrency limiter and the adaptive throttle, uncontended, against a bare await.

No library in the lock has an equivalent (hyx, aiolimiter, limits, pyrate-limiter, the breakers and
retries have no latency-driven limit and no client-side throttling; aioresilience's AIMD limiter,
listed in the peer survey, is not in the lock), so the reference rows are ours and the standard
library's: the plain ``Bulkhead`` that the limiter resizes, and an ``asyncio.Semaphore``.

Every limiter row admits at once (the limit is far above the one call in flight), takes its two
clock readings and its sample (a window's update once per second of the run); every throttle row
sees a backend that accepts everything, so its probability stays 0 (one clock reading, no random
draw). Each ``verify`` proves the row does its job with a tight configuration.
"""

from __future__ import annotations

import asyncio
import functools
import random
from typing import Any

from dwcp_resilience import (
    AIMD,
    AdaptiveConcurrencyLimiter,
    AdaptiveThrottle,
    Bulkhead,
    ConcurrencyLimited,
    Throttled,
)

from ..harness import Call, Case, Contender, Op


def _limiter() -> AdaptiveConcurrencyLimiter:
    return AdaptiveConcurrencyLimiter("bench", initial_limit=100, rng=random.Random(0))


async def limiter_call_make(op: Op) -> Call:
    return functools.partial(_limiter().call, op)


async def limiter_decorator_make(op: Op) -> Call:
    wrapped: Call = _limiter()(op)
    return wrapped


async def limiter_cm_make(op: Op) -> Call:
    limiter = _limiter()

    async def run() -> Any:
        async with limiter:
            return await op()

    return run


async def limiter_verify() -> None:
    """A limit of one admits one call at a time; a slow window lowers an AIMD limit."""
    one = AdaptiveConcurrencyLimiter("verify", initial_limit=1, max_limit=1)
    async with one:
        try:
            await one.call(asyncio.sleep, 0)
        except ConcurrencyLimited:
            pass
        else:
            raise AssertionError("limiter admitted past its limit")
    aimd = AdaptiveConcurrencyLimiter(
        "verify", algorithm=AIMD(latency_threshold=0.001), window=0.0, min_samples=1
    )
    await aimd.call(asyncio.sleep, 0.002)
    assert aimd.limit < 20, aimd.limit


async def bulkhead_make(op: Op) -> Call:
    return functools.partial(Bulkhead("bench", max_concurrent=100).call, op)


async def semaphore_make(op: Op) -> Call:
    semaphore = asyncio.Semaphore(100)

    async def run() -> Any:
        async with semaphore:
            return await op()

    return run


def _throttle() -> AdaptiveThrottle:
    return AdaptiveThrottle("bench", rng=random.Random(0))


async def throttle_call_make(op: Op) -> Call:
    return functools.partial(_throttle().call, op)


async def throttle_decorator_make(op: Op) -> Call:
    wrapped: Call = _throttle()(op)
    return wrapped


async def throttle_cm_make(op: Op) -> Call:
    throttle = _throttle()

    async def run() -> Any:
        async with throttle:
            return await op()

    return run


async def throttle_permit_make(op: Op) -> Call:
    acquire = _throttle().acquire

    async def run() -> Any:
        permit = acquire()
        result = await op()
        permit.record(True)
        return result

    return run


async def throttle_verify() -> None:
    """A backend that refuses everything gets refused locally after a few calls."""
    throttle = AdaptiveThrottle("verify", rng=random.Random(1))

    async def refuse() -> None:
        raise ConnectionRefusedError

    throttled = 0
    for _ in range(50):
        try:
            await throttle.call(refuse)
        except ConnectionRefusedError:
            pass
        except Throttled:
            throttled += 1
    assert throttled > 25, throttled


CASES = [
    Case(
        key="adaptive_concurrency",
        title="adaptive concurrency limiter, uncontended (limit far above the load)",
        contenders=[
            Contender(
                "dwcp_resilience AdaptiveConcurrencyLimiter.call",
                limiter_call_make,
                limiter_verify,
                ours=True,
            ),
            Contender(
                "dwcp_resilience @AdaptiveConcurrencyLimiter", limiter_decorator_make, ours=True
            ),
            Contender(
                "dwcp_resilience `async with AdaptiveConcurrencyLimiter` (+ a run() frame)",
                limiter_cm_make,
                ours=True,
            ),
            Contender("dwcp_resilience Bulkhead.call (reference)", bulkhead_make, ours=True),
            Contender("asyncio.Semaphore `async with`", semaphore_make),
        ],
    ),
    Case(
        key="adaptive_throttle",
        title="adaptive throttle, healthy backend (probability 0)",
        contenders=[
            Contender(
                "dwcp_resilience AdaptiveThrottle.call",
                throttle_call_make,
                throttle_verify,
                ours=True,
            ),
            Contender("dwcp_resilience @AdaptiveThrottle", throttle_decorator_make, ours=True),
            Contender(
                "dwcp_resilience `async with AdaptiveThrottle` (+ a run() frame)",
                throttle_cm_make,
                ours=True,
            ),
            Contender(
                "dwcp_resilience acquire() + await op() + record() (+ a run() frame)",
                throttle_permit_make,
                ours=True,
            ),
        ],
    ),
]
