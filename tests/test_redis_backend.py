"""RedisBackend and FallbackTracker against a real redis-server on loopback."""

from __future__ import annotations

import gc
import socket
import time
import warnings
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest
import redis.asyncio as redis_asyncio
from conftest import FleetRedis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    MasterDownError,
    ReadOnlyError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)

from dwcp_resilience import BreakerState, CircuitBreaker, Event
from dwcp_resilience.redis import (
    BackendUnavailable,
    FallbackTracker,
    FleetFallback,
    FleetRestored,
    RedisBackend,
)
from dwcp_resilience.redis.replicated import RedisClusterServer
from dwcp_resilience.redis.server import RedisServer, free_port
from dwcp_resilience.testing import FakeClock, RecordingListener

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


async def test_run_reaches_redis_and_keys_are_namespaced(
    anyio_backend: Any, fleet_redis: FleetRedis
) -> None:
    async with fleet_redis.backend(namespace="fleet-a", instance="node-1") as backend:
        assert backend.cluster is fleet_redis.cluster
        assert await backend.ping()
        key = backend.key("limiter", "api", "tat")
        assert key == "{fleet-a:limiter:api}:tat"
        assert backend.key("limiter", "api") == "{fleet-a:limiter:api}"
        await backend.run(backend.client.set, key, b"1", px=5_000)
        assert await backend.run(backend.client.get, key) == b"1"
        assert 0 < await backend.client.pttl(key) <= 5_000
        assert backend.instance == "node-1"
        assert "fleet-a" in repr(backend) and "closed" in repr(backend)


def test_keys_of_one_primitive_share_a_slot() -> None:
    """The hash tag: every key of one kind and name in one slot, whatever the parts (a name with
    braces included); other names spread over the slots."""
    backend = RedisBackend("redis://127.0.0.1:1/0", namespace="shop")
    for name in ("api", "a}b", "{x}", "payments:eu"):
        slots = {key_slot(backend.key("budget", name, *parts).encode()) for parts in PARTS}
        assert len(slots) == 1, name
    spread = {key_slot(backend.key("limiter", f"name-{i}").encode()) for i in range(100)}
    assert len(spread) > 90


PARTS: list[tuple[str, ...]] = [(), ("buckets",), ("seq", "host:1:ab", "cd"), ("opened",)]


async def test_default_instance_is_unique_per_backend(anyio_backend: Any, redis_url: str) -> None:
    async with RedisBackend(redis_url) as one, RedisBackend(redis_url) as two:
        assert one.instance != two.instance
        assert one.instance == one.instance  # stable once drawn


async def test_script_errors_propagate_and_do_not_trip_the_guard(
    anyio_backend: Any, fleet_redis: FleetRedis
) -> None:
    async with fleet_redis.backend() as backend:
        broken = backend.register_script("return redis.call('NOSUCHCOMMAND')")
        for _ in range(5):
            with pytest.raises(ResponseError):
                await backend.run(broken, keys=[], args=[])
        assert backend.breaker.state is BreakerState.CLOSED
        script = backend.register_script("return tonumber(ARGV[1]) + 1")
        assert await backend.run(script, keys=[], args=[41]) == 42


