"""Admission control: the rate limiter with plentiful tokens, the uncontended bulkhead, and a contended
throughput row (100 tasks x 1000 calls, an op that yields once), ours next to the peers.

Rows that need a coroutine of their own to express the idiom (``async with``, a check before the
await) carry one more frame than the baseline, and say so; ``call`` rows are timed as
``functools.partial(policy.call, op)`` and decorator rows as the decorated op, like the peers'
decorators.

Every limiter row is built with a rate no run can exhaust (1e9 tokens/s, a burst of 1e6), so each
call takes the "tokens are there" path; each bulkhead row has room for every call. Each ``verify``
proves the row does its job with a tight configuration: a limiter admits its burst and then refuses
(or makes the caller wait); a bulkhead of one lets no second call in while the first runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from typing import Any

import anyio

from dwcp_resilience import BulkheadFull, CircuitOpen, Pipeline, RateLimited
from dwcp_resilience.policies.bulkhead import Bulkhead
from dwcp_resilience.policies.ratelimit import RateLimiter

from ..harness import Call, Case, Contender, Op, yielding_op

RATE = 1e9
BURST = 1_000_000
TASKS = 100
CALLS = 1000

# -- rate limiter, tokens plentiful ------------------------------------------------------------


async def ours_call_make(op: Op) -> Call:
    limiter = RateLimiter("bench", rate=RATE, burst=BURST)
    return functools.partial(limiter.call, op)


async def ours_decorator_make(op: Op) -> Call:
    limiter = RateLimiter("bench", rate=RATE, burst=BURST)
    wrapped: Call = limiter(op)
    return wrapped


async def ours_cm_make(op: Op) -> Call:
    limiter = RateLimiter("bench", rate=RATE, burst=BURST)

    async def run() -> Any:
        async with limiter:
            return await op()

    return run


async def ours_try_make(op: Op) -> Call:
    limiter = RateLimiter("bench", rate=RATE, burst=BURST)
    try_acquire = limiter.try_acquire

    async def run() -> Any:
        if not try_acquire():
            raise RateLimited("bench")
        return await op()

    return run


async def ours_verify() -> None:
    limiter = RateLimiter("verify", rate=1, burst=3, max_wait=0)
    for _ in range(3):
        await limiter.call(asyncio.sleep, 0)
    try:
        await limiter.call(asyncio.sleep, 0)
    except RateLimited:
        pass
    else:
        raise AssertionError("limiter admitted past its burst")
    assert not limiter.try_acquire()
    waiting = RateLimiter("verify-wait", rate=50, burst=1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(3):
        async with waiting:
            pass
    assert loop.time() - start >= 2 / 50 - 2e-3, "limiter did not pace"


async def aiolimiter_make(op: Op) -> Call:
    from aiolimiter import AsyncLimiter

    limiter = AsyncLimiter(BURST, BURST / RATE)

    async def run() -> Any:
        async with limiter:
            return await op()

    return run


async def aiolimiter_verify() -> None:
    from aiolimiter import AsyncLimiter

    limiter = AsyncLimiter(3, 3600)
    for _ in range(3):
        async with limiter:
            pass
    assert not limiter.has_capacity()


async def limits_make(op: Op) -> Call:
    from limits import parse
    from limits.aio.storage import MemoryStorage
    from limits.aio.strategies import FixedWindowRateLimiter

    limiter = FixedWindowRateLimiter(MemoryStorage())
    item = parse(f"{int(RATE)}/second")
    hit = limiter.hit

    async def run() -> Any:
        if not await hit(item, "bench"):
            raise RateLimited("limits")
        return await op()

    return run


async def limits_verify() -> None:
    from limits import parse
    from limits.aio.storage import MemoryStorage
    from limits.aio.strategies import FixedWindowRateLimiter

    limiter = FixedWindowRateLimiter(MemoryStorage())
    item = parse("3/hour")
    assert [await limiter.hit(item, "v") for _ in range(4)] == [True, True, True, False]


def _pyrate(rate: int, burst: int) -> Any:
    from pyrate_limiter import Duration
    from pyrate_limiter.limiter_factory import create_token_bucket_limiter

    return create_token_bucket_limiter(rate, Duration.SECOND, burst=burst)


async def pyrate_sync_make(op: Op) -> Call:
    limiter = _pyrate(int(RATE), BURST)
    try_acquire = limiter.try_acquire

    async def run() -> Any:
        if not try_acquire("bench", blocking=False):
            raise RateLimited("pyrate")
        return await op()

    return run


async def pyrate_async_make(op: Op) -> Call:
    limiter = _pyrate(int(RATE), BURST)
    try_acquire = limiter.try_acquire_async

    async def run() -> Any:
        if not await try_acquire("bench", blocking=False):
            raise RateLimited("pyrate")
        return await op()

    return run


async def pyrate_verify() -> None:
    limiter = _pyrate(1, 3)
    results = [limiter.try_acquire("v", blocking=False) for _ in range(4)]
    assert results[:3] == [True] * 3 and results[3] is False, results


async def hyx_limiter_make(op: Op) -> Call:
    from hyx.ratelimit import tokenbucket

    decorator: Any = tokenbucket(max_executions=RATE, per_time_secs=1, bucket_size=BURST)
    wrapped: Call = decorator(op)
    return wrapped


async def hyx_limiter_verify() -> None:
    from hyx.ratelimit import tokenbucket
    from hyx.ratelimit.exceptions import RateLimitExceeded

    decorator: Any = tokenbucket(max_executions=3, per_time_secs=3600, bucket_size=3)
    wrapped = decorator(asyncio.sleep)
    for _ in range(3):
        await wrapped(0)
    try:
        await wrapped(0)
    except RateLimitExceeded:
        return
    raise AssertionError("hyx tokenbucket admitted past its bucket")


# -- bulkhead, uncontended ---------------------------------------------------------------------


async def _check_exclusive(enter: Any) -> None:
    """With capacity 1, a second entrant must not run while the first holds the permit."""
    inside = 0
    peak = 0

    async def worker() -> None:
        nonlocal inside, peak
        try:
            async with enter():
                inside += 1
                peak = max(peak, inside)
                await asyncio.sleep(0.002)
                inside -= 1
        except (BulkheadFull, Exception) as exc:  # rejected instead of queued: also fine
            if type(exc).__name__ not in {"BulkheadFull", "MaxCapacityExceeded"}:
                raise

    await asyncio.gather(*(worker() for _ in range(3)))
    assert peak == 1, peak


async def ours_bh_call_make(op: Op) -> Call:
    bulkhead = Bulkhead("bench", max_concurrent=10)
    return functools.partial(bulkhead.call, op)


async def ours_bh_decorator_make(op: Op) -> Call:
    bulkhead = Bulkhead("bench", max_concurrent=10)
    wrapped: Call = bulkhead(op)
    return wrapped


async def ours_bh_cm_make(op: Op) -> Call:
    bulkhead = Bulkhead("bench", max_concurrent=10)

    async def run() -> Any:
        async with bulkhead:
            return await op()

    return run


async def ours_bh_verify() -> None:
    queued = Bulkhead("verify", max_concurrent=1, max_queue=5)
    await _check_exclusive(lambda: queued)
    rejecting = Bulkhead("verify", max_concurrent=1)
    await _check_exclusive(lambda: rejecting)
    assert rejecting.statistics().rejected == 2


async def semaphore_make(op: Op) -> Call:
    semaphore = asyncio.Semaphore(10)

    async def run() -> Any:
        async with semaphore:
            return await op()

    return run


async def semaphore_verify() -> None:
    semaphore = asyncio.Semaphore(1)
    await _check_exclusive(lambda: semaphore)


async def capacity_make(op: Op) -> Call:
    limiter = anyio.CapacityLimiter(10)

    async def run() -> Any:
        async with limiter:
            return await op()

    return run


async def capacity_verify() -> None:
    limiter = anyio.CapacityLimiter(1)
    await _check_exclusive(lambda: limiter)


async def hyx_bh_make(op: Op) -> Call:
    from hyx.bulkhead import bulkhead

    decorator: Any = bulkhead(max_concurrency=10, max_capacity=20)
    wrapped: Call = decorator(op)
    return wrapped


async def hyx_bh_verify() -> None:
    from hyx.bulkhead import bulkhead

    guard: Any = bulkhead(max_concurrency=1, max_capacity=3)
    await _check_exclusive(lambda: guard)


# -- contended throughput ----------------------------------------------------------------------


async def measure_contended(call: Call) -> float:
    """Seconds per call with TASKS tasks each making CALLS sequential calls."""

    async def worker() -> None:
        for _ in range(CALLS):
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(TASKS)))
    return (time.perf_counter() - start) / (TASKS * CALLS)


def _breaker() -> Any:
    try:
        from dwcp_resilience.policies.breaker import CircuitBreaker
    except ImportError:  # pragma: no cover - the breaker lands in its own issue
        return None
    return CircuitBreaker("bench", max_failures=5, reset_timeout=3600.0)


async def ours_pair_make(op: Op) -> Call:
    """The pair as a user writes it: ``Pipeline(breaker, limiter)``, fused into one frame."""
    breaker = _breaker()
    limiter = RateLimiter("bench", rate=RATE, burst=BURST)
    if breaker is None:
        return functools.partial(limiter.call, op)
    return functools.partial(Pipeline(breaker, limiter, name="bench").call, op)


async def ours_pair_chained_make(op: Op) -> Call:
    """The pair chained by hand, unfused: the breaker's frame awaits ``limiter.call(op)``."""
    breaker = _breaker()
    limiter = RateLimiter("bench", rate=RATE, burst=BURST)
    if breaker is None:
        return functools.partial(limiter.call, op)
    return functools.partial(breaker.call, limiter.call, op)


