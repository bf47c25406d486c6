"""Hedge with no hedge fired, and Fallback on the success path, next to what the peers offer.

No installed peer hedges (hyx, tenacity, stamina, backoff: none has it), so the hedge rows compare
ours with two hand-written races: the least an anyio task group costs (the same structure: the
first attempt in the caller's task, a timer task that would start the hedge), and an
``asyncio.wait`` race. hyx has a fallback decorator; a plain ``try``/``except`` is the floor.

Every ``verify`` proves the row does its job: a hedge whose first attempt takes 1 s is beaten by its
second attempt after a 1 ms delay; a fallback answers a ``ConnectionError`` with its value.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import anyio

from dwcp_resilience.policies.fallback import Fallback
from dwcp_resilience.policies.hedge import Hedge, hedge_attempt

from ..harness import Call, Case, Contender, Op

# --- hedge ----------------------------------------------------------------------------------------

DELAY = 1.0  # never reached by the no-op callee: no hedge fires in the timed loop

# The hand-written races tell their attempts apart as Hedge does (hedge_attempt), for verify.
_attempt_number: ContextVar[int] = ContextVar("bench_attempt", default=1)


async def _slow_first() -> int:
    """Attempt 1 takes 1 s; any other attempt answers at once."""
    number = hedge_attempt()
    if number == 1:
        await asyncio.sleep(1.0)
    return number


async def _check_hedge(run: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await run(_slow_first)
    assert loop.time() - start < 0.5, "the hedge did not win"
    assert result == 2, result


async def ours_hedge_make(op: Op) -> Call:
    return functools.partial(Hedge("bench", delay=DELAY).call, op)


async def ours_hedge_verify() -> None:
    hedge = Hedge("bench", delay=0.001)
    await _check_hedge(hedge.call)
    assert hedge.statistics().hedge_wins == 1


async def ours_hedge_decorator_make(op: Op) -> Call:
    wrapped: Call = Hedge("bench", delay=DELAY)(op)
    return wrapped


async def ours_hedge_decorator_verify() -> None:
    hedge = Hedge("bench", delay=0.001)
    await _check_hedge(lambda fn: hedge(fn)())


def _anyio_race(delay: float) -> Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]:
    """A minimal hedge by hand on an anyio task group: first attempt inline, a timer task that
    starts the second; the first success cancels the rest (no budget, no failure handling)."""

    async def race(fn: Callable[[], Awaitable[Any]]) -> Any:
        won: list[Any] = []

        async with anyio.create_task_group() as tg:

            async def second() -> None:
                await anyio.sleep(delay)
                token = _attempt_number.set(2)
                try:
                    result = await fn()
                finally:
                    _attempt_number.reset(token)
                if not won:
                    won.append(result)
                    tg.cancel_scope.cancel()

            tg.start_soon(second)
            result = await fn()
            if not won:
                won.append(result)
            tg.cancel_scope.cancel()
        return won[0]

    return race


async def _slow_first_by_hand() -> int:
    number: int = _attempt_number.get()
    if number == 1:
        await asyncio.sleep(1.0)
    return number


async def anyio_race_make(op: Op) -> Call:
    return functools.partial(_anyio_race(DELAY), op)


async def anyio_race_verify() -> None:
    race = _anyio_race(0.001)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await race(_slow_first_by_hand) == 2
    assert loop.time() - start < 0.5


def _asyncio_race(delay: float) -> Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]:
    """A hedge by hand with ``asyncio.wait``: start, wait ``delay``, start another, take the first
    done, cancel and await the rest."""

    async def race(fn: Callable[[], Awaitable[Any]]) -> Any:
        first = asyncio.ensure_future(fn())
        tasks = {first}
        try:
            done, _ = await asyncio.wait(tasks, timeout=delay)
            if not done:
                token = _attempt_number.set(2)
                try:
                    tasks.add(asyncio.ensure_future(fn()))
                finally:
                    _attempt_number.reset(token)
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            return next(iter(done)).result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    return race


async def asyncio_race_make(op: Op) -> Call:
    return functools.partial(_asyncio_race(DELAY), op)


async def asyncio_race_verify() -> None:
    race = _asyncio_race(0.001)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await race(_slow_first_by_hand) == 2
    assert loop.time() - start < 0.5


# --- fallback -------------------------------------------------------------------------------------


async def _failing() -> str:
    raise ConnectionError("down")


async def ours_fallback_make(op: Op) -> Call:
    return functools.partial(Fallback("bench", value="fallback").call, op)


async def ours_fallback_verify() -> None:
    fallback = Fallback("bench", value="fallback")
    assert await fallback.call(_failing) == "fallback"


async def ours_fallback_decorator_make(op: Op) -> Call:
    wrapped: Call = Fallback("bench", value="fallback")(op)
    return wrapped


async def ours_fallback_decorator_verify() -> None:
    assert await Fallback("bench", value="fallback")(_failing)() == "fallback"


async def naive_fallback_make(op: Op) -> Call:
    async def run() -> Any:
        try:
            return await op()
        except Exception:
            return "fallback"

    return run


def _hyx_fallback(fn: Callable[[], Awaitable[Any]]) -> Call:
    from hyx.fallback import fallback

    async def handler(result: BaseException | Any, *args: Any, **kwargs: Any) -> str:
        return "fallback"

    wrapped: Call = fallback(handler, on=Exception)(fn)
    return wrapped


async def hyx_fallback_make(op: Op) -> Call:
    return _hyx_fallback(op)


async def hyx_fallback_verify() -> None:
    assert await _hyx_fallback(_failing)() == "fallback"


CASES = [
    Case(
        key="hedge",
        title="hedge, no hedge fired (1 s delay, no-op callee)",
        note=(
            "No installed peer hedges. Both hand-written races are verified to hedge (a 1 s first "
            "attempt beaten after 1 ms); neither has a budget, failure handling or statistics."
        ),
        contenders=[
            Contender("dwcp_resilience Hedge.call", ours_hedge_make, ours_hedge_verify, ours=True),
            Contender(
                "dwcp_resilience @Hedge",
                ours_hedge_decorator_make,
                ours_hedge_decorator_verify,
                ours=True,
            ),
            Contender("by hand: anyio task group race", anyio_race_make, anyio_race_verify),
            Contender("by hand: asyncio.wait race", asyncio_race_make, asyncio_race_verify),
        ],
    ),
    Case(
        key="fallback",
        title="fallback, success path (a value on failure, no-op callee)",
        note="Each row's verify checks that a ConnectionError gets the fallback value.",
        contenders=[
            Contender(
                "dwcp_resilience Fallback.call", ours_fallback_make, ours_fallback_verify, ours=True
            ),
            Contender(
                "dwcp_resilience @Fallback",
                ours_fallback_decorator_make,
                ours_fallback_decorator_verify,
                ours=True,
            ),
            Contender("naive try/except", naive_fallback_make),
            Contender("hyx @fallback", hyx_fallback_make, hyx_fallback_verify),
        ],
    ),
]
