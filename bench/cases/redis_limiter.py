"""A Redis-backed rate limiter acquire: ours next to limits' Redis storage and pyrate-limiter's Redis
buckets, against one throwaway ``redis-server`` on loopback (started at the first row, stopped at
exit), with a bare ``PING`` round trip as the floor; and ours again on a throwaway Redis Cluster of
3 primaries and 3 replicas on loopback (``RedisBackend(url, cluster=True)``: redis-py's
``RedisCluster``, which routes each ``EVALSHA`` by its key's slot), with a routed ``GET`` as its floor.

Every row is built with tokens no run can exhaust (1e9/s, a burst of 1e9), so each call takes the
"tokens are there" path; each ``verify`` proves the row limits with a tight configuration, on a key
of its own. Ours is timed twice: as shipped (leases: one round trip serves up to 64 acquires of
this process while the shared bucket is more than half full) and with ``lease_max=1`` (one
``EVALSHA`` per acquire, like the peers). limits uses its redis-py implementation
(``implementation="redispy"``: coredis is not installed) and its cheapest strategy, the fixed window.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import itertools
from typing import Any

from dwcp_resilience import RateLimited
from dwcp_resilience.redis import RedisBackend, RedisRateLimiter
from dwcp_resilience.redis.replicated import RedisClusterServer
from dwcp_resilience.redis.server import RedisServer

from ..harness import Call, Case, Contender, Op

RATE = 1e9
BURST = 1_000_000_000

# The cluster rows' clients, kept for the whole run (the harness has no teardown): a RedisCluster
# collected while its loop runs reports itself unclosed through the loop's exception handler.
_kept: list[object] = []

_server: RedisServer | None = None
_cluster: RedisClusterServer | None = None
_keys = itertools.count()


def _url() -> str:
    """The case's redis-server (started on first use, stopped at exit)."""
    global _server
    if _server is None:
        _server = RedisServer()
        _server.start()
        atexit.register(_server.close)
    return _server.url


def _cluster_url() -> str:
    """The case's Redis Cluster (started on first use, stopped at exit)."""
    global _cluster
    if _cluster is None:
        _cluster = RedisClusterServer(3, 1)
        _cluster.start()
        atexit.register(_cluster.close)
    return _cluster.url


def _unique(prefix: str) -> str:
    return f"{prefix}-{next(_keys)}"


# -- ours ----------------------------------------------------------------------------------------


async def ours_make(op: Op) -> Call:
    limiter = RedisRateLimiter(RedisBackend(_url()), _unique("bench"), rate=RATE, burst=BURST)
    return functools.partial(limiter.call, op)


async def ours_no_lease_make(op: Op) -> Call:
    backend = RedisBackend(_url())
    limiter = RedisRateLimiter(backend, _unique("bench"), rate=RATE, burst=BURST, lease_max=1)
    return functools.partial(limiter.call, op)


