"""FleetErrorBudget: error-budget counters summed across instances on a real redis-server."""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, ParamSpec, TypeVar

import anyio
import pytest
from conftest import FleetRedis
from helpers import redis_keys
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dwcp_resilience import ErrorBudget, Event
from dwcp_resilience.redis import (
    BackendUnavailable,
    FleetErrorBudget,
    FleetFallback,
    FleetRestored,
    RedisBackend,
)
from dwcp_resilience.redis._budget_core import BudgetDeltas
from dwcp_resilience.redis.server import RedisServer
from dwcp_resilience.testing import FakeClock, RecordingListener

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

P = ParamSpec("P")
T = TypeVar("T")


@asynccontextmanager
async def _budgets(
    target: str | FleetRedis, count: int, *, run: bool = False, **kwargs: Any
) -> AsyncIterator[list[FleetErrorBudget]]:
    """``count`` budgets named ``api``, each on its own backend (a redis-server URL, or a
    parametrized server or cluster)."""
    options: dict[str, Any] = {"slo": 0.9, "window": 60.0, "bucket": 1.0, "min_requests": 10}
    options.update(kwargs)
    fleet = target if isinstance(target, FleetRedis) else FleetRedis("server", target)
    async with AsyncExitStack() as stack:
        budgets = []
        for i in range(count):
            backend = await stack.enter_async_context(
                fleet.backend(instance=f"node-{i}", timeout=2.0)
            )
            budget = FleetErrorBudget(backend, "api", **options)
            if run:
                await stack.enter_async_context(budget)
            budgets.append(budget)
        yield budgets


def _record(budget: FleetErrorBudget, ok: int, failed: int) -> None:
    for _ in range(ok):
        budget.record(True)
    for _ in range(failed):
        budget.record(False)


async def test_the_fleet_snapshot_is_the_sum_of_every_instance(
    anyio_backend: Any, fleet_redis: FleetRedis
) -> None:
    async with _budgets(fleet_redis, 4) as budgets:
        for i, budget in enumerate(budgets):
            _record(budget, ok=10 * (i + 1), failed=i)  # 100 ok, 6 failed in all
        for budget in budgets:
            assert await budget.flush()
            assert budget.statistics().batches == 1
        for budget in budgets:
            snap = await budget.fleet_snapshot()
            assert snap.shared and snap.unflushed == 0
            assert (snap.total, snap.failed) == (106, 6)
            assert snap.availability == pytest.approx(100 / 106)
            assert snap.burn_rate == pytest.approx((6 / 106) / 0.1)
            assert snap.consumed == pytest.approx(6 / (106 * 0.1))
            assert snap.remaining == pytest.approx(1 - 6 / 10.6)
            assert snap.allowed_failures == 10 - 6
            assert not snap.exhausted
        local = budgets[3].local.counts()
        assert local == (43, 3)  # the local budget saw this instance only
        client = budgets[0]._backend.client
        keys = await redis_keys(client, "{dwcp:budget:api}:*")
        assert 0 < keys.pop("{dwcp:budget:api}:buckets") <= 61_000  # window + bucket
        buckets = await client.hgetall("{dwcp:budget:api}:buckets")
        starts = {field[2:] for field in buckets if field != b"lo"}
        assert 1 <= len(starts) <= 2  # everything happened within a second or two
        assert all(k.startswith("{dwcp:budget:api}:seq:node-") for k in keys)
        assert len(keys) == 4 and all(0 < ttl <= 122_000 for ttl in keys.values())
        assert await budgets[0].flush()  # nothing pending: no round trip needed, still True
        assert budgets[0].statistics().batches == 1
        _record(budgets[0], ok=0, failed=20)
        snap = await budgets[1].fleet_snapshot()
        assert snap.total == 106  # not flushed yet: not in the fleet's sum
        assert (await budgets[0].fleet_snapshot()).unflushed == 20
        await budgets[0].flush()
        snap = await budgets[1].fleet_snapshot()
        assert (snap.total, snap.failed) == (126, 26) and snap.exhausted
        assert "api" in repr(budgets[0]) and "shared" in repr(budgets[0])


async def test_buckets_leave_the_window(anyio_backend: Any, fleet_redis: FleetRedis) -> None:
    async with _budgets(fleet_redis, 2, window=0.6, bucket=0.2) as (one, two):
        _record(one, ok=5, failed=1)
        _record(two, ok=2, failed=0)
        await one.flush()
        await two.flush()
        snap = await one.fleet_snapshot()
        assert (snap.total, snap.failed) == (8, 1)
        await anyio.sleep(0.9)
        snap = await one.fleet_snapshot()
        assert (snap.total, snap.failed) == (0, 0) and snap.availability == 1.0
        keys = await redis_keys(one._backend.client, "{dwcp:budget:api}:*")
        assert "{dwcp:budget:api}:buckets" not in keys  # TTL window + bucket: expired by now


