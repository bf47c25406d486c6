"""The full stack: retry > breaker > rate limiter > timeout > bulkhead > op, ours next to peer stacks.

The peer rows are the stacks of ``shared/reference/peer-overhead.md`` case h (resilience4j's aspect
order): hyx's five decorators, the "fast picks" mix (backoff > circuitbreaker > hyx tokenbucket >
asyncio.timeout > asyncio.Semaphore) and the "best-of-breed" mix (tenacity > purgatory > aiolimiter
> asyncio.timeout > asyncio.Semaphore). Ours run the same five layers as a ``Pipeline`` in that
order, and as ``ResilienceManager.execute_with_all_protections`` in the manager's own order
(bulkhead > retry > breaker > limiter > attempt timeout), with and without an error budget and a
latency budget recorded per call.

Settings never trip: breakers at 5 failures and a 3600 s reset, limiters at 1e9/s, timeouts of 1 s,
bulkheads of 100; every ``verify`` proves a callee that fails once is retried and succeeds (2 calls).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Callable
from typing import Any

from dwcp_resilience import (
    Bulkhead,
    CircuitBreaker,
    ConstantBackoff,
    OperationContext,
    Pipeline,
    RateLimiter,
    ResilienceManager,
    Retry,
    Timeout,
)

from ..harness import Call, Case, Contender, Op

RATE = 1e9
BURST = 1_000_000
_names = itertools.count()


class _Flaky:
    """Fails with ConnectionError on the first call, then succeeds; counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, *args: Any) -> str:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("first call fails")
        return "ok"


async def _check(make: Callable[[Op], Any]) -> None:
    flaky = _Flaky()
    call = await make(flaky)
    assert await call() == "ok", "stack did not return the result"
    assert flaky.calls == 2, f"expected one retry, saw {flaky.calls} calls"


# -- ours ------------------------------------------------------------------------------------------


def _pipeline(delay: float) -> Pipeline:
    return Pipeline(
        Retry("s", max_retries=2, backoff=ConstantBackoff(delay), retry_on=ConnectionError),
        CircuitBreaker("s", max_failures=5, reset_timeout=3600.0),
        RateLimiter("s", rate=RATE, burst=BURST),
        Timeout(1.0),
        Bulkhead("s", max_concurrent=100),
        name="stack",
    )


async def ours_pipeline_make(op: Op) -> Call:
    return functools.partial(_pipeline(0.01).call, op)


async def ours_pipeline_verify() -> None:
    async def make(op: Op) -> Call:
        return functools.partial(_pipeline(0.001).call, op)

    await _check(make)


def _manager(budgets: bool, delay: float) -> ResilienceManager:
    rm = ResilienceManager(f"bench{next(_names)}")
    rm.register_bulkhead("op", 100)
    rm.register(
        "op", Retry("op", max_retries=2, backoff=ConstantBackoff(delay), retry_on=ConnectionError)
    )
    rm.register_circuit_breaker("op", max_failures=5, timeout=1.0, reset_timeout=3600.0)
    rm.register_rate_limiter("op", RATE, BURST)
    if budgets:
        rm.register_error_budget("op", 0.999, 3600.0)
        rm.register_latency_budget("op", 0.1)
    return rm


def _manager_make(budgets: bool) -> Callable[[Op], Any]:
    async def make(op: Op) -> Call:
        rm = _manager(budgets, 0.01)
        ctx = OperationContext("op")

        async def wrapped(_: OperationContext) -> Any:
            return await op()

        return functools.partial(rm.execute_with_all_protections, ctx, wrapped)

    return make


def _manager_verify(budgets: bool) -> Callable[[], Any]:
    async def verify() -> None:
        async def make(op: Op) -> Call:
            rm = _manager(budgets, 0.001)

            async def wrapped(_: OperationContext) -> Any:
                return await op()

            return functools.partial(rm.execute_with_all_protections, "op", wrapped)

        await _check(make)

    return verify


# -- peers -----------------------------------------------------------------------------------------


