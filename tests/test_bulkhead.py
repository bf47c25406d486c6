"""The Bulkhead shell on asyncio (looptime), trio (MockClock) and uvloop (real time)."""

from __future__ import annotations

import math
import random

import anyio
import anyio.lowlevel
import pytest

from dwcp_resilience.core.errors import BulkheadFull
from dwcp_resilience.policies.bulkhead import DEFAULT_BUCKETS, Bulkhead

pytestmark = pytest.mark.anyio


class Probe:
    """A guarded callee that records how many run at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0
        self.max_seen = 0
        self.started = 0

    async def run(self, hold: float = 0.0) -> str:
        self.started += 1
        self.inflight += 1
        self.max_seen = max(self.max_seen, self.inflight)
        assert self.inflight <= self.limit
        try:
            if hold:
                await anyio.sleep(hold)
            else:
                await anyio.lowlevel.checkpoint()
            return "ok"
        finally:
            self.inflight -= 1


async def test_uncontended_paths_do_not_checkpoint(backend_name: str) -> None:
    """Fast paths await nothing: a cancelled scope does not stop them."""
    bulkhead = Bulkhead("b", max_concurrent=1)

    async def plain() -> int:
        return 7

    with anyio.CancelScope() as scope:
        scope.cancel()
        assert await bulkhead.call(plain) == 7
        async with bulkhead:
            pass
    assert bulkhead.available == 1
    assert bulkhead.statistics().admitted == 2


async def test_three_idioms_and_release_on_error(backend_name: str) -> None:
    bulkhead = Bulkhead("b", max_concurrent=2)
    probe = Probe(2)

    @bulkhead
    async def decorated(x: int) -> int:
        await probe.run()
        return x * 2

    assert await decorated(21) == 42
    assert await bulkhead.call(probe.run) == "ok"
    async with bulkhead:
        assert bulkhead.available == 1
    with pytest.raises(ZeroDivisionError):
        async with bulkhead:
            _ = 1 / 0

    async def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        await bulkhead.call(boom)
    assert bulkhead.available == 2
    assert "0/2 in use" in repr(bulkhead)


async def test_try_only_mode_rejects_at_once(backend_name: str) -> None:
    bulkhead = Bulkhead("b", max_concurrent=1)  # max_queue=0
    async with bulkhead:
        with pytest.raises(BulkheadFull) as info:
            await bulkhead.call(Probe(1).run)
        assert info.value.reason == "full"
    stats = bulkhead.statistics()
    assert (stats.admitted, stats.rejected, stats.rejected_full, stats.available) == (1, 1, 1, 1)


@pytest.mark.virtual_time
async def test_queue_full_and_fifo_hand_off(backend_name: str) -> None:
    bulkhead = Bulkhead("b", max_concurrent=1, max_queue=3)
    order: list[int] = []
    outcomes: dict[int, str] = {}

    async def worker(i: int) -> None:
        try:
            async with bulkhead:
                order.append(i)
                await anyio.sleep(1)
            outcomes[i] = "ok"
        except BulkheadFull as exc:
            outcomes[i] = exc.reason

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(worker, i)
            await anyio.sleep(0.01)  # a known arrival order
    assert order == [0, 1, 2, 3]  # first in, first out
    assert outcomes == {0: "ok", 1: "ok", 2: "ok", 3: "ok", 4: "full", 5: "full"}
    assert bulkhead.available == 1 and bulkhead.queued == 0


@pytest.mark.virtual_time
async def test_queue_place_freed_when_wait_ends(backend_name: str) -> None:
    """The Go bug: with 1 permit and a queue of 1, a third call got 'full' though nobody waited."""
    bulkhead = Bulkhead("b", max_concurrent=1, max_queue=1)
    results: list[str] = []

    async def worker(hold: float) -> None:
        try:
            await bulkhead.call(anyio.sleep, hold)
            results.append("ok")
        except BulkheadFull:
            results.append("full")

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker, 1.0)
        await anyio.sleep(0.1)
        tg.start_soon(worker, 5.0)  # waits, then runs from t=1 to t=6
        await anyio.sleep(2.0)
        assert bulkhead.queued == 0
        tg.start_soon(worker, 0.0)  # the queue place is free again: it waits, then runs
    assert results == ["ok", "ok", "ok"]


@pytest.mark.virtual_time
async def test_wait_timeout_then_capacity_back(backend_name: str) -> None:
    """R02: ten waiters time out at max_wait; then the holders leave; nothing was lost."""
    bulkhead = Bulkhead("b", max_concurrent=2, max_queue=10, max_wait=1.0)
    reasons: list[tuple[str, float]] = []
    start = anyio.current_time()

    async def waiter() -> None:
        try:
            await bulkhead.call(anyio.sleep, 0)
        except BulkheadFull as exc:
            reasons.append((exc.reason, anyio.current_time() - start))

    async with anyio.create_task_group() as tg:
        tg.start_soon(bulkhead.call, anyio.sleep, 3.0)
        tg.start_soon(bulkhead.call, anyio.sleep, 3.0)
        await anyio.lowlevel.checkpoint()
        for _ in range(10):
            tg.start_soon(waiter)
    assert [r for r, _ in reasons] == ["timeout"] * 10
    assert all(t == pytest.approx(1.0, abs=1e-3) for _, t in reasons)  # K5: no later than w
    stats = bulkhead.statistics()
    assert (stats.available, stats.queued, stats.concurrent) == (2, 0, 0)
    assert (stats.timed_out, stats.rejected) == (10, 10)
    assert await bulkhead.call(Probe(2).run) == "ok"  # admitted at once


async def test_cancel_after_hand_off_passes_permit_on(backend_name: str) -> None:
    """R01 / anyio#947: a waiter cancelled right after the permit was handed to it."""
    bulkhead = Bulkhead("b", max_concurrent=1, max_queue=2)
    probe = Probe(1)
    scope = anyio.CancelScope()
    ran_second = anyio.Event()

    async def first() -> None:
        with scope:
            await bulkhead.call(probe.run)

    async def second() -> None:
        await bulkhead.call(probe.run)
        ran_second.set()

    async with anyio.create_task_group() as tg:
        await bulkhead.__aenter__()
        tg.start_soon(first)
        await anyio.sleep(0.001)
        tg.start_soon(second)
        await anyio.sleep(0.001)
        assert bulkhead.queued == 2
        await bulkhead.__aexit__(None, None, None)  # hands the permit to `first`...
        scope.cancel()  # ...which is cancelled before it resumes
        await ran_second.wait()
    assert bulkhead.available == 1 and bulkhead.queued == 0
    assert probe.max_seen == 1