async def ours_verify() -> None:
    backend = RedisBackend(_url())
    tight = RedisRateLimiter(backend, _unique("verify"), rate=1, burst=3, max_wait=0)
    assert [await tight.try_acquire() for _ in range(4)] == [True, True, True, False]
    try:
        await tight.call(asyncio.sleep, 0)
    except RateLimited:
        pass
    else:
        raise AssertionError("limiter admitted past its burst")
    pacing = RedisRateLimiter(backend, _unique("verify"), rate=50, burst=1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(3):
        async with pacing:
            pass
    assert loop.time() - start >= 2 / 50 - 2e-3, "limiter did not pace"
    leasing = RedisRateLimiter(backend, _unique("verify"), rate=RATE, burst=BURST)
    for _ in range(100):
        await leasing.acquire()
    stats = leasing.statistics()
    assert stats.leased > 0 and stats.round_trips < 100, stats
    await backend.aclose()


# -- ours on a Redis Cluster ---------------------------------------------------------------------


def _cluster_make(*, lease_max: int | None) -> Any:
    async def make(op: Op) -> Call:
        backend = RedisBackend(_cluster_url(), cluster=True)
        _kept.append(backend)
        await backend.connect()
        limiter = RedisRateLimiter(
            backend, _unique("bench"), rate=RATE, burst=BURST, lease_max=lease_max
        )
        return functools.partial(limiter.call, op)

    return make


async def cluster_verify() -> None:
    async with RedisBackend(_cluster_url(), cluster=True) as backend:
        tight = RedisRateLimiter(backend, _unique("verify"), rate=1, burst=3, max_wait=0)
        assert [await tight.try_acquire() for _ in range(4)] == [True, True, True, False]
        assert tight.statistics().shared == 3, "the cluster row did not use shared state"
        leasing = RedisRateLimiter(backend, _unique("verify"), rate=RATE, burst=BURST)
        for _ in range(100):
            await leasing.acquire()
        stats = leasing.statistics()
        assert stats.leased > 0 and stats.round_trips < 100 and stats.local == 0, stats


async def cluster_get_make(op: Op) -> Call:
    from redis.asyncio.cluster import RedisCluster

    client = RedisCluster.from_url(_cluster_url())
    _kept.append(client)
    await client.initialize()
    get = client.get
    key = _unique("floor")

    async def run() -> Any:
        await get(key)  # routed by the key's slot to its primary: one round trip
        return await op()

    return run


# -- limits (redis-py implementation) -----------------------------------------------------------


def _limits() -> Any:
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import FixedWindowRateLimiter

    storage = RedisStorage("async+" + _url().removesuffix("/0"), implementation="redispy")
    return FixedWindowRateLimiter(storage)


async def limits_make(op: Op) -> Call:
    from limits import parse

    limiter = _limits()
    item = parse(f"{BURST}/second")
    hit = limiter.hit
    key = _unique("bench")

    async def run() -> Any:
        if not await hit(item, key):
            raise RateLimited("limits")
        return await op()

    return run


async def limits_verify() -> None:
    from limits import parse

    limiter = _limits()
    item = parse("3/hour")
    key = _unique("verify")
    assert [await limiter.hit(item, key) for _ in range(4)] == [True, True, True, False]


# -- pyrate-limiter ------------------------------------------------------------------------------


async def _pyrate(limit: int, per: Any, *, state: bool) -> Any:
    import redis.asyncio as redis_asyncio
    from pyrate_limiter import GCRA, Limiter, Rate, RedisBucket, RedisStateStore, StateBucket

    client = redis_asyncio.Redis.from_url(_url())
    rates = [Rate(limit, per)]
    key = _unique("pyrate")
    if state:
        return Limiter(StateBucket(rates, GCRA(), RedisStateStore(client, key)))
    return Limiter(await RedisBucket.init(rates, client, key))


def _pyrate_make(*, state: bool) -> Any:
    async def make(op: Op) -> Call:
        from pyrate_limiter import Duration

        limiter = await _pyrate(BURST, Duration.SECOND, state=state)
        try_acquire = limiter.try_acquire_async

        async def run() -> Any:
            if not await try_acquire("bench", blocking=False):
                raise RateLimited("pyrate")
            return await op()

        return run

    return make


def _pyrate_verify(*, state: bool) -> Any:
    async def verify() -> None:
        from pyrate_limiter import Duration

        limiter = await _pyrate(3, Duration.HOUR, state=state)
        results = [await limiter.try_acquire_async("v", blocking=False) for _ in range(4)]
        assert results == [True, True, True, False], results

    return verify


# -- the floor -----------------------------------------------------------------------------------


async def ping_make(op: Op) -> Call:
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(_url())
    ping = client.ping

    async def run() -> Any:
        await ping()
        return await op()

    return run


async def ping_verify() -> None:
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(_url())
    assert await client.ping()
    await client.aclose()


CASES = [
    Case(
        key="redis_limiter",
        title=(
            "Redis-backed rate limiter acquire, tokens plentiful (one local redis-server; "
            "a local Redis Cluster)"
        ),
        note=(
            "Ratio = time per acquire + op over a bare `await op()`. The PING row is one "
            "round trip through redis-py: the floor of any design that asks Redis every time. "
            "The last three rows run on a 3-primary, 3-replica Redis Cluster on the same machine "
            "(redis-py's RedisCluster client)."
        ),
        contenders=[
            Contender(
                "dwcp_resilience RedisRateLimiter.call (leases, default)",
                ours_make,
                ours_verify,
                ours=True,
            ),
            Contender(
                "dwcp_resilience RedisRateLimiter.call, lease_max=1 (1 EVALSHA/acquire)",
                ours_no_lease_make,
                ours=True,
            ),
            Contender(
                "limits fixed window, aio RedisStorage (redispy), hit()", limits_make, limits_verify
            ),
            Contender(
                "pyrate-limiter RedisBucket, try_acquire_async(blocking=False)",
                _pyrate_make(state=False),
                _pyrate_verify(state=False),
            ),
            Contender(
                "pyrate-limiter StateBucket(GCRA, RedisStateStore), try_acquire_async",
                _pyrate_make(state=True),
                _pyrate_verify(state=True),
            ),
            Contender("redis-py `await client.ping()` (the floor)", ping_make, ping_verify),
            Contender(
                "dwcp_resilience RedisRateLimiter.call on a Redis Cluster (leases, default)",
                _cluster_make(lease_max=None),
                cluster_verify,
                ours=True,
            ),
            Contender(
                "dwcp_resilience RedisRateLimiter.call on a Redis Cluster, lease_max=1",
                _cluster_make(lease_max=1),
                ours=True,
            ),
            Contender(
                "redis-py RedisCluster `await client.get(key)` (the cluster's floor)",
                cluster_get_make,
            ),
        ],
    ),
]
