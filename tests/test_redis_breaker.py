"""FleetBreaker: a quorum (advisory) breaker shared across processes, against a real redis-server."""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import Process
from conftest import FleetRedis
from redis.asyncio.cluster import RedisCluster

from dwcp_resilience import BreakerState, BreakerStateChanged, CircuitBreaker, CircuitOpen, Event
from dwcp_resilience.redis import (
    FleetBreaker,
    FleetBreakerFollowed,
    FleetFallback,
    FleetRestored,
    RedisBackend,
)
from dwcp_resilience.redis.server import RedisServer
from dwcp_resilience.testing import RecordingListener

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

NAME = "payments"
REPORTS = "{dwcp:breaker:payments}:opened"


def _breaker(name: str = NAME, **kwargs: Any) -> CircuitBreaker:
    options: dict[str, Any] = {"max_failures": 1, "reset_timeout": 60.0, "half_open_successes": 1}
    options.update(kwargs)
    return CircuitBreaker(name, **options)


async def _fail() -> None:
    raise RuntimeError("sick")


async def _ok() -> str:
    return "ok"


async def _trip_locally(breaker: CircuitBreaker) -> None:
    with pytest.raises(RuntimeError):
        await breaker.call(_fail)
    assert breaker.state is BreakerState.OPEN