async def test_task_cancel_after_hand_off_asyncio(backend_name: str) -> None:
    """R01 with a raw ``Task.cancel()`` landing between the hand-off and the resume (asyncio)."""
    if backend_name == "trio":
        pytest.skip("asyncio tasks only")
    import asyncio

    bulkhead = Bulkhead("b", max_concurrent=1, max_queue=2)
    probe = Probe(1)
    await bulkhead.__aenter__()
    first = asyncio.create_task(bulkhead.call(probe.run))
    second = asyncio.create_task(bulkhead.call(probe.run))
    await asyncio.sleep(0)
    assert bulkhead.queued == 2
    await bulkhead.__aexit__(None, None, None)  # hands the permit to `first`...
    assert bulkhead.reserved == 1
    first.cancel()  # ...which is cancelled before it resumes
    assert await second == "ok"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert probe.started == 1  # `first` never ran
    stats = bulkhead.statistics()
    assert (stats.available, stats.queued, stats.cancelled, stats.admitted) == (1, 0, 1, 2)


async def test_cancel_while_queued_frees_the_place(backend_name: str) -> None:
    bulkhead = Bulkhead("b", max_concurrent=1, max_queue=1)
    async with bulkhead:
        async with anyio.create_task_group() as tg:
            tg.start_soon(bulkhead.call, anyio.sleep, 0)
            await anyio.sleep(0.001)
            assert bulkhead.queued == 1
            tg.cancel_scope.cancel()
        assert bulkhead.queued == 0 and bulkhead.statistics().cancelled == 1
    assert bulkhead.available == 1


@pytest.mark.virtual_time
@pytest.mark.slow
async def test_thousand_tasks_random_cancellation(backend_name: str) -> None:
    """R15: 1000 tasks, 10 permits, a queue of 100, random holds and cancellations."""
    rng = random.Random(1234)
    bulkhead = Bulkhead("b", max_concurrent=10, max_queue=100, max_wait=5.0)
    probe = Probe(10)
    attempts = admitted = rejected = cancelled = 0

    async def worker() -> None:
        nonlocal attempts, admitted, rejected, cancelled
        hold = rng.uniform(0.0, 0.2)
        deadline = rng.choice([math.inf, rng.uniform(0.0, 3.0)])
        attempts += 1
        entered = False

        async def guarded() -> None:
            nonlocal entered, admitted
            entered = True
            admitted += 1
            await probe.run(hold)

        with anyio.move_on_after(deadline):
            try:
                await bulkhead.call(guarded)
            except BulkheadFull:
                rejected += 1
            return
        if not entered:
            cancelled += 1

    async with anyio.create_task_group() as tg:
        for _ in range(1000):
            tg.start_soon(worker)
            if rng.random() < 0.1:
                await anyio.sleep(rng.uniform(0, 0.05))
    stats = bulkhead.statistics()
    assert probe.max_seen <= 10
    assert attempts == 1000
    assert admitted + rejected + cancelled == attempts
    assert stats.admitted == admitted
    assert stats.rejected == rejected
    assert stats.cancelled == cancelled
    assert (stats.available, stats.queued, stats.concurrent) == (10, 0, 0)
    assert min(admitted, rejected, cancelled) > 0  # every path was taken