async def test_flushes_delete_the_buckets_that_left_the_window(
    anyio_backend: Any, redis_url: str
) -> None:
    """A budget flushed for longer than its window keeps only the buckets a snapshot can read:
    the hash does not grow with time."""
    async with _budgets(redis_url, 1, window=0.4, bucket=0.1) as (budget,):
        client = budget._backend.client
        started = time.monotonic()
        while time.monotonic() - started < 1.5:
            _record(budget, ok=2, failed=1)
            assert await budget.flush()
            await anyio.sleep(0.03)
        fields = await client.hgetall("{dwcp:budget:api}:buckets")
        oldest = int(fields.pop(b"lo"))
        starts = {int(field[2:]) for field in fields}
        assert len(starts) <= 4  # the window's 4 buckets (every older one was deleted)
        assert min(starts) >= oldest and max(starts) - oldest <= 300
        snap = await budget.fleet_snapshot()  # a moment later: the oldest bucket may have left
        assert 0 < snap.total <= sum(int(v) for k, v in fields.items() if k[:2] == b"t:")


async def test_the_background_flusher_pushes_deltas(anyio_backend: Any, redis_url: str) -> None:
    before = asyncio.all_tasks()
    async with _budgets(redis_url, 2, run=True, flush_interval=0.05) as (one, two):
        _record(one, ok=3, failed=1)
        deadline = time.monotonic() + 5
        while (await two.fleet_snapshot()).total != 4:
            assert time.monotonic() < deadline
            await anyio.sleep(0.02)
        _record(two, ok=1, failed=1)  # flushed by the final flush on exit
    assert asyncio.all_tasks() - before == set()
    async with _budgets(redis_url, 1) as (reader,):
        snap = await reader.fleet_snapshot()
        assert (snap.total, snap.failed) == (6, 2)


async def test_the_refresher_keeps_the_latest_fleet_snapshot(
    anyio_backend: Any, redis_url: str
) -> None:
    """``async with`` takes a snapshot at entry and every ``snapshot_interval``: the latest one is
    kept (``last_snapshot``, ``statistics().snapshot``) and reading it calls no Redis."""
    async with _budgets(redis_url, 2, flush_interval=0.05, snapshot_interval=0.05) as (one, two):
        assert one.last_snapshot is None and one.statistics().snapshot is None
        assert one.statistics().snapshots == 0
        async with one, two:
            await _eventually_async(lambda: _shared_total(one) == 0, "the snapshot at entry")
            _record(one, ok=3, failed=1)
            _record(two, ok=6, failed=0)
            for budget in (one, two):
                await _eventually_async(lambda b=budget: _shared_total(b) == 10, "10 records")  # type: ignore[misc]
            stats = one.statistics()
            snapshot = one.last_snapshot
            assert snapshot is not None and stats.snapshot == snapshot
            assert (snapshot.failed, snapshot.shared, snapshot.name) == (1, True, "api")
            assert stats.snapshots >= 2  # the one at entry, then the refreshed ones
        assert one.last_snapshot == snapshot  # kept after exit


def _shared_total(budget: FleetErrorBudget) -> int | None:
    snapshot = budget.last_snapshot
    return snapshot.total if snapshot is not None and snapshot.shared else None


