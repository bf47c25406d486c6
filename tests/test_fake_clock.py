"""FakeClock waits honestly (issue 17): a rate limiter's queued request, a retry's backoff sleep, a
bulkhead's bounded wait and a breaker's open period move with the fake clock, never with the loop's,
and a wait that nobody ends raises FakeClockStalled instead of hanging. On asyncio (looptime),
trio (MockClock) and uvloop (real time)."""

from __future__ import annotations

import math
import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from helpers import wait_until

from dwcp_resilience import (
    Bulkhead,
    BulkheadFull,
    CircuitBreaker,
    CircuitOpen,
    RateLimiter,
    Retry,
    WaitableClock,
)
from dwcp_resilience.policies.backoff import ConstantBackoff, ExponentialBackoff
from dwcp_resilience.testing import FakeClock, FakeClockStalled

pytestmark = pytest.mark.anyio


def _stall(backend_name: str) -> float:
    """A stall timeout: 10 s where the loop's time is virtual, 50 ms of real time on uvloop."""
    return 0.05 if backend_name == "uvloop" else 10.0


# -- the clock itself ------------------------------------------------------------------------------


def test_fake_clock_is_a_waitable_clock_and_validates() -> None:
    clock = FakeClock(5)
    assert isinstance(clock, WaitableClock)
    assert not isinstance(time.monotonic, WaitableClock)
    assert clock() == 5.0 and clock.now == 5.0 and not clock.autojump
    clock.advance(1.5)
    assert clock() == 6.5
    clock.now = 2.0  # a step back, for tests of clocks that step back
    assert clock() == 2.0
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="forward"):
            clock.advance(bad)
    with pytest.raises(ValueError, match="start"):
        FakeClock(math.inf)
    with pytest.raises(TypeError, match="start"):
        FakeClock(True)
    with pytest.raises(TypeError, match="autojump"):
        FakeClock(autojump=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stall_timeout"):
        FakeClock(stall_timeout=0)
    with pytest.raises(TypeError, match="stall_timeout"):
        FakeClock(stall_timeout="1")  # type: ignore[arg-type]
    assert repr(FakeClock(1.0, autojump=True)) == "<FakeClock now=1.0 autojump, 0 waiting>"


async def test_sleep_until_wakes_in_deadline_order_on_advance(backend_name: str) -> None:
    clock = FakeClock(0.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, until: float) -> None:
        await clock.sleep_until(until)
        woke.append((name, clock()))

    async with anyio.create_task_group() as group:
        group.start_soon(sleeper, "late", 3.0)
        group.start_soon(sleeper, "early", 1.0)
        await wait_until(lambda: clock.waiting == 2)
        clock.advance(0.5)
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        assert woke == []
        clock.advance(0.5)
        await wait_until(lambda: len(woke) == 1)
        clock.advance(5.0)
    assert woke == [("early", 1.0), ("late", 6.0)]
    assert clock.waiting == 0
    await clock.sleep_until(2.0)  # already past: returns (after a checkpoint)
    with pytest.raises(ValueError, match="NaN"):
        await clock.sleep_until(math.nan)


async def test_autojump_moves_the_clock_to_the_earliest_wait_first(backend_name: str) -> None:
    clock = FakeClock(100.0, autojump=True)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, until: float) -> None:
        await clock.sleep_until(until)
        woke.append((name, clock()))

    async with anyio.create_task_group() as group:
        group.start_soon(sleeper, "b", 130.0)
        group.start_soon(sleeper, "a", 110.0)
        group.start_soon(sleeper, "c", 120.0)
    assert woke == [("a", 110.0), ("c", 120.0), ("b", 130.0)]


async def test_a_cancelled_wait_is_forgotten(backend_name: str) -> None:
    clock = FakeClock(0.0)
    with anyio.move_on_after(0.01):
        await clock.sleep_until(5.0)
    assert clock.waiting == 0
    clock.advance(10.0)  # nothing left to wake


