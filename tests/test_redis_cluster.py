"""The fleet primitives on a real Redis Cluster and under Sentinel, while the deployment changes:
a primary SIGKILLed mid-run (its replica takes over), a slot moved to another primary mid-run,
and a Sentinel-managed failover. Each prints its timings (``pytest -s`` shows them).

The cluster is the session's (``redis_cluster`` in conftest.py: 3 primaries, 3 replicas,
``cluster-node-timeout`` 500 ms); each test leaves it healthy, with every node running.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import anyio
import pytest
import redis
from helpers import check_rate_bound
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from dwcp_resilience import Event
from dwcp_resilience.redis import (
    BackendUnavailable,
    FleetErrorBudget,
    FleetFallback,
    FleetRestored,
    RedisBackend,
    RedisRateLimiter,
)
from dwcp_resilience.redis._gcra import GCRA_LUA
from dwcp_resilience.redis.replicated import RedisClusterServer, RedisSentinelServer
from dwcp_resilience.testing import RecordingListener

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.cluster_on_asyncio]

P = ParamSpec("P")
T = TypeVar("T")

RATE, BURST = 200.0, 20
INTERVAL_US = 1e6 / RATE
TIMEOUT = 0.25  # the backend's default per-call timeout


@pytest.fixture
def cluster(redis_cluster: RedisClusterServer) -> RedisClusterServer:
    """The session's cluster, emptied."""
    with redis.RedisCluster.from_url(redis_cluster.url) as client:
        client.flushall()
    return redis_cluster


@dataclass
class Admission:
    """One admitted acquire: when it was asked and answered (loop time), and the Redis time (µs)
    it was admitted at (``-1``: by the local fallback)."""

    asked: float
    answered: float
    redis_us: int


@dataclass
class Member:
    """A fleet member: its own backend and limiter, acquiring from ``tasks`` tasks in a loop."""

    backend: RedisBackend
    limiter: RedisRateLimiter
    recorder: RecordingListener[Event]
    log: list[Admission] = field(default_factory=list)

    def shared_since(self, since: float) -> int:
        return sum(1 for a in self.log if a.asked >= since and a.redis_us >= 0)


class _TimedBackend(RedisBackend):
    """A backend that records when each Redis call it gave up on began and how long it took
    (the test's own instrument: a member's local pacing wait is not part of it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unavailable: list[tuple[float, float]] = []

    async def run(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        started = anyio.current_time()
        try:
            return await super().run(fn, *args, **kwargs)
        except BackendUnavailable:
            self.unavailable.append((started, anyio.current_time() - started))
            raise


@asynccontextmanager
async def _members(
    count: int, make_backend: Callable[[], RedisBackend], tasks: int, name: str = "fleet"
) -> AsyncIterator[list[Member]]:
    """``count`` members, each with ``tasks`` tasks calling ``acquire`` until the block ends."""
    async with AsyncExitStack() as stack:
        members = []
        for _ in range(count):
            backend = await stack.enter_async_context(make_backend())
            recorder: RecordingListener[Event] = RecordingListener()
            limiter = RedisRateLimiter(
                backend, name, rate=RATE, burst=BURST, fleet_size=count, listeners=[recorder]
            )
            members.append(Member(backend, limiter, recorder))

        async def acquire_forever(member: Member) -> None:
            while True:
                asked = anyio.current_time()
                at = await member.limiter._admit(1, math.inf)  # every error would end the test
                member.log.append(Admission(asked, anyio.current_time(), at))

        async with anyio.create_task_group() as group:
            for member in members:
                for _ in range(tasks):
                    group.start_soon(acquire_forever, member)
            yield members
            group.cancel_scope.cancel()


async def _until(check: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"timed out after {limit} s waiting for {what}"
        await anyio.sleep(0.01)


async def _back_to_shared(members: list[Member], since: float) -> None:
    """Wait (10 s at most) until every member is on shared state and has made 5 shared
    admissions since ``since``."""
    await _until(
        lambda: (
            all(m.limiter.statistics().on_shared for m in members)
            and all(m.shared_since(since) > 5 for m in members)
        ),
        10,
        "the members to return to shared state",
    )


def _script_loaded(port: int) -> bool:
    sha = redis.Redis().register_script(GCRA_LUA).sha  # no connection: only the digest
    with redis.Redis(port=port) as client:
        loaded: list[bool] = client.script_exists(sha)
        return loaded[0]


def _check_shared_bound(members: list[Member], since: float = -math.inf) -> int:
    """The fleet bound over every window of the shared admissions asked from ``since`` on."""
    times = sorted(
        a.redis_us for m in members for a in m.log if a.redis_us >= 0 and a.asked >= since
    )
    check_rate_bound(times, BURST, INTERVAL_US)
    return len(times)


def _check_local_bound(member: Member, count: int) -> int:
    """A member's local admissions: at most its share, ``burst // count + rate / count * span``."""
    local = [a.answered for a in member.log if a.redis_us < 0]
    if local:
        span = local[-1] - local[0]
        assert len(local) <= BURST // count + RATE / count * span + 1, (len(local), span)
    return len(local)


