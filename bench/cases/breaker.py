"""Circuit breaker: the closed success path and the open rejection path, ours next to the peers.

Every breaker is configured alike: it trips after 5 consecutive failures and stays open for an hour,
so nothing changes state while it is timed. Each ``verify`` proves the row does its job: a closed
breaker passes 50 calls through to the callee and trips after at most 5 failures; an open breaker
refuses 50 calls with its own exception and never runs the callee.

The "floor" row of the closed case is a bare pass-through ``async def`` wrapper: what any decorator
costs before it does anything. The rejection rows time ``run()``, a coroutine that awaits the
breaker and catches its exception (the harness awaits a zero-argument call): the bare ``await op()``
baseline has no such frame, and the "floor" row (an ``async def`` that raises a fresh exception,
caught the same way) shows what the raise and the catch alone cost.

pybreaker's own async mode needs tornado, so its row is the sync ``with breaker.calling():`` context
manager around the await (as in ``shared/reference/peer-overhead.md``). purgatory's open state raises
the same exception object on every rejection, so its traceback (and the cyclic GC's work) grows
without bound; its rejection row replaces the tripped breaker every 50 000 rejections, which pins N
at 50k as the peer-overhead study did (the rotation costs well under 1 ns per call).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from dwcp_resilience import CircuitOpen
from dwcp_resilience.policies.breaker import BreakerState, CircuitBreaker, CountWindow

from ..harness import Call, Case, Contender, Op

THRESHOLD = 5
RESET = 3600.0
PURGATORY_PIN = 50_000
_names = itertools.count()


class Boom(Exception):
    """What the failing callee raises."""


async def _boom() -> None:
    raise Boom


class _Counting:
    """A callee (a real ``async def``: some peers insist on one) that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

        async def op() -> str:
            self.calls += 1
            return "ok"

        self.op = op


async def _check_closed(make_call: Callable[[Op], Awaitable[Call]], make_fail: Call) -> None:
    """50 calls reach the callee and return its value; then <= 5 failures trip the breaker."""
    op = _Counting()
    call = await make_call(op.op)
    for _ in range(50):
        assert await call() == "ok"
    assert op.calls == 50, op.calls
    for attempt in range(1, THRESHOLD + 2):
        try:
            await make_fail()
        except Boom:
            continue
        except Exception:  # the peer's own "open" error
            assert attempt > 1, "rejected before any failure"
            break
    else:
        raise AssertionError("the breaker never opened")
    try:
        await call()
    except Exception:
        assert op.calls == 50, "an open breaker ran the callee"
        return
    raise AssertionError("the breaker did not reject after tripping")


async def _check_open(run: Call, op: _Counting) -> None:
    """50 rejections, caught by ``run``; the callee never runs."""
    for _ in range(50):
        assert await run() is None
    assert op.calls == 0, op.calls


# -- ours ------------------------------------------------------------------------------------------


def _ours(**options: Any) -> CircuitBreaker:
    return CircuitBreaker(
        f"bench-{next(_names)}", max_failures=THRESHOLD, reset_timeout=RESET, **options
    )


def _ours_decorator(**options: Any) -> tuple[Callable[[Op], Awaitable[Call]], Call]:
    breaker = _ours(**options)

    async def make(op: Op) -> Call:
        wrapped: Call = breaker(op)
        return wrapped

    return make, breaker(_boom)


async def ours_decorator_make(op: Op) -> Call:
    wrapped: Call = _ours()(op)
    return wrapped


async def ours_decorator_verify() -> None:
    make, fail = _ours_decorator()
    await _check_closed(make, fail)


async def ours_call_make(op: Op) -> Call:
    return functools.partial(_ours().call, op)


async def ours_call_verify() -> None:
    breaker = _ours()

    async def make(op: Op) -> Call:
        return functools.partial(breaker.call, op)

    await _check_closed(make, functools.partial(breaker.call, _boom))
    assert breaker.statistics().successes == 50


def _ours_cm(breaker: CircuitBreaker, op: Op) -> Call:
    async def run() -> Any:
        async with breaker:
            return await op()

    return run


async def ours_cm_make(op: Op) -> Call:
    return _ours_cm(_ours(), op)


async def ours_cm_verify() -> None:
    breaker = _ours()

    async def make(op: Op) -> Call:
        return _ours_cm(breaker, op)

    await _check_closed(make, _ours_cm(breaker, _boom))


async def ours_window_make(op: Op) -> Call:
    wrapped: Call = _ours(window=CountWindow(100))(op)
    return wrapped


async def ours_window_verify() -> None:
    make, fail = _ours_decorator(window=CountWindow(100))
    await _check_closed(make, fail)


async def ours_latency_make(op: Op) -> Call:
    wrapped: Call = _ours(record_latency=True)(op)
    return wrapped