async def test_a_wait_nobody_ends_raises_stalled(backend_name: str) -> None:
    """Without autojump, a wait the test never ends fails after ``stall_timeout`` of the loop's
    time (at once in virtual time) and says how to fix the test."""
    clock = FakeClock(0.0, stall_timeout=_stall(backend_name))
    start = time.perf_counter()
    with pytest.raises(FakeClockStalled, match=r"clock\.advance\(seconds\).*autojump=True"):
        await clock.sleep_until(1.0)
    assert time.perf_counter() - start < 5
    assert clock.waiting == 0


async def test_a_clock_that_moves_is_not_stalled(backend_name: str) -> None:
    """The stall timeout counts from the clock's last move, not from the start of the wait."""
    stall = _stall(backend_name)
    clock = FakeClock(0.0, stall_timeout=stall)

    async def nudge() -> None:
        for _ in range(4):
            await anyio.sleep(stall * 0.6)
            clock.advance(0.25)

    async with anyio.create_task_group() as group:
        group.start_soon(nudge)
        await clock.sleep_until(1.0)  # 4 nudges over 2.4 stall timeouts: never stalled
    assert clock() == 1.0


# -- the rate limiter ------------------------------------------------------------------------------


async def test_a_limiter_waiter_is_admitted_when_the_fake_clock_gets_there(
    backend_name: str,
) -> None:
    clock = FakeClock(0.0)
    limiter = RateLimiter("l", rate=10, burst=2, clock=clock)
    assert limiter.try_acquire(2)
    admitted: list[float] = []

    async def waiter() -> None:
        await limiter.acquire()
        admitted.append(clock())

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await wait_until(lambda: limiter.waiting == 1)
        await anyio.sleep(0.05)  # the loop's time passes; the fake clock does not
        clock.advance(0.05)  # half a token
        await anyio.sleep(0.05)
        assert admitted == []
        clock.advance(0.05)  # the token is there
        await wait_until(lambda: admitted != [])
    assert admitted == [pytest.approx(0.1)]
    stats = limiter.statistics()
    assert (stats.allowed, stats.waiting, stats.cancelled) == (2, 0, 0)  # requests, not tokens


async def test_a_limiter_waiter_nobody_advances_fails_loudly(backend_name: str) -> None:
    """The bug of issue 17: a wait on a FakeClock that nobody advances must neither pass (the
    first report) nor spin for ever (virtual time re-reading a clock that stands still)."""
    clock = FakeClock(0.0, stall_timeout=_stall(backend_name))
    limiter = RateLimiter("l", rate=1, burst=1, clock=clock)
    await limiter.acquire()
    with pytest.raises(FakeClockStalled):
        await limiter.acquire()
    stats = limiter.statistics()
    assert (stats.allowed, stats.cancelled, stats.waiting) == (1, 1, 0)
    clock.advance(1.0)  # the abandoned reservation is gone: one token, at once
    assert limiter.try_acquire() and not limiter.try_acquire()


async def test_a_limiter_on_an_autojump_clock_never_admits_more_than_its_rate(
    backend_name: str,
) -> None:
    """With autojump, waits move the fake clock; the admissions are spaced as the rate says and the
    loop's own clock does not move."""
    clock = FakeClock(0.0, autojump=True)
    limiter = RateLimiter("l", rate=5, burst=2, clock=clock)
    loop_start, real_start = anyio.current_time(), time.perf_counter()
    times = []
    for _ in range(12):
        await limiter.acquire()
        times.append(clock())
    assert times[:2] == [0.0, 0.0]  # the burst
    assert times[2:] == pytest.approx([0.2 * k for k in range(1, 11)])
    for start in times:  # any window of 1 s holds at most rate * 1 + burst admissions
        assert sum(start <= t < start + 1.0 for t in times) <= 5 + 2
    assert time.perf_counter() - real_start < 1
    if backend_name != "uvloop":
        assert anyio.current_time() == loop_start


