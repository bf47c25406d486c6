"""The circuit breaker's admission (see :mod:`dwcp_resilience.core._fused`), and its fused pair
with a rate limiter.

The builder gets the breaker's core and bound methods from
:meth:`CircuitBreaker._admission <dwcp_resilience.CircuitBreaker>`; it reads no private name of
another module. Every outcome goes to the breaker's one home for it: ``core.route`` decides the
path, ``core.on_fast_success`` and ``fast_exception`` record the fast CLOSED route's outcomes, and
``begin``/``end``/``record_exception`` are the general path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from ..core._fused import WAIT, Admission
from ..core.errors import not_callable
from .breaker_core import CLOSED, BreakerCore
from .ratelimit import RateLimiter

T = TypeVar("T")

__all__ = ()  # private: reached through CircuitBreaker._admission()

Ticket = tuple[int, float | None]


async def _never_wait() -> object:  # pragma: no cover - the breaker's enter never returns WAIT
    raise AssertionError("the breaker never waits to admit")


def breaker_admission(  # noqa: PLR0917 - the breaker's homes, handed over one by one
    breaker: object,
    core: BreakerCore,
    begin: Callable[[], Ticket],
    end: Callable[[int, float | None, object], None],
    record_exception: Callable[[int, BaseException, float | None], None],
    fast_exception: Callable[[int, BaseException], None],
) -> Admission:
    """The breaker's admission; its tickets are the epoch (fast CLOSED path) or ``(ticket, start)``.

    The caller checks fusability first (no per-call timeout, ``call`` not overridden).
    """
    on_fast_success = core.on_fast_success

    def enter() -> object:
        epoch = core.route
        if epoch >= 0:  # CLOSED, consecutive mode: no clock, no allocation
            return epoch
        return begin()  # the general path: (ticket, start), or CircuitOpen

    def exit_(ticket: object, exc: BaseException | None, result: object) -> None:
        if type(ticket) is int:
            if exc is None:
                on_fast_success(ticket)
            else:
                fast_exception(ticket, exc)
        else:
            epoch, start = cast(Ticket, ticket)
            if exc is None:
                end(epoch, start, result)
            else:
                record_exception(epoch, exc, start)

    def pair(inner: Admission) -> Callable[..., Awaitable[Any]] | None:
        if inner.exit is not None or type(inner.policy) is not RateLimiter:
            return None
        return _breaker_limiter(core, enter, exit_, inner.enter, inner.wait)

    closed = CLOSED

    def ready() -> bool:
        # enter() admits at once, never raising, on the fast route or while CLOSED (the caller
        # checked fusability: no per-call timeout, so no deadline can refuse it either).
        return core.route >= 0 or core.state is closed

    return Admission(enter, _never_wait, exit_, breaker, pair, ready=ready)


def _breaker_limiter(
    core: BreakerCore,
    enter: Callable[[], object],
    exit_: Callable[[object, BaseException | None, object], None],
    take: Callable[[], object],
    wait: Callable[[], Awaitable[object]],
) -> Callable[..., Awaitable[Any]]:
    """Breaker > limiter in one frame (the manager's usual pair).

    Same steps as ``breaker.call(limiter.call, fn)``: the breaker admits (its CLOSED fast path reads
    ``route`` only), the limiter takes a token at once or waits FIFO (a rejection or cancellation
    there reaches the breaker as the inner call's exception: neutral), then the callee runs.
    """
    on_fast_success = core.on_fast_success

    async def call(fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        if not callable(fn):
            raise not_callable(fn)
        ticket: object = core.route
        if ticket < 0:  # type: ignore[operator]  # the general path: may raise CircuitOpen
            ticket = enter()
        if take() is WAIT:
            try:
                await wait()
            except BaseException as exc:
                exit_(ticket, exc, None)
                raise
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            exit_(ticket, exc, None)
            raise
        if ticket.__class__ is int:
            on_fast_success(ticket)
        else:
            exit_(ticket, None, result)
        return result

    return call