def _shared_from_now(member: Member, count: int = 5) -> Callable[[], bool]:
    """True once ``member`` admitted ``count`` acquires on shared state asked from now on."""
    now = anyio.current_time()
    return lambda: member.shared_since(now) > count


def _check_cycles(events: list[Event]) -> int:
    """Fallbacks and returns alternate, from a fallback to a return (a member may go back and
    forth while the deployment settles); how many outages that was. Each outage after the first
    is printed with why it began."""
    kinds = [type(e) for e in events]
    assert kinds and kinds == [FleetFallback, FleetRestored] * (len(kinds) // 2), events
    for fell, back in itertools.pairwise(events[1:]):
        if isinstance(fell, FleetFallback):
            print(
                f"\n  again on local state at {fell.time:.3f} for {back.time - fell.time:.3f} s: "
                f"{fell.reason[:160]}"
            )
    return len(kinds) // 2


# -- a primary killed mid-run ----------------------------------------------------------------------


async def test_a_killed_primary_fails_over_and_calls_go_on(
    anyio_backend: Any, cluster: RedisClusterServer
) -> None:
    """SIGKILL the primary that owns the limiter's slot while two members acquire: every call
    returns (on the local fallback, within the backend's timeout, while the slot has no primary),
    and the members return to shared state once the replica is promoted; the fleet bound holds
    over the shared admissions."""

    backends: list[_TimedBackend] = []

    def backend() -> RedisBackend:
        backends.append(_TimedBackend(cluster.url, cluster=True, timeout=TIMEOUT))
        return backends[-1]

    async with _members(2, backend, tasks=5, name="failover") as members:
        slot = cluster.keyslot(members[0].limiter.key)
        primary = cluster.primary_of(slot)
        replica = cluster.replica_of(primary)
        await _until(lambda: all(m.shared_since(-math.inf) > 10 for m in members), 10, "warm-up")
        # Redis does not replicate its script cache: the promoted replica will answer NOSCRIPT.
        assert _script_loaded(primary.port) and not _script_loaded(replica.port)
        lags: list[float] = []

        async def measure_lag() -> None:  # how late the loop wakes a 10 ms sleeper
            while True:
                asked = anyio.current_time()
                await anyio.sleep(0.01)
                lags.append(anyio.current_time() - asked - 0.01)

        killed = anyio.current_time()
        try:
            async with anyio.create_task_group() as probe:
                probe.start_soon(measure_lag)
                cluster.kill(primary)
                failed_over = anyio.to_thread.run_sync(cluster.wait_failover, slot, primary)
                assert await failed_over is replica
                promoted = anyio.current_time()
                await _back_to_shared(members, promoted)
                await anyio.sleep(0.3)  # some more shared admissions on the promoted replica
                probe.cancel_scope.cancel()
        finally:
            await anyio.to_thread.run_sync(cluster.revive, primary)
    await anyio.to_thread.run_sync(cluster.wait_healthy)

    assert _script_loaded(replica.port)  # loaded again after its NOSCRIPT
    cycles = [_check_cycles(m.recorder.events) for m in members]
    fell = min(e.time for m in members for e in m.recorder.events if e.time >= killed)
    back = [m.recorder.events[-1].time for m in members]  # each member's last return
    assert all(m.limiter.statistics().local > 0 for m in members)
    # Every Redis call gave up within the timeout while Redis was away, give or take a scheduling
    # margin and how late the loop itself ran (`lags`): on CI's 3.12 under coverage, with the other
    # worker busy, the loop woke a 10 ms sleeper up to 0.8 s late (2 s for one admission in CI),
    # while a call that hangs on the dead primary would take seconds on a prompt loop too. (A
    # local admission also waits for its share of the local rate: printed, not bounded.)
    outage = [a for m in members for a in m.log if killed <= a.asked <= max(back)]
    slowest = max(a.answered - a.asked for a in outage if a.redis_us < 0)
    gave_up = [took for b in backends for began, took in b.unavailable if began >= killed]
    lag = max(lags)
    assert gave_up and max(gave_up) < TIMEOUT + 1.0 + lag, (max(gave_up, default=None), lag)
    shared = _check_shared_bound(members)
    local = [_check_local_bound(m, len(members)) for m in members]
    print(
        f"\ncluster failover (node timeout 500 ms, backend timeout {TIMEOUT} s): "
        f"first fallback {fell - killed:.3f} s after the kill; replica promoted after "
        f"{promoted - killed:.3f} s; on local state for {min(back) - fell:.3f}-"
        f"{max(back) - fell:.3f} s; shared again {min(back) - killed:.3f}-"
        f"{max(back) - killed:.3f} s after the kill ({max(back) - promoted:.3f} s after the "
        f"promotion); outages per member {cycles}; slowest Redis call given up "
        f"{max(gave_up) * 1000:.0f} ms, slowest local admission {slowest * 1000:.0f} ms, loop "
        f"lag up to {lag * 1000:.0f} ms; "
        f"admissions: {shared} shared (bound held), {local} local"
    )


# -- a slot moved mid-run --------------------------------------------------------------------------


async def test_a_slot_moved_mid_run_reaches_no_caller(
    anyio_backend: Any, cluster: RedisClusterServer
) -> None:
    """Move the limiter's slot, then a budget's, to another primary while they are used: no
    error reaches a caller. One task acquiring alone stays on shared state throughout (redis-py
    follows ASK and MOVED); ten tasks on one connection pool may lose a call to redis-py's ASK
    handling (it sends ASKING and the command on two pooled connections), which then falls back
    for that call. The budget's records are counted exactly once."""

    def backend() -> RedisBackend:
        return RedisBackend(cluster.url, cluster=True, timeout=TIMEOUT)

    async def move(slot: int) -> float:
        source = cluster.primary_of(slot)
        target = next(node for node in cluster.primaries() if node is not source)
        started = time.monotonic()
        await anyio.to_thread.run_sync(
            lambda: cluster.migrate_slot(slot, target, between=lambda step: time.sleep(0.2))
        )
        assert cluster.primary_of(slot) is target
        return time.monotonic() - started

    results = {}
    for tasks in (1, 10):
        async with _members(1, backend, tasks=tasks, name=f"moving-{tasks}") as (member,):
            await _until(lambda: member.shared_since(-math.inf) > 10, 10, "warm-up")
            took = await move(cluster.keyslot(member.limiter.key))
            await _until(lambda: member.limiter.statistics().on_shared, 10, "shared state")
            await _until(_shared_from_now(member), 10, "shared admissions")
        stats = member.limiter.statistics()
        if tasks == 1:
            assert (stats.local, stats.fallbacks) == (0, 0), stats
        results[tasks] = (stats.shared, stats.local, stats.fallbacks, took)
        _check_shared_bound([member])

    async with backend() as budget_backend:
        budget = FleetErrorBudget(budget_backend, "moving", slo=0.9, window=60.0, bucket=1.0)
        recorded = 0

        async def record_and_flush() -> None:
            nonlocal recorded
            while True:
                for ok in (True, True, False):
                    budget.record(ok)
                recorded += 3
                await budget.flush()
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as group:
            group.start_soon(record_and_flush)
            await anyio.sleep(0.1)
            slot = cluster.keyslot(budget_backend.key("budget", "moving", "buckets"))
            took = await move(slot)
            group.cancel_scope.cancel()
        await _until(lambda: budget.shared, 10, "the budget's shared state")
        for _ in range(100):
            if await budget.flush():
                break
            await anyio.sleep(0.05)
        snapshot = await budget.fleet_snapshot()
        assert snapshot.shared and snapshot.total == recorded and snapshot.failed == recorded // 3
    print(
        "\nslot moved mid-run (MIGRATING, MIGRATE, SETSLOT NODE; 0.2 s pauses): limiter with "
        + "; ".join(
            f"{tasks} task(s): {shared} shared, {local} local, {fallbacks} fallback(s), "
            f"move took {took_:.2f} s"
            for tasks, (shared, local, fallbacks, took_) in results.items()
        )
        + f"; budget: {recorded} records counted once, {budget.statistics().batches} batches, "
        f"{budget.statistics().fallbacks} fallback(s), move took {took:.2f} s"
    )


# -- a Sentinel-managed failover ------------------------------------------------------------------


async def test_a_sentinel_failover_returns_to_shared_state(anyio_backend: Any) -> None:
    """A primary watched by a Sentinel is SIGKILLed while two members acquire through clients
    from ``Sentinel.master_for``: calls go on locally, then on the promoted replica."""
    with RedisSentinelServer(down_after=500) as group:
        sentinel = Sentinel(group.sentinels, socket_timeout=TIMEOUT)
        clients = []

        def backend() -> RedisBackend:
            client = sentinel.master_for(
                group.service,
                socket_timeout=TIMEOUT,
                socket_connect_timeout=TIMEOUT,
                retry=Retry(NoBackoff(), 0),
            )
            clients.append(client)
            return RedisBackend(client=client, timeout=TIMEOUT)

        try:
            async with _members(2, backend, tasks=5, name="sentinel") as members:
                await _until(
                    lambda: all(m.shared_since(-math.inf) > 10 for m in members), 10, "warm-up"
                )
                old = group.primary_port()
                killed = anyio.current_time()
                group.kill(group.server(old))
                new = await anyio.to_thread.run_sync(group.wait_failover, old)
                promoted = anyio.current_time()
                assert new != old
                await _back_to_shared(members, promoted)
        finally:
            for client in [*clients, *sentinel.sentinels]:
                await client.aclose()
    cycles = [_check_cycles(m.recorder.events) for m in members]
    back = [m.recorder.events[-1].time for m in members]
    shared = _check_shared_bound(members)
    local = [_check_local_bound(m, len(members)) for m in members]
    print(
        f"\nsentinel failover (down-after 500 ms, backend timeout {TIMEOUT} s): new primary named "
        f"{promoted - killed:.3f} s after the kill; shared again {min(back) - killed:.3f}-"
        f"{max(back) - killed:.3f} s after the kill (the guard probes once a second); outages "
        f"per member {cycles}; admissions: {shared} shared (bound held), {local} local"
    )