async def test_set_rate_wakes_a_head_waiting_on_the_fake_clock(backend_name: str) -> None:
    """The head's wait on the clock is woken like a wait on the loop's timer: a faster rate admits
    it at the new time, not at the old one."""
    clock = FakeClock(0.0)
    limiter = RateLimiter("l", rate=1, burst=1, clock=clock)
    assert limiter.try_acquire()
    admitted: list[float] = []

    async def waiter() -> None:
        await limiter.acquire()  # due at fake t=1 at rate 1
        admitted.append(clock())

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await wait_until(lambda: clock.waiting == 1)
        limiter.set_rate(100)  # due at t=0.01 now
        await wait_until(lambda: clock.waiting == 1)  # re-armed on the clock
        clock.advance(0.01)
        await wait_until(lambda: admitted != [])
    assert admitted == [pytest.approx(0.01)]


async def test_cancelling_a_limiter_waiter_on_the_fake_clock(backend_name: str) -> None:
    clock = FakeClock(0.0)
    limiter = RateLimiter("l", rate=1, burst=1, clock=clock)
    assert limiter.try_acquire()
    with anyio.move_on_after(0.01):
        await limiter.acquire()
    assert clock.waiting == 0
    stats = limiter.statistics()
    assert (stats.cancelled, stats.waiting) == (1, 0)


@pytest.mark.virtual_time
async def test_a_still_clock_without_a_hook_is_refused_not_spun(backend_name: str) -> None:
    """Any other injected clock is slept on with the loop's timer; one that stands still for a second
    of loop time cannot share the loop's timebase, and the wait says so."""
    readings = [0.0]
    limiter = RateLimiter("still", rate=1, burst=1, clock=lambda: readings[0])
    await limiter.acquire()
    with pytest.raises(RuntimeError, match=r"stood still.*sleep_until"):
        await limiter.acquire()
    assert limiter.statistics().waiting == 0


# -- retry -----------------------------------------------------------------------------------------


class Flaky:
    def __init__(self, failures: int, clock: FakeClock) -> None:
        self.failures = failures
        self.clock = clock
        self.calls: list[float] = []

    async def __call__(self) -> str:
        self.calls.append(self.clock())
        if len(self.calls) <= self.failures:
            raise ConnectionError("down")
        return "ok"


async def test_retry_backoff_sleeps_on_the_fake_clock(backend_name: str) -> None:
    clock = FakeClock(0.0)
    retry = Retry("r", max_retries=3, backoff=ConstantBackoff(30.0), clock=clock)
    flaky = Flaky(2, clock)
    result: list[str] = []

    async def run() -> None:
        result.append(await retry.call(flaky))

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        await wait_until(lambda: clock.waiting == 1)
        await anyio.sleep(0.05)  # the loop's time does not end a backoff on the fake clock
        assert flaky.calls == [0.0]
        clock.advance(30.0)
        await wait_until(lambda: len(flaky.calls) == 2)
        clock.advance(30.0)
    assert result == ["ok"] and flaky.calls == [0.0, 30.0, 60.0]


async def test_retry_on_an_autojump_clock_takes_no_time(backend_name: str) -> None:
    clock = FakeClock(0.0, autojump=True)
    retry = Retry("r", max_retries=3, backoff=ConstantBackoff(30.0), clock=clock)
    flaky = Flaky(3, clock)
    real_start = time.perf_counter()
    assert await retry.call(flaky) == "ok"
    assert flaky.calls == [0.0, 30.0, 60.0, 90.0]
    # The block form sleeps on the same clock.
    flaky = Flaky(1, clock)
    async for attempt in retry:
        with attempt:
            await flaky()
    assert flaky.calls == [90.0, 120.0]
    assert time.perf_counter() - real_start < 1


async def test_a_retry_backoff_nobody_ends_raises_stalled(backend_name: str) -> None:
    """The stall propagates: it is not an attempt's failure, so it is not retried."""
    clock = FakeClock(0.0, stall_timeout=_stall(backend_name))
    retry = Retry("r", max_retries=5, backoff=ConstantBackoff(1.0), clock=clock)
    flaky = Flaky(5, clock)
    with pytest.raises(FakeClockStalled):
        await retry.call(flaky)
    assert flaky.calls == [0.0]