async def _eventually(check: Callable[[], bool], limit: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        await anyio.sleep(0.01)


class Node:
    """One in-process fleet member: its own backend, local breaker and fleet breaker."""

    def __init__(self, fleet: FleetBreaker, recorder: RecordingListener[Event]) -> None:
        self.fleet = fleet
        self.breaker = fleet.breaker
        self.recorder = recorder

    def reasons(self) -> list[str]:
        return [e.reason for e in self.recorder.events if isinstance(e, BreakerStateChanged)]

    def of_type(self, *kinds: type[Event]) -> list[Event]:
        return [e for e in self.recorder.events if isinstance(e, kinds)]

    def is_open(self) -> bool:
        return self.breaker.state is BreakerState.OPEN

    def is_shared(self) -> bool:
        return self.fleet.shared

    def is_local_only(self) -> bool:
        return not self.fleet.shared

    def has_polled(self) -> bool:
        return self.fleet.statistics().polls > 0


def _on(target: str | FleetRedis) -> FleetRedis:
    """A redis-server URL, or a parametrized server or cluster."""
    return target if isinstance(target, FleetRedis) else FleetRedis("server", target)


@asynccontextmanager
async def _fleet(
    url: str | FleetRedis,
    count: int,
    *,
    quorum: int = 1,
    window: float = 10.0,
    poll_interval: float = 0.05,
    guard: Callable[[], CircuitBreaker] | None = None,
    **breaker_kwargs: Any,
) -> AsyncIterator[list[Node]]:
    async with AsyncExitStack() as stack:
        nodes = []
        for i in range(count):
            recorder: RecordingListener[Event] = RecordingListener()
            backend = await stack.enter_async_context(
                _on(url).backend(
                    instance=f"node-{i}",
                    timeout=2.0,
                    breaker=guard() if guard is not None else None,
                )
            )
            breaker = _breaker(listeners=[recorder], **breaker_kwargs)
            fleet = FleetBreaker(
                backend,
                breaker,
                quorum=quorum,
                window=window,
                poll_interval=poll_interval,
                listeners=[recorder],
            )
            await stack.enter_async_context(fleet)
            nodes.append(Node(fleet, recorder))
        for node in nodes:  # every watcher has polled once: the fleet is listening
            # 15 s: a member's first poll on a cluster (slot discovery, script load) took over
            # 5 s once on a loaded CI machine (3.12, uvloop).
            await _eventually(node.has_polled, limit=15.0)
        yield nodes


async def _reporters(url: str | FleetRedis) -> dict[str, float]:
    async with _on(url).backend() as backend:
        found: Any = await backend.client.zrange(REPORTS, 0, -1, withscores=True)
        return {member.decode(): score for member, score in found}


async def _ttl_ms(url: str | FleetRedis, key: str) -> int:
    async with _on(url).backend() as backend:
        ttl: int = await backend.client.pttl(key)
        return ttl


# -- in-process fleets --------------------------------------------------------------------------


async def test_an_opening_is_followed_by_quorum_one(
    anyio_backend: Any, fleet_redis: FleetRedis
) -> None:
    """One instance opens by itself; with quorum=1 the others open with reason fleet_quorum."""
    async with _fleet(fleet_redis, 3, quorum=1, window=10.0) as (sick, *others):
        await _trip_locally(sick.breaker)
        for node in others:
            await _eventually(node.is_open)
            assert node.reasons() == ["fleet_quorum"]
            ran = False

            async def callee() -> None:
                nonlocal ran
                ran = True

            with pytest.raises(CircuitOpen) as rejected:
                await node.breaker.call(callee)
            assert not ran
            assert rejected.value.retry_after is not None and rejected.value.retry_after > 0
            (followed,) = node.of_type(FleetBreakerFollowed)
            assert isinstance(followed, FleetBreakerFollowed)
            assert followed.reporters == ("node-0",) and followed.quorum == 1
            assert node.fleet.statistics().quorum_trips == 1
        assert sick.reasons() == ["consecutive_failures"]
        stats = sick.fleet.statistics()
        assert stats.reports_published == 1 and stats.reports_pending == 0
        assert stats.quorum_trips == 0 and stats.shared
        assert 0 < await _ttl_ms(fleet_redis, REPORTS) <= 10_000
        assert "payments" in repr(sick.fleet) and "quorum=1" in repr(sick.fleet)


async def test_followers_hear_of_an_opening_by_pub_sub(
    anyio_backend: Any, fleet_redis: FleetRedis
) -> None:
    """With polls 30 s apart, a follower still opens at once: the report's message woke it (in a
    cluster, the PUBLISH of the script reaches a subscriber on any node)."""
    if fleet_redis.cluster and not hasattr(RedisCluster, "pubsub"):
        pytest.skip("the asyncio RedisCluster subscribes from redis-py 8 on (older: polls only)")
    async with _fleet(fleet_redis, 2, quorum=1, poll_interval=30.0) as (sick, follower):
        await anyio.sleep(0.3)  # the listeners have subscribed
        await _trip_locally(sick.breaker)
        await _eventually(follower.is_open, limit=5.0)
        assert follower.fleet.statistics().polls == 2  # the first poll, then the woken one


async def test_fleet_trips_are_not_reported_no_cascade(anyio_backend: Any, redis_url: str) -> None:
    """Followers never publish their fleet-caused trips, so one sick node cannot reach quorum 2."""
    async with _fleet(redis_url, 4, quorum=1) as nodes:
        await _trip_locally(nodes[0].breaker)
        for node in nodes[1:]:
            await _eventually(node.is_open)
        await anyio.sleep(0.2)  # a few more polls
        assert set(await _reporters(redis_url)) == {"node-0"}
        assert all(node.fleet.statistics().reports_published == 0 for node in nodes[1:])


async def test_quorum_two_needs_two_distinct_reporters(anyio_backend: Any, redis_url: str) -> None:
    async with _fleet(redis_url, 4, quorum=2) as nodes:
        await _trip_locally(nodes[0].breaker)
        await _eventually(lambda: nodes[1].fleet.statistics().last_reporters == 1)
        await anyio.sleep(0.3)  # several polls: one sick instance is not a quorum
        for node in nodes[1:]:
            assert node.breaker.state is BreakerState.CLOSED
            assert await node.breaker.call(_ok) == "ok"
        nodes[0].breaker.reset()  # the same instance opening again is still one reporter
        await _trip_locally(nodes[0].breaker)
        await anyio.sleep(0.2)
        assert nodes[2].breaker.state is BreakerState.CLOSED
        await _trip_locally(nodes[1].breaker)
        for node in nodes[2:]:
            await _eventually(node.is_open)
            assert node.reasons() == ["fleet_quorum"]
        # node-1 sees one other reporter only (its own report never counts for itself).
        assert nodes[1].reasons() == ["consecutive_failures"]
        assert nodes[0].fleet.statistics().reports_published == 2


async def test_old_reports_do_not_count(anyio_backend: Any, redis_url: str) -> None:
    """A report older than the window is dropped; the key expires with it."""
    async with _fleet(redis_url, 3, quorum=2, window=0.4) as nodes:
        await _trip_locally(nodes[0].breaker)
        await _eventually(lambda: nodes[2].fleet.statistics().last_reporters == 1)
        await anyio.sleep(0.6)  # node-0's report leaves the window
        assert nodes[2].fleet.statistics().last_reporters == 0
        await _trip_locally(nodes[1].breaker)
        await _eventually(lambda: nodes[2].fleet.statistics().last_reporters == 1)
        await anyio.sleep(0.2)
        assert nodes[2].breaker.state is BreakerState.CLOSED
        await anyio.sleep(0.5)
        assert await _reporters(redis_url) == {}  # the key expired (TTL = window)


async def test_half_open_recovery_stays_local(anyio_backend: Any, redis_url: str) -> None:
    """A follower probes and closes on its own; the same reports do not re-open it."""
    async with _fleet(redis_url, 2, quorum=1, reset_timeout=0.2) as (sick, follower):
        await _trip_locally(sick.breaker)
        await _eventually(lambda: follower.breaker.state is BreakerState.OPEN)
        await _eventually(lambda: follower.breaker.state is BreakerState.HALF_OPEN)
        assert await follower.breaker.call(_ok) == "ok"
        assert follower.breaker.state is BreakerState.CLOSED
        await anyio.sleep(0.3)  # several polls still see node-0's report in the window
        assert follower.breaker.state is BreakerState.CLOSED
        assert follower.reasons() == ["fleet_quorum", "reset_timeout", "probes_succeeded"]
        assert follower.fleet.statistics().quorum_trips == 1
        # The sick node recovers too, and its own old report does not re-open it.
        await _eventually(lambda: sick.breaker.state is BreakerState.HALF_OPEN)
        assert await sick.breaker.call(_ok) == "ok"
        await anyio.sleep(0.2)
        assert sick.breaker.state is BreakerState.CLOSED
        # A new opening is a new report: the follower follows again.
        await _trip_locally(sick.breaker)
        await _eventually(lambda: follower.breaker.state is BreakerState.OPEN)
        assert follower.fleet.statistics().quorum_trips == 2


async def test_a_failed_probe_is_reported_but_manual_opens_are_not(
    anyio_backend: Any, redis_url: str
) -> None:
    async with _fleet(redis_url, 2, quorum=1, reset_timeout=0.1) as (one, other):
        one.breaker.force_open()
        await anyio.sleep(0.2)
        assert other.breaker.state is BreakerState.CLOSED
        assert one.fleet.statistics().reports_published == 0
        one.breaker.reset()
        # A follower whose half-open probe fails has its own evidence: that opening is reported.
        other.breaker.trip("fleet_quorum")  # as if the fleet had tripped it
        await _eventually(lambda: other.breaker.state is BreakerState.HALF_OPEN)
        with pytest.raises(RuntimeError):
            await other.breaker.call(_fail)
        await _eventually(lambda: one.breaker.state is BreakerState.OPEN)
        assert one.reasons()[-1] == "fleet_quorum"
        assert set(await _reporters(redis_url)) == {"node-1"}


async def test_a_disabled_breaker_is_not_tripped(anyio_backend: Any, redis_url: str) -> None:
    async with _fleet(redis_url, 2, quorum=1) as (sick, other):
        other.breaker.disable()
        await _trip_locally(sick.breaker)
        await _eventually(lambda: other.fleet.statistics().last_reporters == 1)
        await anyio.sleep(0.1)
        assert other.breaker.state is BreakerState.CLOSED
        assert other.fleet.statistics().quorum_trips == 0


async def test_exit_stops_the_watcher(anyio_backend: Any, redis_url: str) -> None:
    before = asyncio.all_tasks()
    async with RedisBackend(redis_url, instance="solo") as backend:
        fleet = FleetBreaker(backend, _breaker(), quorum=1, poll_interval=0.05)
        async with fleet:
            await _eventually(lambda: fleet.statistics().polls > 1)
            assert len(asyncio.all_tasks() - before) >= 2
            with pytest.raises(RuntimeError, match="already running"):
                await fleet.__aenter__()
        await anyio.lowlevel.checkpoint()
        assert asyncio.all_tasks() - before == set()
        async with fleet:  # it can be entered again after exit
            await _eventually(lambda: fleet.statistics().polls > 2)
    assert asyncio.all_tasks() - before == set()


async def test_close_detaches_from_the_local_breaker(anyio_backend: Any, redis_url: str) -> None:
    async with RedisBackend(redis_url, instance="solo") as backend:
        breaker = _breaker()
        fleet = FleetBreaker(backend, breaker, quorum=1, poll_interval=0.05)
        assert len(breaker._listeners) == 1
        fleet.close()
        fleet.close()  # idempotent
        assert len(breaker._listeners) == 0
        await _trip_locally(breaker)
        assert not fleet.statistics().reports_pending
        with pytest.raises(RuntimeError, match="closed"):
            await fleet.__aenter__()


async def test_cancelling_the_body_stops_the_watcher(anyio_backend: Any, redis_url: str) -> None:
    before = asyncio.all_tasks()
    async with RedisBackend(redis_url, instance="solo") as backend:
        fleet = FleetBreaker(backend, _breaker(), quorum=1, poll_interval=0.05)
        with anyio.move_on_after(0.2) as scope:
            async with fleet:
                await anyio.sleep(10)
        assert scope.cancelled_caught
        assert asyncio.all_tasks() - before == set()


# -- Redis killed mid-run -----------------------------------------------------------------------


async def test_redis_killed_mid_run_falls_back_and_resumes(anyio_backend: Any) -> None:
    def guard() -> CircuitBreaker:
        return CircuitBreaker(
            "guard", max_failures=1, reset_timeout=0.2, half_open_successes=1, timeout=2.0
        )

    with RedisServer() as server:
        async with _fleet(server.url, 3, quorum=1, poll_interval=0.05, guard=guard) as nodes:
            sick, *others = nodes
            server.stop()
            for node in nodes:
                await _eventually(node.is_local_only, what="fallback")
            # Calls go on, decided by the local breakers alone.
            for node in others:
                assert await node.breaker.call(_ok) == "ok"
            await _trip_locally(sick.breaker)
            await anyio.sleep(0.5)  # several failing polls and publishes: still one event each
            for node in others:
                assert node.breaker.state is BreakerState.CLOSED
                assert await node.breaker.call(_ok) == "ok"
            for node in nodes:
                assert len(node.of_type(FleetFallback)) == 1
                assert node.of_type(FleetRestored) == []
            assert sick.fleet.statistics().reports_pending == 1
            server.start()
            for node in others:  # the missed report is published on return and followed
                await _eventually(node.is_open)
                assert node.reasons() == ["fleet_quorum"]
            for node in nodes:
                await _eventually(node.is_shared, what="restored")
                assert [type(e) for e in node.of_type(FleetFallback, FleetRestored)] == [
                    FleetFallback,
                    FleetRestored,
                ]
                assert node.fleet.statistics().fallbacks == 1
            assert set(await _reporters(server.url)) == {"node-0"}
            assert sick.fleet.statistics().reports_pending == 0


async def test_a_restart_that_lost_reports_gets_them_again(anyio_backend: Any) -> None:
    """Redis restarted (data gone) between two polls: the reporter publishes its report again."""

    def guard() -> CircuitBreaker:
        return CircuitBreaker(
            "guard", max_failures=1, reset_timeout=0.1, half_open_successes=1, timeout=2.0
        )

    with RedisServer() as server:
        async with _fleet(server.url, 1, quorum=1, guard=guard) as (sick,):
            await _trip_locally(sick.breaker)
            await _eventually(lambda: sick.fleet.statistics().reports_published == 1)
            server.restart()
            await _eventually(lambda: sick.fleet.statistics().reports_published == 2)
            assert set(await _reporters(server.url)) == {"node-0"}


async def test_a_report_that_vanished_is_published_again(
    anyio_backend: Any, redis_url: str
) -> None:
    """No error seen, but the report is gone (a restart between polls): it comes back."""
    import redis.asyncio as redis_asyncio

    async with _fleet(redis_url, 2, quorum=1) as (sick, other):
        await _trip_locally(sick.breaker)
        await _eventually(other.is_open)
        before = await _reporters(redis_url)
        async with redis_asyncio.Redis.from_url(redis_url) as client:
            await client.flushall()
        await _eventually(lambda: sick.fleet.statistics().reports_published == 2)
        assert await _reporters(redis_url) == before  # with its original score
        assert other.fleet.statistics().quorum_trips == 1  # the same report is not followed twice


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"quorum": 0}, ValueError),
        ({"quorum": -1}, ValueError),
        ({"quorum": 1.5}, TypeError),
        ({"quorum": True}, TypeError),
        ({"window": 0}, ValueError),
        ({"window": -1.0}, ValueError),
        ({"window": math.nan}, ValueError),
        ({"window": math.inf}, ValueError),
        ({"window": "30"}, TypeError),
        ({"poll_interval": 0}, ValueError),
        ({"poll_interval": math.nan}, ValueError),
        ({"poll_interval": math.inf}, ValueError),
        ({"poll_interval": False}, TypeError),
        ({"name": ""}, ValueError),
        ({"clock": 3}, TypeError),
    ],
)
def test_bad_config_is_refused(kwargs: dict[str, Any], error: type[Exception]) -> None:
    backend = RedisBackend("redis://127.0.0.1:1/0")
    with pytest.raises(error):
        FleetBreaker(backend, _breaker(), **kwargs)


