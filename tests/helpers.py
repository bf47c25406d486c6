"""Helpers shared by the test modules (import them as ``from helpers import ...``).

``tests/`` is not a package: pytest puts it on ``sys.path`` (the rootdir of ``conftest.py``, the
default ``prepend`` import mode), as for ``from conftest import LaneFallbacks``.

- Prometheus exposition text: :data:`Samples`, :func:`parse`, :func:`value`, :func:`names`.
- DWCP frames: :data:`ID` and :func:`header` (a raw frame header, for malformed input).
- :func:`wait_until`: poll a predicate on the running backend (at most 2 s).
- :func:`check_rate_bound`: a rate limiter's bound over every window of an admission log.
- :func:`redis_keys`: the keys matching a pattern and their TTLs, on one server or every primary
  of a Redis Cluster.
- :func:`real_time_backends`: an ``anyio_backend`` fixture for a module that runs in real time on
  some backends only (the main fixture in ``conftest.py`` runs every backend; its ``real_time``
  marker puts all three in real time).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from dwcp_resilience.dwcp.protocol import MAGIC, VERSION

__all__ = (
    "ID",
    "check_rate_bound",
    "REAL_TIME_BACKENDS",
    "Samples",
    "header",
    "names",
    "parse",
    "real_time_backends",
    "redis_keys",
    "value",
    "wait_until",
)

# -- Prometheus exposition text --------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and label set."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    """The sample of ``metric`` with exactly ``labels`` (a ``KeyError`` when there is none)."""
    return samples[(metric, frozenset(labels.items()))]


def names(samples: Samples) -> set[str]:
    """The sample names present."""
    return {name for name, _ in samples}


# -- DWCP frames -----------------------------------------------------------------------------------

ID = bytes(range(16))


def header(type_: int, length: int, *, magic: bytes = MAGIC, version: int = VERSION) -> bytes:
    """A raw frame header with message id :data:`ID` and a valid header checksum: any type,
    length, magic or version (a payload sent after it needs its own checksum, see
    :func:`with_crc`)."""
    head = struct.pack(">4sBBH16sQI", magic, version, type_, 0, ID, length, 0)
    return head + struct.pack(">I", zlib.crc32(head))


def with_crc(payload: bytes) -> bytes:
    """``payload`` followed by its checksum, as it follows a header on the wire."""
    return payload + struct.pack(">I", zlib.crc32(payload))


# -- waiting ---------------------------------------------------------------------------------------


async def wait_until(predicate: Callable[[], bool], *, within: float = 2.0) -> None:
    """Poll a statistic until it holds (at most ``within`` seconds)."""
    with anyio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - polling counters, there is no event to wait on
            await anyio.sleep(0.005)


# -- anyio backends --------------------------------------------------------------------------------

REAL_TIME_BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "trio": ("trio", {}),
    "uvloop": ("asyncio", {"loop_factory": uvloop.new_event_loop}),
}
"""The ``anyio_backend`` value of each backend in real time (no looptime loop, no MockClock)."""


def real_time_backends(*backends: str) -> Callable[..., tuple[str, dict[str, Any]]]:
    """An ``anyio_backend`` fixture: real time on ``backends`` only (names of
    :data:`REAL_TIME_BACKENDS`). Assign it in a module::

        anyio_backend = real_time_backends("asyncio", "trio")

    Several backends parametrise the module's tests (ids ``[asyncio]``, ``[trio]``, ...); one gives
    an unparametrised fixture, so test ids carry no backend. For every backend in real time, mark
    the module ``real_time`` instead (``conftest.py``).
    """
    unknown = [name for name in backends if name not in REAL_TIME_BACKENDS]
    if not backends or unknown:
        raise ValueError(f"backends must be some of {sorted(REAL_TIME_BACKENDS)}, got {backends}")
    if len(backends) == 1:
        only = REAL_TIME_BACKENDS[backends[0]]

        @pytest.fixture(name="anyio_backend")
        def one_backend() -> tuple[str, dict[str, Any]]:
            name, options = only
            return name, dict(options)

        return one_backend

    @pytest.fixture(
        name="anyio_backend",
        params=[pytest.param(REAL_TIME_BACKENDS[name], id=name) for name in backends],
    )
    def each_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
        name, options = request.param
        return name, dict(options)

    return each_backend


# -- Redis -----------------------------------------------------------------------------------------


async def redis_keys(client: Any, pattern: str = "*") -> dict[str, int]:
    """Every key matching ``pattern`` with its TTL in ms, through a ``redis.asyncio`` ``Redis`` or
    ``RedisCluster`` (``SCAN``, which a cluster client runs on every primary)."""
    return {key.decode(): await client.pttl(key) async for key in client.scan_iter(match=pattern)}


def check_rate_bound(times: list[int], burst: int, interval: float) -> None:
    """For every window [t_i, t_j] of the sorted log: count <= burst + (t_j - t_i) / interval,
    exactly (times and ``interval``, the time per token, in one unit)."""
    for i in range(len(times)):
        for j in range(i + burst, len(times)):
            count = j - i + 1
            assert (count - burst) * interval <= times[j] - times[i], (i, j, times[i], times[j])
