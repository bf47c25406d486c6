"""Timeout, deadline never reached: ours next to asyncio.timeout, anyio.fail_after and hyx."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio

from dwcp_resilience import DeadlineExceeded, Timeout

from ..harness import Call, Case, Contender, Op

SECONDS = 1.0


async def _slow() -> None:
    await asyncio.sleep(1.0)


async def _expect_timeout(call: Any) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        await call()
    except (TimeoutError, DeadlineExceeded):
        elapsed = loop.time() - start
        assert 0.015 <= elapsed < 0.2, elapsed
        return
    raise AssertionError("timeout did not fire")


async def ours_make(op: Op) -> Call:
    timeout = Timeout(SECONDS)
    call = timeout.call

    async def run() -> Any:
        return await call(op)

    return run


async def ours_verify() -> None:
    timeout = Timeout(0.02)
    await _expect_timeout(lambda: timeout.call(_slow))


async def ours_cm_make(op: Op) -> Call:
    timeout = Timeout(SECONDS)

    async def run() -> Any:
        async with timeout:
            return await op()

    return run


async def ours_cm_verify() -> None:
    timeout = Timeout(0.02)

    async def run() -> None:
        async with timeout:
            await _slow()

    await _expect_timeout(run)


async def asyncio_make(op: Op) -> Call:
    async def run() -> Any:
        async with asyncio.timeout(SECONDS):
            return await op()

    return run


async def asyncio_verify() -> None:
    async def run() -> None:
        async with asyncio.timeout(0.02):
            await _slow()

    await _expect_timeout(run)


async def anyio_make(op: Op) -> Call:
    async def run() -> Any:
        with anyio.fail_after(SECONDS):
            return await op()

    return run


async def anyio_verify() -> None:
    async def run() -> None:
        with anyio.fail_after(0.02):
            await _slow()

    await _expect_timeout(run)


async def hyx_make(op: Op) -> Call:
    from hyx.timeout import timeout

    decorator: Any = timeout(SECONDS)
    wrapped: Call = decorator(op)
    return wrapped


async def hyx_verify() -> None:
    from hyx.timeout import timeout
    from hyx.timeout.exceptions import MaxDurationExceeded

    decorator: Any = timeout(0.02)
    wrapped = decorator(_slow)
    try:
        await _expect_timeout(wrapped)
    except MaxDurationExceeded:
        return


CASES = [
    Case(
        key="timeout",
        title="timeout, deadline never reached (1 s budget, no-op callee)",
        contenders=[
            Contender("dwcp_resilience Timeout.call", ours_make, ours_verify, ours=True),
            Contender(
                "dwcp_resilience `async with Timeout`", ours_cm_make, ours_cm_verify, ours=True
            ),
            Contender("asyncio.timeout()", asyncio_make, asyncio_verify),
            Contender("anyio.fail_after()", anyio_make, anyio_verify),
            Contender("hyx @timeout", hyx_make, hyx_verify),
        ],
    )
]
