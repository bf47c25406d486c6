"""The RateLimiter shell on asyncio (looptime), trio (MockClock) and uvloop (real time)."""

from __future__ import annotations

import math
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from dwcp_resilience.core.context import OperationContext
from dwcp_resilience.core.errors import RateLimited
from dwcp_resilience.policies import ratelimit as ratelimit_module
from dwcp_resilience.policies._park import park as real_park
from dwcp_resilience.policies._park import wake as real_wake
from dwcp_resilience.policies.ratelimit import RateLimiter
from dwcp_resilience.testing import FakeClock

pytestmark = pytest.mark.anyio


def window_bound_holds(log: list[tuple[float, int]], rate: float, burst: int) -> None:
    """L2/R18: for every window [t_i, t_j] of the admit log, admitted <= burst + rate * width."""
    log = sorted(log)
    for i in range(len(log)):
        total = 0
        for j in range(i, len(log)):
            total += log[j][1]
            width = log[j][0] - log[i][0]
            assert total <= burst + rate * width + 1e-6 * (j - i + 1), (i, j, total, width)


async def test_fast_paths_do_not_checkpoint(backend_name: str) -> None:
    limiter = RateLimiter("l", rate=1000, burst=10)

    async def plain() -> int:
        return 1

    with anyio.CancelScope() as scope:
        scope.cancel()
        assert await limiter.call(plain) == 1
        await limiter.acquire()
        async with limiter:
            pass
        assert limiter.try_acquire()
    stats = limiter.statistics()
    assert (stats.allowed, stats.rejected, stats.waiting) == (4, 0, 0)


async def test_idioms(backend_name: str) -> None:
    limiter = RateLimiter("l", rate=1000, burst=5, max_wait=0)
    calls: list[int] = []

    @limiter
    async def decorated(x: int) -> int:
        calls.append(x)
        return x + 1

    assert await decorated(1) == 2
    assert await limiter.call(decorated.__wrapped__, 5) == 6  # type: ignore[attr-defined]
    async with limiter as entered:
        assert entered is limiter
    assert limiter.statistics().allowed == 3  # one token per idiom use
    assert "rate=1000/s burst=5" in repr(limiter)


@pytest.mark.virtual_time
async def test_starts_full_then_paces_fifo(backend_name: str) -> None:
    limiter = RateLimiter("l", rate=10, burst=3)
    start = anyio.current_time()
    admitted: list[tuple[int, float]] = []

    async def worker(i: int) -> None:
        await limiter.acquire()
        admitted.append((i, round(anyio.current_time() - start, 6)))

    async with anyio.create_task_group() as tg:
        for i in range(7):
            tg.start_soon(worker, i)
            await anyio.lowlevel.checkpoint()
    assert admitted == [(0, 0.0), (1, 0.0), (2, 0.0), (3, 0.1), (4, 0.2), (5, 0.3), (6, 0.4)]
    stats = limiter.statistics()
    assert (stats.allowed, stats.waiting, stats.cancelled) == (7, 0, 0)


@pytest.mark.virtual_time
async def test_max_wait_rejects_at_once_without_debt(backend_name: str) -> None:
    limiter = RateLimiter("l", rate=2, burst=2)
    assert limiter.try_acquire(2)
    start = anyio.current_time()
    with pytest.raises(RateLimited) as info:
        await limiter.acquire(2, max_wait=0.5)
    assert anyio.current_time() == start  # failed at once
    assert info.value.retry_after == pytest.approx(1.0)
    assert not limiter.try_acquire()  # no token appeared
    await anyio.sleep(1.0)
    assert limiter.try_acquire(2)  # and none was reserved
    assert limiter.statistics().rejected == 2


@pytest.mark.virtual_time
async def test_call_uses_limiter_max_wait_and_never_runs_callee(backend_name: str) -> None:
    limiter = RateLimiter("l", rate=1, burst=1, max_wait=0.25)
    ran: list[int] = []

    async def op() -> None:
        ran.append(1)

    await limiter.call(op)
    with pytest.raises(RateLimited):
        await limiter.call(op)
    with pytest.raises(RateLimited):
        async with limiter:
            ran.append(2)
    assert ran == [1]


@pytest.mark.virtual_time
async def test_enclosing_deadline_bounds_the_wait(backend_name: str) -> None:
    limiter = RateLimiter("l", rate=1, burst=1)
    limiter.try_acquire()
    ctx = OperationContext("op", deadline=anyio.current_time() + 0.5)
    with ctx.activate(), pytest.raises(RateLimited):
        await limiter.acquire()


async def test_oversize_and_bad_n_fail_at_once(backend_name: str) -> None:
    """L5 / R32: n > burst never queues."""
    limiter = RateLimiter("l", rate=1, burst=3)
    for n, error in [(4, ValueError), (0, ValueError), (-1, ValueError), (True, TypeError)]:
        with pytest.raises(error):
            await limiter.acquire(n)
        with pytest.raises(error):
            limiter.try_acquire(n)
    with pytest.raises(ValueError, match="max_wait"):
        limiter.try_acquire(3)
        await limiter.acquire(1, max_wait=-1)
    assert limiter.statistics().waiting == 0