async def ours_latency_verify() -> None:
    breaker = _ours(record_latency=True)

    async def make(op: Op) -> Call:
        wrapped: Call = breaker(op)
        return wrapped

    await _check_closed(make, breaker(_boom))
    assert breaker.statistics().latency_count == 55


def _catching(call: Call, error: type[BaseException] | tuple[type[BaseException], ...]) -> Call:
    async def run() -> Any:
        try:
            await call()
        except error:
            return None
        raise AssertionError("not rejected")

    return run


async def _ours_open(kind: str, op: Op) -> Call:
    breaker = _ours()
    await _trip(breaker(_boom))
    assert breaker.state is BreakerState.OPEN
    if kind == "decorator":
        return _catching(breaker(op), CircuitOpen)
    if kind == "call":
        return _catching(functools.partial(breaker.call, op), CircuitOpen)
    return _catching(_ours_cm(breaker, op), CircuitOpen)


def _ours_open_row(
    kind: str,
) -> tuple[Callable[[Op], Awaitable[Call]], Callable[[], Awaitable[None]]]:
    async def make(op: Op) -> Call:
        return await _ours_open(kind, op)

    async def verify() -> None:
        op = _Counting()
        run = await _ours_open(kind, op.op)
        await _check_open(run, op)

    return make, verify


# -- peers -----------------------------------------------------------------------------------------


def _circuitbreaker() -> Any:
    from circuitbreaker import CircuitBreaker as Peer

    return Peer(failure_threshold=THRESHOLD, recovery_timeout=RESET, name=f"b{next(_names)}")


async def circuitbreaker_make(op: Op) -> Call:
    wrapped: Call = _circuitbreaker()(op)
    return wrapped


async def circuitbreaker_verify() -> None:
    breaker = _circuitbreaker()

    async def make(op: Op) -> Call:
        wrapped: Call = breaker(op)
        return wrapped

    await _check_closed(make, breaker(_boom))


def _hyx() -> Any:
    from hyx.circuitbreaker import consecutive_breaker

    return consecutive_breaker(failure_threshold=THRESHOLD, recovery_time_secs=RESET)


async def hyx_make(op: Op) -> Call:
    wrapped: Call = _hyx()(op)
    return wrapped


async def hyx_verify() -> None:
    breaker = _hyx()

    async def make(op: Op) -> Call:
        wrapped: Call = breaker(op)
        return wrapped

    await _check_closed(make, breaker(_boom))


def _aiobreaker() -> Any:
    from aiobreaker import CircuitBreaker as Peer

    return Peer(fail_max=THRESHOLD, timeout_duration=timedelta(seconds=RESET))


async def aiobreaker_make(op: Op) -> Call:
    wrapped: Call = _aiobreaker()(op)
    return wrapped


async def aiobreaker_verify() -> None:
    breaker = _aiobreaker()

    async def make(op: Op) -> Call:
        wrapped: Call = breaker(op)
        return wrapped

    await _check_closed(make, breaker(_boom))


def _purgatory() -> Any:
    from purgatory import AsyncCircuitBreakerFactory

    factory = AsyncCircuitBreakerFactory(default_threshold=THRESHOLD, default_ttl=RESET)
    return factory(f"p{next(_names)}")


async def purgatory_make(op: Op) -> Call:
    wrapped: Call = _purgatory()(op)
    return wrapped


async def purgatory_verify() -> None:
    decorator = _purgatory()

    async def make(op: Op) -> Call:
        wrapped: Call = decorator(op)
        return wrapped

    await _check_closed(make, decorator(_boom))


def _pybreaker() -> Any:
    import pybreaker

    return pybreaker.CircuitBreaker(fail_max=THRESHOLD, reset_timeout=RESET)


def _pybreaker_call(breaker: Any, op: Op) -> Call:
    async def run() -> Any:
        with breaker.calling():
            return await op()

    return run


async def pybreaker_make(op: Op) -> Call:
    return _pybreaker_call(_pybreaker(), op)


async def pybreaker_verify() -> None:
    breaker = _pybreaker()

    async def make(op: Op) -> Call:
        return _pybreaker_call(breaker, op)

    await _check_closed(make, _pybreaker_call(breaker, _boom))


async def _trip(fail: Call) -> None:
    for _ in range(THRESHOLD):
        # Boom, or the peer's "open" error on the tripping call
        with contextlib.suppress(Exception):
            await fail()


