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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import looptime
import pytest
import trio.testing
import uvloop

if TYPE_CHECKING:
    from dwcp_resilience.redis.server import RedisServer

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