@pytest.mark.virtual_time
async def test_cancelled_waiter_leaves_no_debt(backend_name: str) -> None:
    """R04: W1 cancelled half-way; W2 is admitted when W1 would have been."""
    limiter = RateLimiter("l", rate=1, burst=1)
    assert limiter.try_acquire()
    start = anyio.current_time()
    got: list[float] = []

    async def w2() -> None:
        await limiter.acquire()
        got.append(anyio.current_time() - start)

    async with anyio.create_task_group() as tg:
        with anyio.move_on_after(0.5):
            await limiter.acquire()  # W1
        tg.start_soon(w2)
    assert got == [pytest.approx(1.0)]
    stats = limiter.statistics()
    assert (stats.allowed, stats.cancelled, stats.waiting) == (2, 1, 0)
    assert 0.0 <= stats.tokens <= 1.0


@pytest.mark.virtual_time
async def test_cancel_in_the_middle_moves_the_rest_forward(backend_name: str) -> None:
    limiter = RateLimiter("l", rate=1, burst=1)
    assert limiter.try_acquire()
    start = anyio.current_time()
    got: dict[str, float] = {}
    scope = anyio.CancelScope()

    async def waiter(name: str, cancel: bool = False) -> None:
        with scope if cancel else anyio.CancelScope():
            await limiter.acquire()
            got[name] = anyio.current_time() - start

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, "a")
        await anyio.sleep(0.01)
        tg.start_soon(waiter, "b", True)
        await anyio.sleep(0.01)
        tg.start_soon(waiter, "c")
        await anyio.sleep(0.2)
        scope.cancel()
    assert got == {"a": pytest.approx(1.0), "c": pytest.approx(2.0)}


@pytest.mark.virtual_time
async def test_refund_when_cancelled_after_grant(backend_name: str) -> None:
    """A waiter granted its tokens by another task's dispatch, then ``Task.cancel()`` ed before it
    resumed, gives them back (the hand-off race of anyio#947 on a limiter)."""
    if backend_name != "asyncio":
        pytest.skip("drives raw asyncio tasks on the virtual loop")
    import asyncio

    # A clock without a sleep_until hook (unlike FakeClock), so that the head sleeps on the
    # loop's timer and its wake-up can be ordered against ours.
    readings = [0.0]
    limiter = RateLimiter("l", rate=1, burst=2, clock=lambda: readings[0])
    assert limiter.try_acquire(2)
    head = asyncio.create_task(limiter.acquire())  # due at fake t=1 (timer at loop t=1)
    second = asyncio.create_task(limiter.acquire())  # due at fake t=2
    await asyncio.sleep(0)
    assert limiter.statistics().waiting == 2
    readings[0] = 10.0  # when the head's timer fires, both are due: it grants both
    await asyncio.sleep(1.0)  # our timer fires right after the head's, before `second` resumes
    assert limiter.waiting == 1 and limiter._bucket.head() is None  # `second` granted, not resumed
    second.cancel()
    await head
    with pytest.raises(asyncio.CancelledError):
        await second
    stats = limiter.statistics()
    assert (stats.allowed, stats.cancelled, stats.waiting) == (2, 1, 0)
    assert stats.tokens == pytest.approx(1.0)  # the refund: one token left at fake t=10


@pytest.mark.virtual_time
async def test_window_bound_with_thousand_tasks(backend_name: str) -> None:
    """R18: rate 10/s, burst 10, 1000 tasks at once."""
    limiter = RateLimiter("l", rate=10, burst=10)
    log: list[tuple[float, int]] = []

    async def worker() -> None:
        await limiter.acquire()
        log.append((anyio.current_time(), 1))

    async with anyio.create_task_group() as tg:
        for _ in range(1000):
            tg.start_soon(worker)
    assert len(log) == 1000
    window_bound_holds(log, 10.0, 10)
    times = sorted(t for t, _ in log)
    assert times[-1] - times[0] == pytest.approx(99.0, abs=1e-3)  # paced, not slower either


