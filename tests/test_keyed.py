"""KeyedRateLimiter: per-key buckets, lossless idle eviction, a hard key cap."""

from __future__ import annotations

import math
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from dwcp_resilience.core.errors import RateLimited
from dwcp_resilience.policies.keyed import KeyedRateLimiter
from dwcp_resilience.testing import FakeClock

pytestmark = pytest.mark.anyio


def test_keys_are_independent() -> None:
    clock = FakeClock()
    keyed = KeyedRateLimiter("k", rate=1, burst=2, clock=clock)
    assert [keyed.try_acquire("a") for _ in range(3)] == [True, True, False]
    assert keyed.try_acquire("b") and keyed.try_acquire("b")
    clock.advance(1.0)
    assert keyed.try_acquire("a") and not keyed.try_acquire("a")
    stats = keyed.statistics()
    assert (stats.keys, stats.allowed, stats.rejected) == (2, 5, 2)


def test_idle_eviction_is_lossless() -> None:
    clock = FakeClock()
    keyed = KeyedRateLimiter("k", rate=1, burst=2, clock=clock)
    assert keyed.try_acquire("a", 2)
    clock.advance(1.0)
    assert keyed.evict_idle() == 0  # half full: evicting would hand out a free token
    clock.advance(1.0)
    assert keyed.evict_idle() == 1  # full again: a fresh bucket is the same bucket
    assert len(keyed) == 0
    assert keyed.statistics().allowed == 1  # counters survive eviction


def test_many_keys_swept_and_bounded() -> None:
    """R46 (scaled to 100 000 keys): each used once, then idle: the map drains."""
    clock = FakeClock()
    keyed = KeyedRateLimiter("k", rate=10, burst=1, max_keys=200_000, clock=clock)
    for key in range(100_000):
        assert keyed.try_acquire(key)
    assert len(keyed) == 100_000
    clock.advance(120.0)
    for key in range(100_000, 100_100):  # new keys sweep old idle ones as they come
        keyed.try_acquire(key)
    assert len(keyed) < 100_000
    keyed.evict_idle()
    assert len(keyed) <= 100
    stats = keyed.statistics()
    assert stats.allowed == 100_100 and stats.evicted >= 99_900


def test_cap_refuses_new_keys_when_all_busy() -> None:
    clock = FakeClock()
    keyed = KeyedRateLimiter("k", rate=1, burst=1, max_keys=3, clock=clock)
    for key in "abc":
        assert keyed.try_acquire(key)
    with pytest.raises(RateLimited) as info:
        keyed.try_acquire("d")
    assert info.value.retry_after == pytest.approx(1.0)
    assert len(keyed) == 3 and keyed.statistics().rejected_keys == 1
    clock.advance(0.5)
    assert keyed.try_acquire("a") is False  # known keys keep working at the cap
    clock.advance(0.5)
    assert keyed.try_acquire("d")  # idle keys were evicted to make room
    assert len(keyed) <= 3


def test_for_key_inspects_without_creating() -> None:
    keyed = KeyedRateLimiter("k", rate=1, burst=1, clock=FakeClock())
    assert keyed.for_key("x") is None
    keyed.try_acquire("x")
    limiter = keyed.for_key("x")
    assert limiter is not None and limiter.statistics().allowed == 1
    assert "1/10000 keys" in repr(keyed)


@pytest.mark.virtual_time
async def test_waiting_per_key_and_call(backend_name: str) -> None:
    keyed = KeyedRateLimiter("k", rate=10, burst=1)
    start = anyio.current_time()
    times: dict[str, list[float]] = {"a": [], "b": []}

    async def worker(key: str) -> None:
        await keyed.call(key, anyio.sleep, 0)
        times[key].append(round(anyio.current_time() - start, 6))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(worker, "a")
            tg.start_soon(worker, "b")
    assert times == {"a": [0.0, 0.1, 0.2], "b": [0.0, 0.1, 0.2]}
    with pytest.raises(RateLimited):
        await keyed.acquire("a", max_wait=0.01)
    assert keyed.statistics().waiting == 0


async def test_waiting_key_is_never_evicted(backend_name: str) -> None:
    keyed = KeyedRateLimiter("k", rate=100, burst=1, max_keys=1)
    keyed.try_acquire("a")
    async with anyio.create_task_group() as tg:
        tg.start_soon(keyed.acquire, "a")
        await anyio.lowlevel.checkpoint()
        assert keyed.evict_idle() == 0
        with pytest.raises(RateLimited):
            keyed.try_acquire("b")  # the only key is busy
    assert keyed.statistics().allowed == 2


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"rate": 0, "burst": 1}, ValueError),
        ({"rate": 1, "burst": 0}, ValueError),
        ({"rate": 1, "burst": 1, "max_keys": 0}, ValueError),
        ({"rate": 1, "burst": 1, "max_keys": True}, TypeError),
        ({"rate": 1, "burst": 1, "max_wait": math.nan}, ValueError),
        ({"rate": 1, "burst": 1, "clock": 1}, TypeError),
    ],
)
def test_bad_config(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        KeyedRateLimiter("k", **kwargs)
