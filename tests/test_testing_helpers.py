"""dwcp_resilience.testing beyond FakeClock: a clean state for module-level policies between event
loops (issue 17: a breaker reported ``retry_after=1060.0`` in the second virtual-time test),
run_virtual inside a running loop, anyio_backends without trio, RecordingListener.of_type."""

from __future__ import annotations

import asyncio
import math
import random
import sys
from typing import Any, assert_type

import anyio
import pytest
from helpers import wait_until

from dwcp_resilience import (
    CircuitBreaker,
    CircuitOpen,
    RateLimiter,
    Retry,
    RetryEvent,
    RetryGaveUp,
    RetryScheduled,
    TimeWindow,
)
from dwcp_resilience.policies.backoff import ConstantBackoff
from dwcp_resilience.testing import (
    FakeClock,
    KneeBackend,
    RecordingListener,
    anyio_backends,
    reset_policies,
    run_virtual,
)

BACKENDS = ["asyncio", "trio"]


async def _down() -> None:
    raise ConnectionError("down")


async def _trip(breaker: CircuitBreaker) -> float:
    """Trip a max_failures=1 breaker; the retry_after of the next call."""
    with pytest.raises(ConnectionError):
        await breaker.call(_down)
    with pytest.raises(CircuitOpen) as refused:
        await breaker.call(_down)
    retry_after = refused.value.retry_after
    assert retry_after is not None
    return retry_after