def _hyx_stack(op: Op, delay: float) -> Call:
    from hyx.bulkhead import bulkhead
    from hyx.circuitbreaker import consecutive_breaker
    from hyx.ratelimit import tokenbucket
    from hyx.retry import retry
    from hyx.retry.backoffs import expo
    from hyx.timeout import timeout

    layers: list[Any] = [
        retry(
            on=ConnectionError, attempts=2, backoff=expo(min_delay_secs=delay, max_delay_secs=delay)
        ),
        consecutive_breaker(failure_threshold=5, recovery_time_secs=3600),
        tokenbucket(max_executions=RATE, per_time_secs=1, bucket_size=BURST),
        timeout(1.0),
        bulkhead(max_concurrency=100, max_capacity=1000),
    ]
    wrapped: Any = op
    for layer in reversed(layers):
        wrapped = layer(wrapped)
    result: Call = wrapped
    return result


async def hyx_make(op: Op) -> Call:
    return _hyx_stack(op, 0.01)


async def hyx_verify() -> None:
    async def make(op: Op) -> Call:
        return _hyx_stack(op, 0.001)

    await _check(make)


def _fast_picks(op: Op, delay: float) -> Call:
    import backoff
    from circuitbreaker import CircuitBreaker as Peer
    from hyx.ratelimit import tokenbucket

    semaphore = asyncio.Semaphore(100)

    async def guarded() -> Any:
        async with asyncio.timeout(1.0), semaphore:
            return await op()

    limited: Any = tokenbucket(max_executions=RATE, per_time_secs=1, bucket_size=BURST)(guarded)
    broken: Any = Peer(failure_threshold=5, recovery_timeout=3600, name=f"f{next(_names)}")(limited)
    retried: Call = backoff.on_exception(
        backoff.constant, ConnectionError, max_tries=3, interval=delay, jitter=None
    )(broken)
    return retried


async def fast_picks_make(op: Op) -> Call:
    return _fast_picks(op, 0.01)


async def fast_picks_verify() -> None:
    async def make(op: Op) -> Call:
        return _fast_picks(op, 0.001)

    await _check(make)


def _best_of_breed(op: Op, delay: float) -> Call:
    import tenacity
    from aiolimiter import AsyncLimiter
    from purgatory import AsyncCircuitBreakerFactory

    semaphore = asyncio.Semaphore(100)
    limiter = AsyncLimiter(BURST, BURST / RATE)

    async def guarded() -> Any:
        async with limiter, asyncio.timeout(1.0), semaphore:
            return await op()

    factory = AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=3600)
    broken: Any = factory(f"b{next(_names)}")(guarded)
    retried: Call = tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_fixed(delay),
        retry=tenacity.retry_if_exception_type(ConnectionError),
        reraise=True,
    )(broken)
    return retried


async def best_make(op: Op) -> Call:
    return _best_of_breed(op, 0.01)


async def best_verify() -> None:
    async def make(op: Op) -> Call:
        return _best_of_breed(op, 0.001)

    await _check(make)


CASES = [
    Case(
        key="stack",
        title="full stack: retry > breaker > rate limit > timeout > bulkhead > op (no-op callee)",
        contenders=[
            Contender(
                "dwcp_resilience Pipeline (same order)",
                ours_pipeline_make,
                ours_pipeline_verify,
                ours=True,
            ),
            Contender(
                "dwcp_resilience execute_with_all_protections",
                _manager_make(False),
                _manager_verify(False),
                ours=True,
            ),
            Contender(
                "dwcp_resilience execute_with_all_protections + budgets",
                _manager_make(True),
                _manager_verify(True),
                ours=True,
            ),
            Contender(
                "hyx: @retry @consecutive_breaker @tokenbucket @timeout @bulkhead",
                hyx_make,
                hyx_verify,
            ),
            Contender(
                "fast picks: backoff > circuitbreaker > hyx tokenbucket > asyncio.timeout > "
                "Semaphore",
                fast_picks_make,
                fast_picks_verify,
            ),
            Contender(
                "best-of-breed: tenacity > purgatory > aiolimiter > asyncio.timeout > Semaphore",
                best_make,
                best_verify,
            ),
        ],
    )
]