async def test_dead_redis_is_unavailable_then_fails_fast_then_recovers(anyio_backend: Any) -> None:
    with RedisServer() as server:
        guard = CircuitBreaker(
            "guard", max_failures=2, reset_timeout=0.3, half_open_successes=1, timeout=2.0
        )
        async with RedisBackend(server.url, timeout=2.0, breaker=guard) as backend:
            assert await backend.ping()
            server.stop()
            for _ in range(2):
                with pytest.raises(BackendUnavailable) as failed:
                    await backend.run(backend.client.ping)
                assert failed.value.__cause__ is not None
            assert guard.state is BreakerState.OPEN
            started = time.monotonic()
            for _ in range(100):  # the guard answers: no connect attempt per call
                assert not await backend.ping()
            assert guard.statistics().rejected >= 100
            assert time.monotonic() - started < 5.0  # sanity bound, not a benchmark
            server.start()
            deadline = time.monotonic() + 5.0
            while not await backend.ping():
                assert time.monotonic() < deadline, "never reconnected"
                await anyio.sleep(0.05)
            assert guard.statistics().state is BreakerState.CLOSED


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"namespace": ""}, ValueError),
        ({"namespace": 3}, TypeError),
        ({"instance": ""}, ValueError),
        ({"timeout": 0}, ValueError),
        ({"timeout": -1.0}, ValueError),
        ({"timeout": float("nan")}, ValueError),
        ({"timeout": float("inf")}, ValueError),
        ({"timeout": "1"}, TypeError),
        ({"namespace": "a{b"}, ValueError),
        ({"namespace": "a}b"}, ValueError),
        ({"cluster": 1}, TypeError),
        ({"client": "redis://127.0.0.1:1/0"}, TypeError),
        ({"client": redis_asyncio.Redis(), "cluster": True}, ValueError),
    ],
)
def test_bad_config_is_refused(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        RedisBackend("redis://127.0.0.1:1/0", **kwargs)


@pytest.mark.parametrize(
    "error",
    [
        ClusterDownError("CLUSTERDOWN The cluster is down"),
        MasterDownError("MASTERDOWN Link with MASTER is down"),
        ClusterError("TTL exhausted."),
        TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
        SlotNotCoveredError('Slot "42" is not covered by the cluster.'),
        ReadOnlyError("READONLY You can't write against a read only replica."),
    ],
    ids=lambda error: type(error).__name__,
)
async def test_a_failing_over_deployment_is_unavailable_not_a_bug(
    anyio_backend: Any, error: Exception
) -> None:
    """What a cluster or a replica says during a failover or a resharding is an outage: the call
    falls back (BackendUnavailable) and counts in the guard; a script error stays a bug."""
    backend = RedisBackend("redis://127.0.0.1:1/0")

    async def failing() -> None:
        raise error

    with pytest.raises(BackendUnavailable) as caught:
        await backend.run(failing)
    assert caught.value.__cause__ is error
    assert backend.breaker.statistics().failures == 1


def test_fallback_tracker_emits_one_event_per_change() -> None:
    clock = FakeClock()
    recorder: RecordingListener[Event] = RecordingListener()
    tracker = FallbackTracker("limiter:api", [recorder], clock=clock)
    assert tracker.shared
    tracker.succeeded()
    cause = ConnectionError("refused")
    try:
        raise BackendUnavailable("down") from cause
    except BackendUnavailable as exc:
        for _ in range(3):
            tracker.failed(exc)
    assert not tracker.shared and tracker.fallbacks == 1
    clock.advance(2.5)
    tracker.succeeded()
    tracker.succeeded()
    assert tracker.shared
    events = recorder.events
    assert [type(e) for e in events] == [FleetFallback, FleetRestored]
    fallback, restored = events
    assert isinstance(fallback, FleetFallback) and "refused" in fallback.reason
    assert isinstance(restored, FleetRestored) and restored.down_for == pytest.approx(2.5)
    assert fallback.policy == restored.policy == "limiter:api"


async def test_a_cancelled_call_is_neutral_and_the_backend_stays_usable(
    anyio_backend: Any, redis_url: str
) -> None:
    """Cancelled while Redis holds the reply (a blocking BLPOP): no failure counted, nothing in
    flight, and the next call works on a sound connection."""
    async with RedisBackend(redis_url, timeout=5.0) as backend:
        with anyio.move_on_after(0.2) as scope:
            await backend.run(backend.client.blpop, ["never-filled"], timeout=3)
        assert scope.cancelled_caught
        stats = backend.breaker.statistics()
        assert (stats.failures, stats.inflight, stats.state) == (0, 0, BreakerState.CLOSED)
        assert await backend.ping()
        await backend.run(backend.client.rpush, "list", b"x")
        assert await backend.run(backend.client.lpop, "list") == b"x"


async def test_closing_in_a_cancelled_scope_leaves_no_socket_open(
    anyio_backend: Any, redis_url: str
) -> None:
    """A task group shutting down closes its backend inside a cancelled scope: the close still
    runs to its end (the cancellation is raised after it), and no connection is left open."""
    backend = RedisBackend(redis_url)
    assert await backend.ping()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await backend.aclose()
        pytest.fail("aclose() swallowed the cancellation")
    assert scope.cancelled_caught
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], caught


# -- Redis Cluster -----------------------------------------------------------------------------


