"""Retry, the callee succeeds on the first attempt: ours next to tenacity, stamina, backoff and hyx.

Every contender is configured alike (4 attempts, exponential backoff, retry on ``OSError``), and each
``verify`` proves it retries: a callee that fails twice with ``ConnectionError`` must succeed on its
third attempt. Delays are a few milliseconds of real time in ``verify`` only.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Awaitable, Callable
from typing import Any

from dwcp_resilience.policies.backoff import ExponentialBackoff
from dwcp_resilience.policies.retry import Retry

from ..harness import Call, Case, Contender, Op

ATTEMPTS = 4


async def _check(wrap: Callable[[Callable[[], Awaitable[str]]], Awaitable[str]]) -> None:
    """``wrap(fn)`` must run ``fn`` until it succeeds: two ConnectionErrors, then "ok"."""
    calls = 0

    async def flaky() -> str:  # a real ``async def``: some peers inspect the function
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise ConnectionError("flaky")
        return "ok"

    result = await wrap(flaky)
    assert result == "ok" and calls == 3, (result, calls)


def _ours(initial: float = 0.1) -> Retry:
    return Retry(
        "bench",
        max_retries=ATTEMPTS - 1,
        backoff=ExponentialBackoff(initial, 10 * initial),
        retry_on=OSError,
        rng=random.Random(0),
    )


async def ours_call_make(op: Op) -> Call:
    # What ``await retry.call(op)`` costs, with the zero-argument call the harness needs.
    return functools.partial(_ours().call, op)


async def ours_call_verify() -> None:
    retry = _ours(0.001)
    await _check(retry.call)
    assert retry.statistics().attempts[:3] == (1, 1, 1)


async def ours_decorator_make(op: Op) -> Call:
    wrapped: Call = _ours()(op)
    return wrapped


async def ours_decorator_verify() -> None:
    retry = _ours(0.001)
    await _check(lambda fn: retry(fn)())


async def ours_block_make(op: Op) -> Call:
    retry = _ours()

    async def run() -> Any:
        async for attempt in retry:
            with attempt:
                return await op()
        return None

    return run


async def ours_block_verify() -> None:
    retry = _ours(0.001)

    async def wrap(fn: Callable[[], Awaitable[str]]) -> str:
        async for attempt in retry:
            with attempt:
                return await fn()
        raise AssertionError("unreachable")

    await _check(wrap)


async def naive_make(op: Op) -> Call:
    async def run() -> Any:
        for attempt in range(ATTEMPTS):
            try:
                return await op()
            except OSError:
                if attempt == ATTEMPTS - 1:
                    raise
        return None

    return run


def _tenacity_kwargs(initial: float) -> dict[str, Any]:
    import tenacity

    return {
        "stop": tenacity.stop_after_attempt(ATTEMPTS),
        "wait": tenacity.wait_random_exponential(multiplier=initial, max=10 * initial),
        "retry": tenacity.retry_if_exception_type(OSError),
        "reraise": True,
    }


async def tenacity_make(op: Op) -> Call:
    import tenacity

    wrapped: Call = tenacity.retry(**_tenacity_kwargs(0.1))(op)
    return wrapped


async def tenacity_verify() -> None:
    import tenacity

    await _check(lambda fn: tenacity.retry(**_tenacity_kwargs(0.001))(fn)())


async def tenacity_iter_make(op: Op) -> Call:
    import tenacity

    kwargs = _tenacity_kwargs(0.1)

    async def run() -> Any:
        async for attempt in tenacity.AsyncRetrying(**kwargs):
            with attempt:
                return await op()
        return None

    return run


async def tenacity_iter_verify() -> None:
    import tenacity

    kwargs = _tenacity_kwargs(0.001)

    async def wrap(fn: Callable[[], Awaitable[str]]) -> str:
        async for attempt in tenacity.AsyncRetrying(**kwargs):
            with attempt:
                return await fn()
        raise AssertionError("unreachable")

    await _check(wrap)


def _stamina(initial: float) -> Callable[[Any], Any]:
    import stamina

    decorator: Callable[[Any], Any] = stamina.retry(
        on=OSError,
        attempts=ATTEMPTS,
        timeout=None,
        wait_initial=initial,
        wait_max=10 * initial,
        wait_jitter=initial,
    )
    return decorator


async def stamina_make(op: Op) -> Call:
    wrapped: Call = _stamina(0.1)(op)
    return wrapped


async def stamina_verify() -> None:
    await _check(lambda fn: _stamina(0.001)(fn)())


def _backoff(initial: float) -> Callable[[Any], Any]:
    import backoff

    decorator: Callable[[Any], Any] = backoff.on_exception(
        backoff.expo, OSError, max_tries=ATTEMPTS, factor=initial, max_value=10 * initial
    )
    return decorator


async def backoff_make(op: Op) -> Call:
    wrapped: Call = _backoff(0.1)(op)
    return wrapped


async def backoff_verify() -> None:
    await _check(lambda fn: _backoff(0.001)(fn)())


def _hyx(initial: float) -> Callable[[Any], Any]:
    from hyx.retry import retry
    from hyx.retry.backoffs import expo

    decorator: Callable[[Any], Any] = retry(
        on=OSError,
        attempts=ATTEMPTS - 1,
        backoff=expo(min_delay_secs=initial, max_delay_secs=10 * initial),
    )
    return decorator


async def hyx_make(op: Op) -> Call:
    wrapped: Call = _hyx(0.1)(op)
    return wrapped


async def hyx_verify() -> None:
    await _check(lambda fn: _hyx(0.001)(fn)())


CASES = [
    Case(
        key="retry",
        title="retry, the callee succeeds on the first attempt (4 attempts, exponential backoff)",
        note=(
            "Each row's verify checks that a callee failing twice with ConnectionError succeeds "
            "on attempt 3. hyx counts `attempts` as retries, so it gets 3."
        ),
        contenders=[
            Contender("dwcp_resilience Retry.call", ours_call_make, ours_call_verify, ours=True),
            Contender(
                "dwcp_resilience @Retry", ours_decorator_make, ours_decorator_verify, ours=True
            ),
            Contender(
                "dwcp_resilience `async for attempt in retry`",
                ours_block_make,
                ours_block_verify,
                ours=True,
            ),
            Contender("naive reference retry loop", naive_make),
            Contender("tenacity @retry", tenacity_make, tenacity_verify),
            Contender(
                "tenacity `async for attempt in AsyncRetrying(...)`",
                tenacity_iter_make,
                tenacity_iter_verify,
            ),
            Contender("stamina @retry", stamina_make, stamina_verify),
            Contender("backoff @on_exception(expo)", backoff_make, backoff_verify),
            Contender("hyx @retry(expo)", hyx_make, hyx_verify),
        ],
    )
]
