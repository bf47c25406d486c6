"""Test harness: every async test runs on three backends through anyio's pytest plugin.

- ``asyncio``: a looptime loop, so sleeps and timeouts run in virtual time;
- ``trio``: ``MockClock(autojump_threshold=0)``, virtual time as well;
- ``uvloop``: real time (looptime cannot patch uvloop); virtual-time-only tests skip it via the
  ``virtual_time`` marker.

Tests marked ``real_time`` (real sockets, threads, processes) run on all three in real time; tests
marked ``redis`` run on asyncio and uvloop in real time (``redis.asyncio`` has no trio support).

Use ``pytestmark = pytest.mark.anyio`` in a module, plus ``@pytest.mark.virtual_time`` on tests that
sleep for long stretches (they then run on asyncio and trio only).
"""

from __future__ import annotations

import os
import shutil
import sys

if os.environ.get("DWCP_SIMULATE_PY314"):
    # CPython 3.14 (gh-129898) keeps asyncio.tasks._current_tasks but no longer fills it, and has no
    # _asyncio._current_tasks: simulate that before the package is first imported.
    if sys.version_info < (3, 12):
        raise RuntimeError("DWCP_SIMULATE_PY314 needs CPython 3.12+ (3.11's current_task reads it)")
    import _asyncio
    import asyncio.tasks

    asyncio.tasks._current_tasks = {}
    if hasattr(_asyncio, "_current_tasks"):
        del _asyncio._current_tasks
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import looptime
import pytest
import redis
import trio.testing
import uvloop

if TYPE_CHECKING:
    from dwcp_resilience.redis import RedisBackend
    from dwcp_resilience.redis.replicated import RedisClusterServer
    from dwcp_resilience.redis.server import RedisServer

_REDIS_PY_MAJOR = int(redis.__version__.split(".")[0])

BACKENDS = [
    pytest.param(("asyncio", {"loop_factory": looptime.new_event_loop}), id="asyncio"),
    pytest.param(("trio", {"clock": None}), id="trio"),
    pytest.param(("asyncio", {"loop_factory": uvloop.new_event_loop}), id="uvloop"),
]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    name, options = request.param
    is_uvloop = options.get("loop_factory") is uvloop.new_event_loop
    if is_uvloop and request.node.get_closest_marker("virtual_time") is not None:
        pytest.skip("needs virtual time; looptime cannot patch uvloop")
    if request.node.get_closest_marker("redis") is not None:
        # redis.asyncio is asyncio-only, and a real server answers in real time.
        if name == "trio":
            pytest.skip("redis.asyncio does not run on trio")
        return name, {} if not is_uvloop else dict(options)
    if request.node.get_closest_marker("real_time") is not None:
        # Real sockets, threads or processes: every backend in real time (no virtual clock).
        return name, {} if not is_uvloop else dict(options)
    if name == "trio":
        # A fresh MockClock per test: virtual time starts from zero every time.
        return name, {"clock": trio.testing.MockClock(autojump_threshold=0)}
    return name, dict(options)