def test_wrong_collaborators_are_refused() -> None:
    backend = RedisBackend("redis://127.0.0.1:1/0")
    with pytest.raises(TypeError, match="backend"):
        FleetBreaker("redis://", _breaker())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="breaker"):
        FleetBreaker(backend, object())  # type: ignore[arg-type]


# -- several processes --------------------------------------------------------------------------

# One member per process: tests/fleet_member.py (shared with tests/test_redis_membership.py).
FLEET_MEMBER = str(Path(__file__).with_name("fleet_member.py"))


class Child:
    """A fleet member in its own process, driven line by line over stdin/stdout."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self.buffer = b""

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(line.encode() + b"\n")

    async def expect(self, line: str, within: float = 10.0) -> None:
        """Wait for ``line``; fail after ``within`` seconds (lines before it are skipped)."""
        assert self.process.stdout is not None
        with anyio.fail_after(within):
            while True:
                while b"\n" in self.buffer:
                    got, self.buffer = self.buffer.split(b"\n", 1)
                    if got.decode().strip() == line:
                        return
                self.buffer += await self.process.stdout.receive()

    def lines_so_far(self) -> list[str]:
        return [line for line in self.buffer.decode().splitlines() if line]


@asynccontextmanager
async def _children(url: str | FleetRedis, count: int, quorum: int) -> AsyncIterator[list[Child]]:
    async with AsyncExitStack() as stack:
        children = []
        for i in range(count):
            process = await stack.enter_async_context(
                await anyio.open_process(
                    [
                        sys.executable,
                        FLEET_MEMBER,
                        *_on(url).argv(),
                        f"proc-{i}",
                        str(quorum),
                        "30",
                        "0.1",
                        "-",
                        "0.25",
                    ],
                    stderr=None,
                )
            )
            children.append(Child(process))
        for child in children:
            await child.expect("ready", within=20.0)
        try:
            yield children
        finally:
            for child in children:
                await _quietly(child.send("quit"))
            with anyio.move_on_after(5):
                for child in children:
                    await child.process.wait()
            for child in children:
                if child.process.returncode is None:
                    child.process.kill()


async def _quietly(step: Awaitable[None]) -> None:
    with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await step


async def test_processes_follow_one_opening_with_quorum_one(
    anyio_backend: Any, redis_url: str
) -> None:
    """4 processes: one callee fails and its breaker trips; the other 3 open by quorum."""
    async with _children(redis_url, 4, quorum=1) as (sick, *others):
        await sick.send("fail")
        await sick.expect("event OPEN consecutive_failures")
        for child in others:
            await child.expect("event OPEN fleet_quorum", within=5.0)
            await child.send("call")
            await child.expect("call rejected False")


@pytest.mark.cluster_on_asyncio
async def test_processes_need_two_reporters_with_quorum_two(
    anyio_backend: Any, fleet_redis: FleetRedis
) -> None:
    """4 processes, quorum 2: one sick instance does not open the others; a second one does."""
    async with _children(fleet_redis, 4, quorum=2) as (first, second, *others):
        await first.send("fail")
        await first.expect("event OPEN consecutive_failures")
        await anyio.sleep(0.5)  # about 5 polls of every follower
        for child in (second, *others):
            await child.send("call")
            await child.expect("call ok True")
        await second.send("fail")
        await second.expect("event OPEN consecutive_failures")
        for child in others:
            await child.expect("event OPEN fleet_quorum", within=5.0)
            await child.send("call")
            await child.expect("call rejected False")