async def ours_pair_verify() -> None:
    """The fused pair admits through both, refuses past the burst, and the breaker still trips."""
    from dwcp_resilience.policies.breaker import CircuitBreaker

    breaker = CircuitBreaker("verify", max_failures=2, reset_timeout=3600.0)
    limiter = RateLimiter("verify", rate=1, burst=3, max_wait=0)
    pair = Pipeline(breaker, limiter, name="verify")
    for _ in range(3):
        await pair.call(asyncio.sleep, 0)
    try:
        await pair.call(asyncio.sleep, 0)
    except RateLimited:
        pass
    else:
        raise AssertionError("fused pair admitted past the burst")
    stats = breaker.statistics()
    assert stats.successes == 3 and stats.ignored == 1 and stats.failures == 0, stats

    async def fail() -> None:
        raise ConnectionError

    roomy = Pipeline(breaker, RateLimiter("roomy", rate=RATE, burst=BURST), name="roomy")
    for _ in range(2):
        with contextlib.suppress(ConnectionError):
            await roomy.call(fail)
    try:
        await roomy.call(asyncio.sleep, 0)
    except CircuitOpen:
        return
    raise AssertionError("fused breaker did not trip")


async def ours_limiter_only_make(op: Op) -> Call:
    return await ours_call_make(op)