@pytest.mark.virtual_time
@pytest.mark.slow
async def test_each_token_wakes_o1_waiters(
    backend_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R19 / aiolimiter#73: 10 000 waiters; each admission costs O(1) wakeups and timers."""
    parks = 0
    wakes = 0

    async def counting_park(holder: Any, deadline: float = math.inf) -> bool:
        nonlocal parks
        parks += 1
        return await real_park(holder, deadline)

    def counting_wake(holder: Any) -> None:
        nonlocal wakes
        wakes += 1
        real_wake(holder)

    monkeypatch.setattr(ratelimit_module, "park", counting_park)
    monkeypatch.setattr(ratelimit_module, "wake", counting_wake)
    limiter = RateLimiter("l", rate=1000, burst=1)
    n = 10_000
    done = 0

    async def worker() -> None:
        nonlocal done
        await limiter.acquire()
        done += 1

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(worker)
    assert done == n
    assert parks <= 2 * n + 10
    assert wakes <= 2 * n + 10


@pytest.mark.virtual_time
async def test_day_idle_then_burst_then_paced(backend_name: str) -> None:
    """R25: idle a day, then 100 acquires: exactly `burst` at once, the rest at 1/s."""
    limiter = RateLimiter("l", rate=1, burst=5)
    await anyio.sleep(86_400)
    start = anyio.current_time()
    times: list[float] = []

    async def worker() -> None:
        await limiter.acquire()
        times.append(anyio.current_time() - start)

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(worker)
    times.sort()
    assert times[:5] == [0.0] * 5
    assert times[5:] == pytest.approx([float(k) for k in range(1, 96)], abs=1e-6)


async def test_waiting_works_in_real_time(backend_name: str) -> None:
    """Short real waits (this one runs on uvloop too)."""
    limiter = RateLimiter("l", rate=200, burst=1)
    start = anyio.current_time()
    for _ in range(4):
        await limiter.acquire()
    elapsed = anyio.current_time() - start
    assert elapsed >= 3 / 200 - 2e-3  # a clock tick of slack for uvloop's ms clock
    assert limiter.statistics().allowed == 4


def test_injected_clock() -> None:
    clock = FakeClock(50.0)
    limiter = RateLimiter("l", rate=2, burst=2, clock=clock)
    assert limiter.try_acquire() and limiter.try_acquire() and not limiter.try_acquire()
    clock.advance(0.5)
    assert limiter.try_acquire()
    assert limiter.statistics().tokens == 0.0
    assert (limiter.statistics().allowed, limiter.statistics().rejected) == (3, 1)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"rate": 0, "burst": 1}, ValueError),
        ({"rate": -1, "burst": 1}, ValueError),
        ({"rate": math.nan, "burst": 1}, ValueError),
        ({"rate": math.inf, "burst": 1}, ValueError),
        ({"rate": 1, "burst": 0}, ValueError),
        ({"rate": True, "burst": 1}, TypeError),
        ({"rate": 1, "burst": 2.0}, TypeError),
        ({"rate": 1, "burst": 1, "max_wait": -1}, ValueError),
        ({"rate": 1, "burst": 1, "max_wait": math.nan}, ValueError),
        ({"rate": 1, "burst": 1, "clock": 3}, TypeError),
    ],
)
def test_bad_config(kwargs: dict[str, Any], error: type[Exception]) -> None:
    """R32."""
    with pytest.raises(error):
        RateLimiter("l", **kwargs)


_MODULE_LIMITER = RateLimiter("module", rate=1000, burst=2)


async def test_module_level_instance_across_loops(backend_name: str) -> None:
    """Built at import time, used on each backend's loop in turn (R47)."""
    for _ in range(3):
        await _MODULE_LIMITER.acquire()
    assert _MODULE_LIMITER.statistics().waiting == 0


async def test_composes_in_a_pipeline_and_passes_arguments(backend_name: str) -> None:
    from dwcp_resilience.core.policy import Pipeline
    from dwcp_resilience.policies.bulkhead import Bulkhead

    limiter = RateLimiter("l", rate=0.001, burst=2, max_wait=0)  # no refill in real time
    bulkhead = Bulkhead("b", max_concurrent=1)

    async def add(a: int, *, b: int) -> int:
        await anyio.lowlevel.checkpoint()
        return a + b

    assert await limiter.call(add, 1, b=2) == 3
    pipeline = Pipeline(bulkhead, limiter, name="p")
    assert await pipeline.call(add, 2, b=3) == 5
    with pytest.raises(RateLimited):
        await pipeline.call(add, 0, b=0)  # the bucket (burst 2) is empty and max_wait is 0
    assert bulkhead.available == 1  # the rejection inside released the permit
    assert limiter.statistics().allowed == 2 and limiter.statistics().rejected == 1


def test_decorator_refuses_sync_functions() -> None:
    limiter = RateLimiter("l", rate=1, burst=1)

    def sync() -> None:
        return None

    with pytest.raises(TypeError, match="async def"):
        limiter(sync)  # type: ignore[arg-type]


async def test_fast_rate_on_a_coarse_clock(backend_name: str) -> None:
    """R30: 10 000/s with burst 1 (uvloop's clock ticks in ms, looptime's in us): many admissions
    fall inside one tick, timers fire a tick early; the bound holds and nothing spins or hangs."""
    limiter = RateLimiter("l", rate=10_000, burst=1)
    log: list[tuple[float, int]] = []

    async def worker() -> None:
        for _ in range(20):
            await limiter.acquire()
            log.append((anyio.current_time(), 1))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(worker)
    assert len(log) == 200
    if backend_name != "uvloop":  # uvloop's clock is ms-coarse: the bound holds per tick only
        window_bound_holds(log, 10_000.0, 1)
    assert log[-1][0] - log[0][0] >= 199 / 10_000 - 2e-3