# -- the breaker -----------------------------------------------------------------------------------


async def test_a_breaker_open_period_runs_on_the_fake_clock(backend_name: str) -> None:
    """The open period ends when the fake clock passes it, whatever the loop's clock does: a test
    that sleeps on the loop instead sees CircuitOpen, never a silent pass."""
    clock = FakeClock(1000.0)
    breaker = CircuitBreaker(
        "b", max_failures=1, reset_timeout=60.0, half_open_successes=1, clock=clock
    )
    flaky = Flaky(1, clock)
    with pytest.raises(ConnectionError):
        await breaker.call(flaky)
    await anyio.sleep(0.5 if backend_name == "uvloop" else 61.0)  # loop time only
    with pytest.raises(CircuitOpen) as refused:
        await breaker.call(flaky)
    assert refused.value.retry_after == pytest.approx(60.0, abs=1e-3)
    clock.advance(59.0)
    with pytest.raises(CircuitOpen) as refused:
        await breaker.call(flaky)
    assert refused.value.retry_after == pytest.approx(1.0, abs=1e-3)
    clock.advance(1.0)
    assert await breaker.call(flaky) == "ok"


async def test_a_retry_waits_out_an_open_breaker_on_the_same_fake_clock(
    backend_name: str,
) -> None:
    clock = FakeClock(0.0, autojump=True)
    breaker = CircuitBreaker(
        "b", max_failures=1, reset_timeout=60.0, half_open_successes=1, clock=clock
    )
    backoff = ExponentialBackoff(initial_delay=1.0, max_delay=120.0, jitter=False)
    retry = Retry("r", max_retries=3, backoff=backoff, wait_rejected=True, clock=clock)
    flaky = Flaky(1, clock)
    with pytest.raises(ConnectionError):
        await breaker.call(flaky)
    assert await retry.call(breaker.call, flaky) == "ok"  # waited retry_after on the fake clock
    assert flaky.calls == [0.0, pytest.approx(60.0, abs=1e-3)]


# -- the bulkhead ----------------------------------------------------------------------------------


async def test_a_bulkhead_wait_times_out_on_the_fake_clock(backend_name: str) -> None:
    clock = FakeClock(0.0)
    bulkhead = Bulkhead("h", max_concurrent=1, max_queue=1, max_wait=5.0, clock=clock)
    release = anyio.Event()
    outcome: list[Any] = []

    async def holder() -> None:
        async with bulkhead:
            await release.wait()

    async def waiter() -> None:
        try:
            async with bulkhead:
                outcome.append("admitted")
        except BulkheadFull as exc:
            outcome.append(exc.reason)

    async with anyio.create_task_group() as group:
        group.start_soon(holder)
        await wait_until(lambda: bulkhead.available == 0)
        group.start_soon(waiter)
        await wait_until(lambda: clock.waiting == 1)
        await anyio.sleep(0.05)  # loop time: no timeout
        clock.advance(4.0)
        await anyio.sleep(0.05)
        assert outcome == []
        clock.advance(1.0)
        await wait_until(lambda: outcome != [])
        release.set()
    assert outcome == ["timeout"]


async def test_a_bulkhead_wait_on_a_clock_without_a_hook_runs_on_the_loop(
    backend_name: str,
) -> None:
    """A bounded wait on any other injected clock lasts ``max_wait`` of the loop's time: it used to
    arm the loop's timer at that clock's reading (on uvloop, far in the past: it timed out at once)."""
    bulkhead = Bulkhead("h", max_concurrent=1, max_queue=1, max_wait=5.0, clock=lambda: 0.0)

    async def holder() -> None:
        async with bulkhead:
            await anyio.sleep(0.05)

    async with anyio.create_task_group() as group:
        group.start_soon(holder)
        await wait_until(lambda: bulkhead.available == 0)
        async with bulkhead:  # admitted once the holder leaves, well within max_wait
            pass
    assert bulkhead.statistics().timed_out == 0