async def _eventually_async(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await anyio.sleep(0.01)


async def test_the_refresher_takes_the_local_snapshot_while_redis_is_down(
    anyio_backend: Any, redis_url: str
) -> None:
    recorder: RecordingListener[Event] = RecordingListener()
    async with RedisBackend(redis_url, instance="a", timeout=2.0) as backend:
        budget = FleetErrorBudget(backend, "api", slo=0.9, window=60.0, bucket=1.0,
                                  flush_interval=0.05, snapshot_interval=0.05,
                                  listeners=[recorder])  # fmt: skip
        async with budget:
            await _eventually_async(lambda: _shared_total(budget) == 0, "a shared snapshot")
            taken = budget.statistics().snapshots
            backend.breaker.force_open()
            _record(budget, ok=1, failed=1)
            await _eventually_async(
                lambda: budget.last_snapshot is not None and not budget.last_snapshot.shared,
                "the local snapshot",
            )
            snapshot = budget.last_snapshot
            assert snapshot is not None and (snapshot.total, snapshot.failed) == (2, 1)
            assert budget.statistics().snapshots == taken  # only shared ones are counted
            assert [type(e) for e in recorder.events] == [FleetFallback]
            backend.breaker.reset()
            await _eventually_async(lambda: _shared_total(budget) == 2, "the fleet's view again")


async def test_no_background_snapshots_without_an_interval(
    anyio_backend: Any, redis_url: str
) -> None:
    async with _budgets(redis_url, 1, run=True, flush_interval=0.05,
                        snapshot_interval=None) as (budget,):  # fmt: skip
        names = {task.get_name() for task in asyncio.all_tasks()}
        assert "fleet-budget:api:flush" in names
        assert not any(name.endswith(":snap") for name in names)
        assert budget.last_snapshot is None
        snapshot = await budget.fleet_snapshot()  # on demand, and kept
        assert budget.last_snapshot == snapshot and budget.statistics().snapshots == 1
    async with _budgets(redis_url, 1, run=True) as (budget,):
        names = {task.get_name() for task in asyncio.all_tasks()}
        assert "fleet-budget:api:snap" in names


async def test_an_outage_keeps_the_deltas_and_flushes_them_once(
    anyio_backend: Any, redis_url: str
) -> None:
    """Redis unavailable (the guard is open): deltas wait; on return they are counted once."""
    recorder: RecordingListener[Event] = RecordingListener()
    async with RedisBackend(redis_url, instance="a", timeout=2.0) as backend:
        budget = FleetErrorBudget(
            backend, "api", slo=0.9, window=60.0, bucket=1.0, listeners=[recorder]
        )
        _record(budget, ok=5, failed=0)
        assert await budget.flush()
        backend.breaker.force_open()  # as if Redis were down: every call is refused at once
        _record(budget, ok=4, failed=3)
        for _ in range(3):
            assert not await budget.flush()
        snap = await budget.fleet_snapshot()
        assert not snap.shared and (snap.total, snap.failed) == (12, 3)  # the local view
        assert snap.unflushed == 7
        assert [type(e) for e in recorder.events] == [FleetFallback]
        assert budget.statistics().fallbacks == 1 and not budget.shared
        backend.breaker.reset()
        assert await budget.flush()
        snap = await budget.fleet_snapshot()
        assert snap.shared and (snap.total, snap.failed) == (12, 3) and snap.unflushed == 0
        assert [type(e) for e in recorder.events] == [FleetFallback, FleetRestored]
        assert budget.statistics().duplicates == 0


async def test_a_lost_reply_is_not_counted_twice(
    anyio_backend: Any, fleet_redis: FleetRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script ran but its reply was lost: the batch is sent again and found applied."""
    async with fleet_redis.backend(instance="a", timeout=2.0) as backend:
        budget = FleetErrorBudget(backend, "api", slo=0.9, window=60.0, bucket=1.0)
        real_run = backend.run

        async def reply_lost(fn: Callable[P, Awaitable[T]], /, *a: P.args, **k: P.kwargs) -> T:
            await real_run(fn, *a, **k)
            raise BackendUnavailable("reply lost")

        _record(budget, ok=6, failed=2)
        monkeypatch.setattr(backend, "run", reply_lost)
        assert not await budget.flush()
        _record(budget, ok=1, failed=1)  # recorded after the lost reply: a later batch
        monkeypatch.setattr(backend, "run", real_run)
        assert await budget.flush()
        stats = budget.statistics()
        assert stats.duplicates == 1 and stats.batches == 2
        assert stats.pending_records == stats.inflight_records == 0
        snap = await budget.fleet_snapshot()
        assert (snap.total, snap.failed) == (10, 3)


@pytest.mark.parametrize("applied", [False, True], ids=["before-apply", "after-apply"])
async def test_cancelling_a_flush_loses_and_doubles_nothing(
    anyio_backend: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch, applied: bool
) -> None:
    async with RedisBackend(redis_url, instance="a", timeout=2.0) as backend:
        budget = FleetErrorBudget(backend, "api", slo=0.9, window=60.0, bucket=1.0)
        real_run = backend.run

        async def slow(fn: Callable[P, Awaitable[T]], /, *a: P.args, **k: P.kwargs) -> T:
            if applied:
                await real_run(fn, *a, **k)
            await anyio.sleep(10)
            return await real_run(fn, *a, **k)

        _record(budget, ok=3, failed=1)
        monkeypatch.setattr(backend, "run", slow)
        with anyio.move_on_after(0.1) as scope:
            await budget.flush()
        assert scope.cancelled_caught
        assert budget.statistics().inflight_records == 4
        monkeypatch.setattr(backend, "run", real_run)
        assert await budget.flush()
        assert budget.statistics().duplicates == int(applied)
        snap = await budget.fleet_snapshot()
        assert (snap.total, snap.failed) == (4, 1)


async def test_redis_killed_mid_run(anyio_backend: Any) -> None:
    """A real outage: the fallback is local; after the restart the kept deltas are sent once
    (what Redis held before the kill is gone with it: no persistence)."""
    recorder: RecordingListener[Event] = RecordingListener()
    with RedisServer() as server:
        async with RedisBackend(server.url, instance="a", timeout=2.0) as backend:
            budget = FleetErrorBudget(
                backend, "api", slo=0.9, window=60.0, bucket=1.0, listeners=[recorder]
            )
            _record(budget, ok=5, failed=0)
            assert await budget.flush()
            server.stop()
            _record(budget, ok=2, failed=2)
            for _ in range(4):
                assert not await budget.flush()
                snap = await budget.fleet_snapshot()
                assert not snap.shared and (snap.total, snap.failed) == (9, 2)
            assert [type(e) for e in recorder.events] == [FleetFallback]
            server.start()
            deadline = time.monotonic() + 5
            while not await budget.flush():
                assert time.monotonic() < deadline
                await anyio.sleep(0.05)
            snap = await budget.fleet_snapshot()
            assert snap.shared and (snap.total, snap.failed) == (4, 2)
            assert [type(e) for e in recorder.events] == [FleetFallback, FleetRestored]


async def test_old_deltas_are_dropped_during_an_outage(anyio_backend: Any, redis_url: str) -> None:
    clock = FakeClock()
    async with RedisBackend(redis_url, instance="a", timeout=2.0) as backend:
        budget = FleetErrorBudget(
            backend, "api", slo=0.9, window=10.0, bucket=1.0, clock=clock, min_requests=0
        )
        backend.breaker.force_open()
        _record(budget, ok=3, failed=1)
        assert not await budget.flush()
        clock.advance(5.0)
        _record(budget, ok=2, failed=0)
        clock.advance(6.5)  # the first bucket ended more than a window ago
        backend.breaker.reset()
        assert await budget.flush()
        stats = budget.statistics()
        assert stats.dropped_records == 4 and stats.inflight_records == 0
        snap = await budget.fleet_snapshot()
        assert (snap.total, snap.failed) == (2, 0)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"slo": 0.0}, ValueError),
        ({"slo": 1.5}, ValueError),
        ({"slo": math.nan}, ValueError),
        ({"slo": True}, TypeError),
        ({"window": 0}, ValueError),
        ({"window": math.inf}, ValueError),
        ({"window": math.nan}, ValueError),
        ({"bucket": 0}, ValueError),
        ({"bucket": 0.0001}, ValueError),
        ({"bucket": 120.0}, ValueError),  # wider than the window
        ({"flush_interval": 0}, ValueError),
        ({"flush_interval": math.inf}, ValueError),
        ({"snapshot_interval": 0}, ValueError),
        ({"snapshot_interval": -1.0}, ValueError),
        ({"snapshot_interval": math.nan}, ValueError),
        ({"snapshot_interval": math.inf}, ValueError),
        ({"snapshot_interval": "5"}, TypeError),
        ({"snapshot_interval": True}, TypeError),
        ({"min_requests": -1}, ValueError),
        ({"local": "budget"}, TypeError),
        ({"clock": 1}, TypeError),
    ],
)
def test_bad_config_is_refused(kwargs: dict[str, Any], error: type[Exception]) -> None:
    backend = RedisBackend("redis://127.0.0.1:1/0")
    options: dict[str, Any] = {"slo": 0.99, "window": 60.0}
    options.update(kwargs)
    with pytest.raises(error):
        FleetErrorBudget(backend, "api", **options)
    with pytest.raises(TypeError, match="backend"):
        FleetErrorBudget("redis://", "api", slo=0.9)  # type: ignore[arg-type]


def test_a_given_local_budget_is_recorded_into() -> None:
    local = ErrorBudget("api", slo=0.9, window=60.0, clock=FakeClock())
    budget = FleetErrorBudget(RedisBackend("redis://127.0.0.1:1/0"), "api", slo=0.9, local=local)
    _record(budget, ok=2, failed=1)
    assert local.counts() == (3, 1) and budget.local is local
    assert budget.statistics().pending_records == 3


CHILD = r"""
import asyncio, sys
from dwcp_resilience.redis import FleetErrorBudget, RedisBackend

async def main(url, kind, instance, ok, failed):
    cluster = kind == "cluster"
    async with RedisBackend(url, cluster=cluster, instance=instance, timeout=2.0) as backend:
        async with FleetErrorBudget(backend, "api", slo=0.9, window=60.0, bucket=1.0) as budget:
            for _ in range(ok):
                budget.record(True)
            for _ in range(failed):
                budget.record(False)
    print("done", budget.statistics().pending_records, budget.statistics().inflight_records)

asyncio.run(main(*sys.argv[1:4], int(sys.argv[4]), int(sys.argv[5])))
"""


@pytest.mark.cluster_on_asyncio
async def test_processes_share_one_budget(anyio_backend: Any, fleet_redis: FleetRedis) -> None:
    """4 processes record known outcomes and exit (the exit flushes): the fleet sees the sum."""
    outputs: list[bytes] = []

    async def run_child(i: int) -> None:
        result = await anyio.run_process(
            [sys.executable, "-c", CHILD, *fleet_redis.argv(), f"proc-{i}", str(10 + i), str(i)]
        )
        outputs.append(result.stdout.strip())

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(run_child, i)
    assert outputs == [b"done 0 0"] * 4
    async with _budgets(fleet_redis, 1) as (reader,):
        snap = await reader.fleet_snapshot()
    assert (snap.total, snap.failed) == (46 + 6, 6)


# -- the pure bookkeeping against a model ---------------------------------------------------------


class DeltasMachine(RuleBasedStateMachine):
    """BudgetDeltas with a model server that applies a batch only if its number is new.

    Whatever happens (lost replies, failures, retries, old buckets dropped), every record is
    counted on the server at most once, and records are only lost by a counted drop.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.deltas = BudgetDeltas(width=1.0, window=5.0)
        self.recorded = self.recorded_failed = 0
        self.server_total = self.server_failed = 0
        self.last_applied = 0
        self.inflight_applied = False  # the batch in flight reached the server already
        self.dropped_after_apply = 0  # records trimmed from an applied batch: not a loss

    def _tracked(self, step: Callable[[], T]) -> T:
        """Run a step that may trim; note what it trimmed from a batch the server applied."""
        old, before, was_applied = (
            self.deltas.inflight,
            self.deltas.inflight_records,
            self.inflight_applied,
        )
        result = step()
        new = self.deltas.inflight
        same = old is not None and new is not None and new.seq == old.seq
        if same:  # a batch in flight only ever loses whole (expired) buckets, never gains
            assert old is not None and new is not None and set(new.items) <= set(old.items)
        if was_applied:
            self.dropped_after_apply += before - (self.deltas.inflight_records if same else 0)
        if not same:
            self.inflight_applied = False
        return result

    @rule(success=st.booleans(), step=st.floats(0.0, 2.5))
    def record(self, success: bool, step: float) -> None:
        self.now += step
        self._tracked(lambda: self.deltas.add(self.now, success))
        self.recorded += 1
        self.recorded_failed += not success

    @rule(step=st.floats(0.0, 7.0))
    def wait(self, step: float) -> None:
        self.now += step

    @rule(applied=st.booleans(), reply=st.booleans())
    def flush(self, applied: bool, reply: bool) -> None:
        """Send a batch: the server may or may not run it, the reply may or may not arrive."""
        batch = self._tracked(lambda: self.deltas.begin(self.now))
        if batch is None:
            return
        assert self.deltas.inflight is batch
        if applied and batch.seq > self.last_applied:
            self.last_applied = batch.seq
            for _, total, failed in batch.items:
                self.server_total += total
                self.server_failed += failed
            self.inflight_applied = True
        if applied and reply:
            self.deltas.ack(batch.seq)
            self.inflight_applied = False

    @precondition(lambda self: self.deltas.inflight is not None)
    @rule()
    def trim_all(self) -> None:
        self.now += 20.0
        self._tracked(lambda: self.deltas.trim(self.now))

    @invariant()
    def nothing_is_counted_twice_or_lost_silently(self) -> None:
        deltas = self.deltas
        unsent = deltas.pending_records + (0 if self.inflight_applied else deltas.inflight_records)
        lost = deltas.dropped_records - self.dropped_after_apply
        assert self.server_total + unsent + lost == self.recorded
        assert self.server_failed <= self.recorded_failed

    @invariant()
    def kept_buckets_are_bounded(self) -> None:
        # Only buckets that can still count are kept: about window / width of each kind.
        assert self.deltas.bucket_count <= 2 * (5 + 2)


DeltasMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestDeltasMachine = DeltasMachine.TestCase