@pytest.mark.virtual_time
async def test_wait_histogram(backend_name: str) -> None:
    bulkhead = Bulkhead("b", max_concurrent=1, max_queue=5)
    async with anyio.create_task_group() as tg:
        tg.start_soon(bulkhead.call, anyio.sleep, 0.3)  # admitted at once: 0 s
        await anyio.lowlevel.checkpoint()
        tg.start_soon(bulkhead.call, anyio.sleep, 0.0)  # waits 0.3 s
    stats = bulkhead.statistics()
    buckets = dict(stats.wait_buckets)
    assert list(buckets) == [*DEFAULT_BUCKETS, math.inf]
    assert buckets[0.005] == 1 and buckets[0.25] == 1 and buckets[0.5] == 2
    assert buckets[math.inf] == stats.wait_count == stats.admitted == 2
    assert stats.wait_sum == pytest.approx(0.3, abs=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_concurrent": 0}, ValueError),
        ({"max_concurrent": -1}, ValueError),
        ({"max_concurrent": True}, TypeError),
        ({"max_concurrent": 2.5}, TypeError),
        ({"max_concurrent": 1, "max_queue": -1}, ValueError),
        ({"max_concurrent": 1, "max_wait": math.nan}, ValueError),
        ({"max_concurrent": 1, "max_wait": -1}, ValueError),
        ({"max_concurrent": 1, "max_wait": "1"}, TypeError),
        ({"max_concurrent": 1, "clock": 5}, TypeError),
    ],
)
def test_bad_config(kwargs: dict[str, object], error: type[Exception]) -> None:
    """R34."""
    with pytest.raises(error):
        Bulkhead("b", **kwargs)  # type: ignore[arg-type]


def test_bad_name() -> None:
    with pytest.raises(ValueError, match="name"):
        Bulkhead("", max_concurrent=1)


_MODULE_BULKHEAD = Bulkhead("module", max_concurrent=1, max_queue=1, max_wait=0.01)


async def test_module_level_instance_works_across_loops(backend_name: str) -> None:
    """Built at import time, used on every backend's loop in turn (R47): nothing binds at
    construction."""
    bulkhead = _MODULE_BULKHEAD
    async with bulkhead:
        with pytest.raises(BulkheadFull):
            await bulkhead.call(anyio.sleep, 0)
    assert await bulkhead.call(Probe(1).run) == "ok"
    assert bulkhead.available == 1


def test_decorator_refuses_sync_functions() -> None:
    bulkhead = Bulkhead("b", max_concurrent=1)

    def sync() -> None:
        return None

    with pytest.raises(TypeError, match="async def"):
        bulkhead(sync)  # type: ignore[arg-type]


@pytest.mark.virtual_time
async def test_resize_admits_waiters_oldest_first_and_a_shrink_interrupts_nothing(
    backend_name: str,
) -> None:
    bulkhead = Bulkhead("b", max_concurrent=2, max_queue=10)
    probe = Probe(4)
    started: list[int] = []

    async def worker(i: int) -> None:
        async with bulkhead:
            started.append(i)
            await probe.run(1.0)

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(worker, i)
            await anyio.sleep(0.01)  # a known arrival order
        await anyio.sleep(0.1)
        assert started == [0, 1] and bulkhead.queued == 4
        bulkhead.resize(4)  # two more at once, the oldest waiters (woken together: any order)
        await anyio.sleep(0.1)
        assert started[:2] == [0, 1] and sorted(started) == [0, 1, 2, 3]
        assert bulkhead.max_concurrent == 4
        bulkhead.resize(1)  # the four running calls finish; then one at a time
        assert bulkhead.statistics().concurrent == 4 and bulkhead.available == 0
        assert "4/1 in use" in repr(bulkhead)
        await anyio.sleep(0.85)  # t=1.1: 0 and 1 ended, both permits retired, nobody admitted
        assert len(started) == 4
        await anyio.sleep(0.1)  # t=1.2: 2 and 3 ended, one permit retired, one for 4
        assert started[4:] == [4]
    assert started[4:] == [4, 5]
    assert bulkhead.available == 1 and probe.max_seen == 4