class ModulePolicies:
    """Module-level policies, used in one loop and then in the next."""

    def __init__(self) -> None:
        self.breaker = CircuitBreaker("b", max_failures=1, reset_timeout=60.0)
        self.limiter = RateLimiter("l", rate=1.0, burst=2)

    async def first_test(self) -> None:
        await anyio.sleep(1000)  # the first loop's clock reads 1000 when they are used
        assert await _trip(self.breaker) == pytest.approx(60.0, abs=1e-3)
        assert self.limiter.try_acquire(2)

    async def second_test(self) -> tuple[float, bool]:
        """A new loop, its clock from 0: what the breaker and the limiter tell it."""
        assert anyio.current_time() < 1
        retry_after = 0.0
        try:
            retry_after = await _trip(self.breaker)
        except CircuitOpen as still_open:
            assert still_open.retry_after is not None
            retry_after = still_open.retry_after
        return retry_after, self.limiter.try_acquire(2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reset_policies_gives_module_level_policies_a_clean_state(backend: str) -> None:
    policies = ModulePolicies()
    run_virtual(policies.first_test, backend=backend)
    reset_policies(policies.breaker, policies.limiter)
    retry_after, took = run_virtual(policies.second_test, backend=backend)
    assert retry_after == pytest.approx(60.0, abs=1e-3)  # this loop's open period, not 1060
    assert took  # a full bucket at once
    stats = policies.limiter.statistics()
    assert (stats.allowed, stats.rejected) == (2, 0)  # counters are kept, like the metrics'


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_a_reset_the_next_loop_sees_the_last_ones_clock(backend: str) -> None:
    """The bug the reset fixes (a control): a breaker still open until 1060 of the old clock, and a
    bucket that reads the new clock's 0 as a step back to 1000 (no refill)."""
    policies = ModulePolicies()
    run_virtual(policies.first_test, backend=backend)
    retry_after, took = run_virtual(policies.second_test, backend=backend)
    assert retry_after == pytest.approx(1060.0, abs=1e-3)
    assert not took


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_reset_time_window_forgets_the_last_loops_clock(backend: str) -> None:
    """A breaker's time window kept its newest bucket's index across reset(): a new loop's failures
    were filed under the old clock's time and did not expire until the new clock got there."""
    breaker = CircuitBreaker(
        "w", max_failures=None, window=TimeWindow(10.0), minimum_calls=5, reset_timeout=60.0
    )

    async def fail_once() -> None:
        with pytest.raises(ConnectionError):
            await breaker.call(_down)

    async def first() -> None:
        await anyio.sleep(1000)
        await fail_once()

    async def second() -> int:
        await fail_once()
        assert breaker.statistics().window_calls == 1
        await anyio.sleep(20)  # twice the window
        return breaker.statistics().window_calls

    run_virtual(first, backend=backend)
    breaker.reset()
    assert run_virtual(second, backend=backend) == 0


def test_rate_limiter_reset_refuses_while_requests_wait() -> None:
    clock = FakeClock(0.0)
    limiter = RateLimiter("l", rate=1, burst=1, clock=clock)

    async def main() -> None:
        assert limiter.try_acquire()
        async with anyio.create_task_group() as group:
            group.start_soon(limiter.acquire)
            await wait_until(lambda: limiter.waiting == 1)
            with pytest.raises(RuntimeError, match="1 requests waiting"):
                limiter.reset()
            clock.advance(1.0)
        limiter.reset()
        assert limiter.try_acquire() and not limiter.try_acquire()

    run_virtual(main)


def test_reset_policies_checks_every_policy_first() -> None:
    breaker = CircuitBreaker("b", max_failures=1)
    breaker.force_open()
    with pytest.raises(TypeError, match="has no reset"):
        reset_policies(breaker, object())  # type: ignore[arg-type]
    assert breaker.statistics().forced_open  # nothing was reset
    reset_policies(breaker)
    assert not breaker.statistics().forced_open


def test_run_virtual_inside_a_running_loop_says_what_to_do_instead() -> None:
    async def nothing() -> None:
        return None

    async def inside() -> str:
        with pytest.raises(RuntimeError, match="resilience_virtual_time") as refused:
            run_virtual(nothing)
        return str(refused.value)

    assert "already runs asyncio" in asyncio.run(inside())
    assert "already runs trio" in run_virtual(inside, backend="trio")
    with pytest.raises(ValueError, match="backend"):
        run_virtual(nothing, backend="curio")


def test_anyio_backends_without_trio_or_looptime(monkeypatch: pytest.MonkeyPatch) -> None:
    """The testing extra brings looptime, not trio: anyio_backends() then offers what is there."""
    names = [name for name, _ in anyio_backends(uvloop=False)]
    assert names == ["asyncio", "trio"]
    monkeypatch.setitem(sys.modules, "trio", None)
    monkeypatch.setitem(sys.modules, "trio.testing", None)
    backends: list[tuple[str, dict[str, Any]]] = anyio_backends(uvloop=False)
    assert [name for name, _ in backends] == ["asyncio"]
    monkeypatch.setitem(sys.modules, "looptime", None)
    with pytest.raises(ImportError, match=r"dwcp-resilience\[testing\]"):
        anyio_backends()


def test_recording_listener_of_type_filters_by_the_kind_asked() -> None:
    listener: RecordingListener[RetryEvent] = RecordingListener()
    retry = Retry("r", max_retries=1, backoff=ConstantBackoff(0.0), listeners=[listener])

    async def main() -> None:
        with pytest.raises(ConnectionError):
            await retry.call(_down)

    run_virtual(main)
    scheduled = listener.of_type(RetryScheduled)
    gave_up = listener.of_type(RetryGaveUp)
    assert_type(scheduled, list[RetryScheduled])  # mypy --strict checks this file
    assert_type(gave_up, list[RetryGaveUp])
    assert [type(e) for e in listener.events] == [RetryScheduled, RetryGaveUp]
    assert scheduled == listener.events[:1] and gave_up == listener.events[1:]
    assert scheduled[0].delay == 0.0 and gave_up[0].reason  # typed as such (mypy checks it)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_knee_backend_shares_its_capacity_above_the_knee(backend: str) -> None:
    service = KneeBackend(2, 1.0)

    async def main() -> list[float]:
        async with anyio.create_task_group() as tg:
            for _ in range(4):  # the 3rd and 4th start with 3 and 4 in flight
                tg.start_soon(service)
        return [latency for _, latency in service.samples]

    assert sorted(run_virtual(main, backend=backend)) == [1.0, 1.0, 1.5, 2.0]
    assert (service.inflight, service.peak, service.latency(6)) == (0, 4, 3.0)
    assert service.p99() == 2.0 and service.p99(since=1.9) == 2.0
    assert math.isnan(service.p99(since=10.0))
    jittery = KneeBackend(1, 1.0, jitter=0.5, rng=random.Random(3))
    assert 0.5 <= run_virtual(jittery, backend=backend) <= 1.5


@pytest.mark.parametrize(
    ("knee", "base", "jitter"), [(0, 1.0, 0.0), (1, 0.0, 0.0), (1, math.nan, 0.0), (1, 1.0, 1.0)]
)
def test_the_knee_backend_refuses_bad_settings(knee: int, base: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="knee"):
        KneeBackend(knee, base, jitter=jitter)
