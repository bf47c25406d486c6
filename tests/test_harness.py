"""The test harness itself: virtual time on asyncio and trio, and every backend runs."""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel
import pytest

pytestmark = pytest.mark.anyio


@pytest.mark.virtual_time
async def test_virtual_time_is_fast(backend_name: str) -> None:
    """150 s of sleeping and a 10 s fail_after take no real time on the virtual backends."""
    start_real = time.perf_counter()
    start = anyio.current_time()
    await anyio.sleep(150)
    with pytest.raises(TimeoutError):
        with anyio.fail_after(10):
            await anyio.sleep(100)
    assert anyio.current_time() - start == pytest.approx(160, abs=1e-3)
    assert time.perf_counter() - start_real < 5


async def test_every_backend_runs(backend_name: str) -> None:
    await anyio.lowlevel.checkpoint()
    assert backend_name in {"asyncio", "uvloop", "trio"}