async def ours_bulkhead_make(op: Op) -> Call:
    bulkhead = Bulkhead("bench", max_concurrent=TASKS)
    return functools.partial(bulkhead.call, op)


async def hyx_pair_make(op: Op) -> Call:
    from hyx.circuitbreaker import consecutive_breaker
    from hyx.ratelimit import tokenbucket

    limiter: Any = tokenbucket(max_executions=RATE, per_time_secs=1, bucket_size=BURST)
    breaker: Any = consecutive_breaker(failure_threshold=5, recovery_time_secs=3600)
    wrapped: Call = breaker(limiter(op))
    return wrapped


_PAIR_NAME = "dwcp_resilience Pipeline(CircuitBreaker, RateLimiter).call (fused)"

CASES = [
    Case(
        key="ratelimit",
        title="rate limiter, tokens plentiful (never waits)",
        contenders=[
            Contender("dwcp_resilience RateLimiter.call", ours_call_make, ours_verify, ours=True),
            Contender("dwcp_resilience @RateLimiter", ours_decorator_make, ours=True),
            Contender(
                "dwcp_resilience `async with RateLimiter` (+ a run() frame)",
                ours_cm_make,
                ours=True,
            ),
            Contender(
                "dwcp_resilience try_acquire() + await op() (+ a run() frame)",
                ours_try_make,
                ours=True,
            ),
            Contender("aiolimiter `async with AsyncLimiter`", aiolimiter_make, aiolimiter_verify),
            Contender("limits fixed window (aio MemoryStorage, hit())", limits_make, limits_verify),
            Contender(
                "pyrate-limiter token bucket try_acquire(blocking=False)",
                pyrate_sync_make,
                pyrate_verify,
            ),
            Contender(
                "pyrate-limiter token bucket await try_acquire_async()",
                pyrate_async_make,
                pyrate_verify,
            ),
            Contender("hyx @tokenbucket", hyx_limiter_make, hyx_limiter_verify),
        ],
    ),
    Case(
        key="bulkhead",
        title="bulkhead, uncontended (a free permit every time)",
        contenders=[
            Contender(
                "dwcp_resilience Bulkhead.call", ours_bh_call_make, ours_bh_verify, ours=True
            ),
            Contender("dwcp_resilience @Bulkhead", ours_bh_decorator_make, ours=True),
            Contender(
                "dwcp_resilience `async with Bulkhead` (+ a run() frame)",
                ours_bh_cm_make,
                ours=True,
            ),
            Contender("asyncio.Semaphore `async with`", semaphore_make, semaphore_verify),
            Contender("anyio.CapacityLimiter `async with`", capacity_make, capacity_verify),
            Contender("hyx @bulkhead", hyx_bh_make, hyx_bh_verify),
        ],
    ),
    Case(
        key="admission_contended",
        title=f"{TASKS} tasks x {CALLS} calls, op yields once (asyncio.sleep(0)): time per call",
        note=(
            "Ratio = time per call over the bare yielding op's; throughput is its inverse "
            "(1.18x = 85 %)."
        ),
        op=yielding_op,
        measure=measure_contended,
        contenders=[
            Contender(_PAIR_NAME, ours_pair_make, ours_pair_verify, ours=True),
            Contender(
                "dwcp_resilience CircuitBreaker.call > RateLimiter.call (hand-chained)",
                ours_pair_chained_make,
                ours=True,
            ),
            Contender("dwcp_resilience RateLimiter.call", ours_limiter_only_make, ours=True),
            Contender("dwcp_resilience Bulkhead.call", ours_bulkhead_make, ours=True),
            Contender("hyx consecutive_breaker + tokenbucket", hyx_pair_make),
        ],
    ),
]