@pytest.fixture
def backend_name(anyio_backend: tuple[str, dict[str, Any]]) -> str:
    """'asyncio', 'uvloop' or 'trio'."""
    name, options = anyio_backend
    if options.get("loop_factory") is uvloop.new_event_loop:
        return "uvloop"
    return name


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "virtual_time: needs virtual time (skipped on uvloop)")
    config.addinivalue_line("markers", "slow: a longer test (still run in CI)")
    config.addinivalue_line(
        "markers", "redis: needs the real redis-server (asyncio and uvloop, real time; no trio)"
    )
    config.addinivalue_line(
        "markers", "real_time: real sockets, threads or processes (every backend, real time)"
    )
    if _REDIS_PY_MAJOR < 8:
        # redis-py < 8's asyncio RedisCluster drops the node objects (and their sockets) of an
        # old slot map without closing them when it refreshes it (after MOVED, a failover): the
        # lowest-versions session sees ResourceWarnings raised from its __del__ at random points.
        # The locked redis-py (the gate) keeps every warning an error.
        for message in ("<function ClusterNode.__del__", "<socket.socket fd=-1"):
            config.addinivalue_line(
                "filterwarnings",
                f"ignore:Exception ignored in. {message}:pytest.PytestUnraisableExceptionWarning",
            )
    config.addinivalue_line(
        "markers",
        "cluster_on_asyncio: its Redis Cluster or Sentinel runs use the asyncio loop only (not "
        "collected on uvloop: the same redis-py client code, and long real-time tests)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the uvloop runs of the ``cluster_on_asyncio`` tests that use a cluster or
    Sentinel: every ``fleet_redis="cluster"`` run, or every run when there is no such parameter.
    They are not skipped (CI runs everything it collects): the asyncio runs cover them."""
    kept, left_out = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        on_uvloop = "uvloop" in getattr(getattr(item, "callspec", None), "id", "")
        if (
            on_uvloop
            and item.get_closest_marker("cluster_on_asyncio") is not None
            and params.get("fleet_redis", "cluster") == "cluster"
        ):
            left_out.append(item)
        else:
            kept.append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


@pytest.fixture(scope="session")
def promtool() -> str:
    """The promtool binary (Debian package prometheus): skipped locally without it, failed in CI."""
    found = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(found).exists():
        if os.environ.get("CI"):
            pytest.fail(
                "promtool is missing (Debian package prometheus; scripts/install-sysdeps.sh)"
            )
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return found


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server on a free loopback port for the whole session."""
    from dwcp_resilience.redis.server import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL, emptied for this test (restarted first if a test killed it)."""
    import redis

    redis_server.start()
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


def _need_redis_tools() -> None:
    """redis-server and redis-cli (Debian packages redis-server, redis-tools): skipped locally
    without them, failed in CI (scripts/install-sysdeps.sh installs them)."""
    missing = [tool for tool in ("redis-server", "redis-cli") if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{', '.join(missing)} missing (scripts/install-sysdeps.sh installs them)")
        pytest.skip(
            f"{', '.join(missing)} not installed (Debian packages redis-server, redis-tools)"
        )


#: ``cluster-node-timeout`` of the session's cluster (ms): a killed primary's replica takes over
#: after about twice that; short, so the failover tests stay short.
CLUSTER_NODE_TIMEOUT = 500


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServer]:
    """One real Redis Cluster, 3 primaries and 3 replicas on free loopback ports, for the session.

    Tests that kill a node or move a slot put the cluster back in shape before they end (the killed
    node revived, the cluster healthy); slots may end up on other primaries than they started on.
    """
    _need_redis_tools()
    from dwcp_resilience.redis.replicated import RedisClusterServer

    with RedisClusterServer(3, 1, node_timeout=CLUSTER_NODE_TIMEOUT) as cluster:
        yield cluster


@dataclass(frozen=True)
class FleetRedis:
    """Where a parametrized fleet test keeps its shared state: one server or a cluster."""

    kind: str  # "server" or "cluster"
    url: str

    @property
    def cluster(self) -> bool:
        return self.kind == "cluster"

    def backend(self, **kwargs: Any) -> RedisBackend:
        """A ``RedisBackend`` on this deployment (``kwargs`` as ``RedisBackend`` takes them; the
        per-call timeout is 2 s unless given, so a loaded machine does not make calls fall back)."""
        from dwcp_resilience.redis import RedisBackend

        kwargs.setdefault("timeout", 2.0)
        return RedisBackend(self.url, cluster=self.cluster, **kwargs)

    def sync_client(self) -> Any:
        """A synchronous client for looking at the keys (``KEYS`` asks every primary)."""
        import redis

        if self.cluster:
            return redis.RedisCluster.from_url(self.url)
        return redis.Redis.from_url(self.url)

    def argv(self) -> list[str]:
        """The URL and the kind, for a child process: ``RedisBackend(url, cluster=kind == ...)``."""
        return [self.url, self.kind]


@pytest.fixture(params=["server", "cluster"])
def fleet_redis(request: pytest.FixtureRequest) -> FleetRedis:
    """The session's redis-server or Redis Cluster, emptied for this test."""
    if request.param == "server":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.start()
        fleet = FleetRedis("server", server.url)
    else:
        cluster: RedisClusterServer = request.getfixturevalue("redis_cluster")
        fleet = FleetRedis("cluster", cluster.url)
    with fleet.sync_client() as client:
        client.flushall()
    return fleet


class LaneFallbacks:
    """How many calls a manager's fast lane handed to the compiled chain (``Stack.run``)."""

    count = 0


@pytest.fixture
def lane_fallbacks(monkeypatch: pytest.MonkeyPatch) -> LaneFallbacks:
    """Counts the calls a ``_LaneStack`` sends through ``Stack.run`` instead of its own frame."""
    from dwcp_resilience._lane import _LaneStack
    from dwcp_resilience._stack import Stack

    seen = LaneFallbacks()
    general = Stack.run

    def counting(self: Stack, ctx: Any, op: Any) -> Any:
        seen.count += isinstance(self, _LaneStack)
        return general(self, ctx, op)

    monkeypatch.setattr(Stack, "run", counting)
    return seen
