"""The admissions (see :mod:`dwcp_resilience.core._fused`) of the breaker, limiter and bulkhead.

Each builder returns closures over one policy instance, so the fused frame reaches the policy's
state through cell variables instead of attribute lookups on ``self``. Each ``enter`` takes the fast
path of the policy's own ``call`` (kept in step with it) and otherwise the same general code: the
breaker's ``_begin``/``_end``/``_record_exception``, the limiter's FIFO ``_wait``, the bulkhead's
queue ``_wait`` and ``_release``. The policy modules call these builders from ``_admission()``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ..core._fused import WAIT, Admission

if TYPE_CHECKING:
    from .breaker import CircuitBreaker

T = TypeVar("T")

__all__ = ()  # private: reached through each policy's _admission()


async def _never_wait() -> object:  # pragma: no cover - the breaker's enter never returns WAIT
    raise AssertionError("the breaker never waits to admit")


def breaker_admission(breaker: CircuitBreaker) -> Admission:
    """The breaker's admission; its tickets are the epoch (fast CLOSED path) or ``(ticket, start)``.

    The caller checks fusability first (no per-call timeout, ``call`` not overridden).
    """
    core = breaker._core
    begin, end, record_exception = breaker._begin, breaker._end, breaker._record_exception
    fast_exception, fast_stale = breaker._fast_exception, breaker._fast_stale

    def enter() -> object:
        epoch = core.route
        if epoch >= 0:  # CLOSED, consecutive mode: no clock, no allocation
            return epoch
        return begin()  # the general path: (ticket, start), or CircuitOpen

    def exit_(ticket: object, exc: BaseException | None, result: object) -> None:
        if type(ticket) is int:
            if exc is not None:
                fast_exception(ticket, exc)
            elif core.route == ticket:
                core.fast_successes += 1
                core.consecutive = 0
            else:
                fast_stale()
        else:
            epoch, start = cast(tuple[int, float | None], ticket)
            if exc is None:
                end(epoch, start, result)
            else:
                record_exception(epoch, exc, start)

    def pair(inner: Admission) -> Callable[..., Awaitable[Any]] | None:
        from .ratelimit import RateLimiter  # noqa: PLC0415 - no cycle

        limiter = inner.policy
        if inner.exit is not None or type(limiter) is not RateLimiter:
            return None
        return _breaker_limiter(breaker, enter, exit_, inner.enter, inner.wait)

    return Admission(enter, _never_wait, exit_, breaker, pair)


def _breaker_limiter(
    breaker: CircuitBreaker,
    enter: Callable[[], object],
    exit_: Callable[[object, BaseException | None, object], None],
    take: Callable[[], object],
    wait: Callable[[], Awaitable[object]],
) -> Callable[..., Awaitable[Any]]:
    """Breaker > limiter in one frame, the breaker's fast path inlined (the manager's usual pair).

    Same steps as ``breaker.call(limiter.call, fn)``: the breaker admits (its CLOSED fast path reads
    ``route`` only), the limiter takes a token at once or waits FIFO (a rejection or cancellation
    there reaches the breaker as the inner call's exception: neutral), then the callee runs.
    """
    core = breaker._core

    async def call(fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        ticket: object = core.route
        if core.route < 0:  # the breaker's general path: may raise CircuitOpen
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
        if ticket.__class__ is int and core.route == ticket:
            core.fast_successes += 1
            core.consecutive = 0
        else:
            exit_(ticket, None, result)
        return result

    return call