async def test_a_cluster_client_passed_in_is_used_and_not_closed(
    anyio_backend: Any, redis_cluster: RedisClusterServer
) -> None:
    client = RedisCluster.from_url(redis_cluster.url)
    try:
        async with RedisBackend(client=client, namespace="given") as backend:
            assert backend.cluster and backend.client is client
            key = backend.key("limiter", "api")
            await backend.run(client.set, key, b"1", px=5_000)
            assert await client.get(key) == b"1"
        assert await client.get(key) == b"1"  # still open: the caller owns it
    finally:
        await client.aclose()


async def test_connect_learns_the_slots_or_gives_up_quietly(
    anyio_backend: Any, redis_cluster: RedisClusterServer
) -> None:
    async with RedisBackend(redis_cluster.url, cluster=True) as backend:
        assert await backend.connect()  # async with did it; again, it asks a node for the slots
        assert await backend.run(backend.client.ping)
    nobody = RedisBackend(f"redis://127.0.0.1:{free_port()}", cluster=True, timeout=0.1)
    started = time.monotonic()
    assert not await nobody.connect()  # refused: no exception, the first calls fall back
    assert time.monotonic() - started < 5.0  # sanity bound (at most max(1 s, 4 * timeout))
    with pytest.raises(BackendUnavailable):
        await nobody.run(nobody.client.ping)
    await nobody.aclose()
    assert await RedisBackend("redis://127.0.0.1:1/0").connect()  # one server: nothing to learn


async def test_cancelling_connect_propagates(anyio_backend: Any) -> None:
    """A node that accepts and never answers: connect() waits, and a cancellation ends it at once
    (the cancellation is not swallowed as a failed connect)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        backend = RedisBackend(f"redis://127.0.0.1:{port}", cluster=True, timeout=5.0)
        started = time.monotonic()
        with anyio.move_on_after(0.1) as scope:
            await backend.connect()
        assert scope.cancelled_caught
        assert time.monotonic() - started < 2.0  # not the socket timeout (5 s)
        await backend.aclose()


async def test_a_burst_of_first_calls_fetches_the_slots_once_and_keeps_the_guard_closed(
    anyio_backend: Any, redis_cluster: RedisClusterServer
) -> None:
    """Fifty calls at once on a backend that has not learned the cluster's slots (no connect()):
    one fetches them, the others fall back at once without counting as Redis failures (three in
    a row would open the guard for a second with Redis fine), and every call after works."""
    async with AsyncExitStack() as stack:
        backend = RedisBackend(redis_cluster.url, cluster=True)
        stack.push_async_callback(backend.aclose)
        answers: list[bool] = []

        async def ping() -> None:
            answers.append(await backend.ping())

        async with anyio.create_task_group() as group:
            for _ in range(50):
                group.start_soon(ping)
        assert len(answers) == 50 and True in answers, answers
        stats = backend.breaker.statistics()
        assert (stats.state, stats.failures) == (BreakerState.CLOSED, 0), stats
        assert all([await backend.ping() for _ in range(5)])


async def test_a_slot_map_slower_than_one_call_is_still_learned(
    anyio_backend: Any, redis_cluster: RedisClusterServer
) -> None:
    """A cluster client fetches the slot map and command table (about 0.05 s on an idle loopback,
    several times that on a loaded machine) inside its first command. Cut at the call's deadline,
    redis-py tears the half-built client down and leaves sockets open, and every next call was cut
    again, so the backend stayed on local state for good (CI: a failover test's members never got
    to shared state). Now the fetch runs outside the deadline, bounded by the client's socket
    timeouts (per read; 1 s here): with a 2 ms deadline, far below the fetch's time, calls reach
    the cluster, and no socket is left open (the suite turns ResourceWarning into an error).
    Before, this test ran out of time."""
    client = RedisCluster.from_url(
        redis_cluster.url,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
    )
    backend = RedisBackend(client=client, timeout=0.002)  # no `async with`: no connect() first
    try:
        deadline = time.monotonic() + 10.0
        while not await backend.ping():  # a ping on loopback takes well under 2 ms
            assert time.monotonic() < deadline, "never on the cluster"
            await anyio.sleep(0.01)
    finally:
        await client.aclose()
    gc.collect()
