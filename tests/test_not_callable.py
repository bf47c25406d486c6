"""A coroutine object handed where a function belongs (``call(fn(x))`` for ``call(fn, x)``).

Every entry point refuses it with :class:`NotCallable` (a ``TypeError``) before it admits, counts or
retries anything, and closes the coroutine, so Python never warns that it was never awaited (the
suite runs with ``-W error``, and each test also checks the coroutine's state). Composed policies
(Pipeline, the manager's stacks) never count it as a failure and never retry it.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from dwcp_resilience import (
    AdaptiveConcurrencyLimiter,
    AdaptiveThrottle,
    Bulkhead,
    Chaos,
    CircuitBreaker,
    KeyedRateLimiter,
    LoadShedder,
    NotCallable,
    OperationContext,
    Pipeline,
    RateLimiter,
    ResilienceManager,
    Retry,
    RetryGaveUp,
    Timeout,
)
from dwcp_resilience.core.outcome import Classifier, Outcome
from dwcp_resilience.policies.adaptive import AdaptiveRateLimiter
from dwcp_resilience.testing import RecordingListener

pytestmark = pytest.mark.anyio

calls = 0


async def work(x: int = 1) -> int:
    global calls
    calls += 1
    return x


def coroutine() -> Coroutine[Any, Any, int]:
    return work(2)


def assert_refused(
    error: pytest.ExceptionInfo[NotCallable], coro: Coroutine[Any, Any, int]
) -> None:
    assert isinstance(error.value, TypeError)
    assert "call(fn, *args), not call(fn(*args))" in str(error.value)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


def entry_points() -> dict[str, Callable[[object], Awaitable[object]]]:
    """Each public ``call``, fed the object under test in the position of ``fn``."""
    keyed = KeyedRateLimiter("k", rate=10, burst=2)
    return {
        "CircuitBreaker": CircuitBreaker("b").call,  # type: ignore[dict-item]
        "CircuitBreaker(timeout)": CircuitBreaker("bt", timeout=1.0).call,  # type: ignore[dict-item]
        "Retry": Retry("r", retry_on=Exception).call,  # type: ignore[dict-item]
        "RateLimiter": RateLimiter("l", rate=10, burst=2).call,  # type: ignore[dict-item]
        "AdaptiveRateLimiter": AdaptiveRateLimiter(
            "a", initial_rate=10, min_rate=1, max_rate=100, target_latency=0.1
        ).call,  # type: ignore[dict-item]
        "KeyedRateLimiter": lambda fn: keyed.call("key", fn),  # type: ignore[arg-type]
        "Bulkhead": Bulkhead("h", max_concurrent=1).call,  # type: ignore[dict-item]
        "AdaptiveConcurrencyLimiter": AdaptiveConcurrencyLimiter("ac").call,  # type: ignore[dict-item]
        "AdaptiveThrottle": AdaptiveThrottle("at").call,  # type: ignore[dict-item]
        "Timeout": Timeout(1.0).call,  # type: ignore[dict-item]
        "Chaos": Chaos("c", rate=0.0).call,  # type: ignore[dict-item]
        "LoadShedder": LoadShedder("s", max_load=1.0).call,  # type: ignore[dict-item]
        "Pipeline": Pipeline(Retry("pr", retry_on=Exception), CircuitBreaker("pb"), name="p").call,  # type: ignore[dict-item]
        "Pipeline(fused)": Pipeline(
            CircuitBreaker("fb"), RateLimiter("fl", rate=10, burst=2), name="f"
        ).call,  # type: ignore[dict-item]
    }


@pytest.mark.parametrize("entry", sorted(entry_points()))
async def test_every_call_refuses_a_coroutine_object_and_closes_it(entry: str) -> None:
    call = entry_points()[entry]
    before = calls
    coro = coroutine()
    with pytest.raises(NotCallable) as error:
        await call(coro)
    assert_refused(error, coro)
    assert calls == before


@pytest.mark.parametrize("entry", sorted(entry_points()))
async def test_every_call_refuses_other_non_callables(entry: str) -> None:
    with pytest.raises(NotCallable, match="got a int object"):
        await entry_points()[entry](42)


def test_every_decorator_refuses_a_coroutine_object_at_decoration() -> None:
    policies: list[Any] = [
        CircuitBreaker("b"),
        Retry("r"),
        RateLimiter("l", rate=10, burst=2),
        Bulkhead("h", max_concurrent=1),
        AdaptiveConcurrencyLimiter("ac"),
        AdaptiveThrottle("at"),
        Timeout(1.0),
        Chaos("c", rate=0.0),
        Pipeline(Retry("pr"), CircuitBreaker("pb"), name="p"),
    ]
    for policy in policies:
        coro = coroutine()
        with pytest.raises(NotCallable) as error:
            policy(coro)
        assert_refused(error, coro)


def test_a_decorator_still_refuses_a_plain_function() -> None:
    def plain() -> int:
        return 1

    with pytest.raises(TypeError, match="needs an async def") as error:
        CircuitBreaker("b")(plain)  # type: ignore[arg-type]
    assert not isinstance(error.value, NotCallable)


async def test_an_open_breaker_refuses_it_as_not_callable_not_as_open() -> None:
    breaker = CircuitBreaker("b")
    breaker.force_open()
    coro = coroutine()
    with pytest.raises(NotCallable) as error:
        await breaker.call(coro)  # type: ignore[arg-type]
    assert_refused(error, coro)
    assert breaker.statistics().rejected == 0


async def test_a_closed_breaker_does_not_count_it() -> None:
    breaker = CircuitBreaker("b", max_failures=1)
    for _ in range(3):
        with pytest.raises(NotCallable):
            await breaker.call(coroutine())  # type: ignore[arg-type]
    stats = breaker.statistics()
    assert (stats.admitted, stats.failures, stats.successes) == (0, 0, 0)
    assert await breaker.call(work, 5) == 5  # still closed


async def test_a_retry_around_a_refusing_policy_does_not_retry() -> None:
    listener: RecordingListener[Any] = RecordingListener()
    retry = Retry("r", retry_on=Exception, listeners=[listener])
    breaker = CircuitBreaker("b", max_failures=1)
    coro = coroutine()
    with pytest.raises(NotCallable):
        await retry.call(breaker.call, coro)  # type: ignore[arg-type]
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    (event,) = listener.events  # no retry scheduled: it gave up after the first attempt
    assert isinstance(event, RetryGaveUp)
    assert (event.attempt, event.reason) == (1, "not_retryable")
    assert breaker.statistics().failures == 0


async def test_the_limiter_and_the_bulkhead_keep_their_tokens_and_permits() -> None:
    limiter = RateLimiter("l", rate=1, burst=1)
    bulkhead = Bulkhead("h", max_concurrent=1)
    with pytest.raises(NotCallable):
        await limiter.call(coroutine())  # type: ignore[arg-type]
    with pytest.raises(NotCallable):
        await bulkhead.call(coroutine())  # type: ignore[arg-type]
    assert limiter.try_acquire()  # the one token is still there
    assert bulkhead.statistics().concurrent == 0
    assert bulkhead.statistics().admitted == 0


async def test_the_manager_refuses_it_and_records_nothing() -> None:
    rm = ResilienceManager("m")
    rm.register_circuit_breaker("op", max_failures=1)
    rm.register_retry_policy("op", max_retries=3, retry_on=Exception)
    rm.register_error_budget("op", slo=0.99)
    coro = coroutine()
    with pytest.raises(NotCallable) as error:
        await rm.execute_with_all_protections(OperationContext("op"), coro)  # type: ignore[arg-type]
    assert_refused(error, coro)
    breaker = rm.circuit_breaker("op")
    assert breaker is not None
    assert breaker.statistics().failures == 0


def test_the_classifier_calls_it_neutral() -> None:
    classifier = Classifier(Exception)
    assert classifier.of_exception(NotCallable(object())) is Outcome.NEUTRAL
    assert classifier.of_exception(TypeError("a real bug")) is Outcome.FAILURE