async def _peer_open(name: str, op: Op) -> Call:
    if name == "circuitbreaker":
        from circuitbreaker import CircuitBreakerError

        breaker = _circuitbreaker()
        await _trip(breaker(_boom))
        return _catching(breaker(op), CircuitBreakerError)
    if name == "hyx":
        from hyx.circuitbreaker.exceptions import BreakerFailing

        breaker = _hyx()
        await _trip(breaker(_boom))
        return _catching(breaker(op), BreakerFailing)
    if name == "aiobreaker":
        from aiobreaker import CircuitBreakerError as AioError

        breaker = _aiobreaker()
        await _trip(breaker(_boom))
        return _catching(breaker(op), AioError)
    if name == "pybreaker":
        import pybreaker

        breaker = _pybreaker()
        await _trip(_pybreaker_call(breaker, _boom))
        return _catching(_pybreaker_call(breaker, op), pybreaker.CircuitBreakerError)
    if name == "purgatory":
        return await _purgatory_open(op)
    raise ValueError(name)


async def _purgatory_open(op: Op) -> Call:
    from purgatory.domain.model import OpenedState

    async def tripped() -> Call:
        decorator = _purgatory()
        await _trip(decorator(_boom))
        return _catching(decorator(op), OpenedState)

    current = await tripped()
    left = PURGATORY_PIN

    async def run() -> Any:
        nonlocal current, left
        if left == 0:  # a fresh breaker: N pinned at 50k rejections per open exception
            current, left = await tripped(), PURGATORY_PIN
        left -= 1
        return await current()

    return run


def _peer_open_row(
    name: str,
) -> tuple[Callable[[Op], Awaitable[Call]], Callable[[], Awaitable[None]]]:
    async def make(op: Op) -> Call:
        return await _peer_open(name, op)

    async def verify() -> None:
        op = _Counting()
        run = await _peer_open(name, op.op)
        await _check_open(run, op)

    return make, verify


class _Floor(Exception):
    pass


async def floor_make(op: Op) -> Call:  # the floor never calls op
    async def raising() -> None:
        raise _Floor

    return _catching(raising, _Floor)


async def floor_circuit_open_make(op: Op) -> Call:  # never calls op either
    new = BaseException.__new__

    async def raising() -> None:
        raise new(CircuitOpen, "bench", 1.0)  # what @breaker raises, built the same way

    return _catching(raising, CircuitOpen)


async def frame_make(op: Op) -> Call:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await op(*args, **kwargs)

    return wrapper


def _row(name: str, pair: tuple[Any, Any], ours: bool = False) -> Contender:
    make, verify = pair
    return Contender(name, make, verify, ours=ours)


CASES = [
    Case(
        key="breaker_closed",
        title="circuit breaker, closed, success path (trips after 5 failures)",
        contenders=[
            Contender("dwcp_resilience @breaker", ours_decorator_make, ours_decorator_verify, True),
            Contender("dwcp_resilience breaker.call", ours_call_make, ours_call_verify, True),
            Contender("dwcp_resilience `async with breaker`", ours_cm_make, ours_cm_verify, True),
            Contender(
                "dwcp_resilience @breaker, CountWindow(100)",
                ours_window_make,
                ours_window_verify,
                True,
            ),
            Contender(
                "dwcp_resilience @breaker, record_latency=True",
                ours_latency_make,
                ours_latency_verify,
                True,
            ),
            Contender("circuitbreaker (decorator)", circuitbreaker_make, circuitbreaker_verify),
            Contender("hyx consecutive_breaker (decorator)", hyx_make, hyx_verify),
            Contender("aiobreaker (decorator)", aiobreaker_make, aiobreaker_verify),
            Contender("purgatory (decorator, in-memory)", purgatory_make, purgatory_verify),
            Contender(
                "pybreaker (sync calling() CM around await)", pybreaker_make, pybreaker_verify
            ),
            Contender("floor: one wrapper frame (*args, **kwargs) around op", frame_make),
        ],
    ),
    Case(
        key="breaker_open",
        title="circuit breaker, open, rejection path (exception caught in run())",
        contenders=[
            _row("dwcp_resilience @breaker", _ours_open_row("decorator"), ours=True),
            _row("dwcp_resilience breaker.call", _ours_open_row("call"), ours=True),
            _row("dwcp_resilience `async with breaker`", _ours_open_row("cm"), ours=True),
            _row("circuitbreaker (decorator)", _peer_open_row("circuitbreaker")),
            _row("hyx consecutive_breaker (decorator)", _peer_open_row("hyx")),
            _row("aiobreaker (decorator)", _peer_open_row("aiobreaker")),
            _row("purgatory (decorator, in-memory; N pinned at 50k)", _peer_open_row("purgatory")),
            _row("pybreaker (sync calling() CM around await)", _peer_open_row("pybreaker")),
            Contender("floor: async fn raising a new exception, caught", floor_make),
            Contender(
                "floor: async fn raising a new CircuitOpen(name, retry_after), caught",
                floor_circuit_open_make,
            ),
        ],
    ),
]
