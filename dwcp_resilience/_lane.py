"""The manager's fast lane: the usual stack run in one frame, with two clock reads per call.

``bulkhead -> retry -> circuit breaker -> rate limiter -> attempt timeout -> op`` is what the DWCP
client runs on every message. Run as a chain, that is five frames between the task and ``op`` and
six readings of the same loop clock (the manager's start and end, the breaker's start and end, the
limiter's, the timeout's). :class:`_LaneStack` runs a call's *first attempt* in :meth:`run`'s own
frame instead, when every admission can be had at once:

- it first checks, without changing anything, that the breaker admits on its CLOSED path and that
  the attempt timeout's deadline is still ahead, then takes the bulkhead's permit (its admission's
  ``enter``) and the limiter's token (``TokenBucket.take``) if they are there at once; if any of
  these fails the call takes the compiled chain
  (:meth:`_Stack.run <dwcp_resilience._stack._Stack.run>`) from the start, which waits, rejects or
  raises exactly as before, after giving back a permit it took;
- it then enters the operation's deadline scope (the call's deadline, or the registered total one
  if earlier, as :meth:`_Stack.run` does), admits in the breaker,
  opens the attempt timeout, and awaits ``op`` with one clock reading shared by all of them; on
  return one more reading serves the breaker's latency histogram and both budgets;
- when the first attempt raises, every policy records the exception as its own ``call`` would
  (the timeout turns its own expiry into ``DeadlineExceeded``, the breaker classifies), and the
  retry goes on through :meth:`Retry._retry_loop` around the compiled chain of the inner
  policies, as ``Retry.call`` does after a failed first attempt.

It runs on asyncio and uvloop (trio takes the chain), and only when every clock is the loop's (no
injected clock), the policies are the library's own classes (no subclass overriding ``call``) and
there is no chaos, adaptive limiter, per-breaker timeout, result predicate, retry budget or retry
``total_timeout``; any other stack is the plain compiled chain. The Hypothesis equivalence test of
the manager against hand-chained policies (``tests/test_fused.py``) covers both paths, deadlines
included.
"""

from __future__ import annotations

from asyncio import CancelledError
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from dataclasses import replace
from heapq import heappop, heappush
from typing import Any, TypeVar

from ._stack import _Components, _Counts, _Stack
from .core._fused import WAIT, admission_of, fuse
from .core._runtime import current_task, running
from .core.clock import Clock, loop_time
from .core.context import OperationContext, _current, _deadline
from .policies import timeout as _to
from .policies.breaker import CircuitBreaker
from .policies.breaker_core import CLOSED as _CLOSED
from .policies.bulkhead import Bulkhead
from .policies.ratelimit import RateLimiter
from .policies.retry import Retry
from .policies.timeout import Timeout

__all__ = ()

T = TypeVar("T")
Operation = Callable[[OperationContext], Awaitable[T]]

_INF = float("inf")
_ctx_set = _current.set
_ctx_reset = _current.reset
_deadline_get = _deadline.get
_deadline_set = _deadline.set
_deadline_reset = _deadline.reset
_LIVE, _FIRED, _HANDLED = _to._LIVE, _to._FIRED, _to._HANDLED
_STATE, _CANCELLING = _to._STATE, _to._CANCELLING
_seq = _to._seq
_DONE = _to._DONE
_COMPACT_MIN = _to._Sweeper.COMPACT_MIN


_FAST, _TIMED, _GENERAL = 1, 2, 3


def _breaker_mode(breaker: CircuitBreaker) -> int:
    """How the lane runs ``breaker`` (0: it cannot).

    - ``_FAST``: the core's CLOSED fast route (``route >= 0``), as ``CircuitBreaker.call``.
    - ``_TIMED``: ``record_latency`` on a consecutive-count breaker (no window, no slow-call
      threshold): the same fast bookkeeping while CLOSED, plus the histogram, which the lane fills
      with its shared clock readings.
    - ``_GENERAL``: admitted while CLOSED through the core's counters, outcomes through the shell.
    """
    if (
        type(breaker).call is not CircuitBreaker.call
        or breaker._timeout is not None
        or breaker._result_check
        or breaker._clock not in (None, loop_time)
    ):
        return 0
    core = breaker._core
    if core.fast:
        return _FAST
    return _TIMED if breaker._timed and core.cfg.fast else _GENERAL


def lane_for(
    operation: str, components: _Components, counts: _Counts, clock: Clock
) -> _Stack | None:
    """A :class:`_LaneStack` for ``components`` if the lane can run them, else ``None``."""
    c = components
    if clock is not loop_time or c.chaos is not None:
        return None
    if c.bulkhead is not None and type(c.bulkhead).call is not Bulkhead.call:
        return None
    if c.retry is not None and (type(c.retry).call is not Retry.call or not c.retry._plain):
        return None
    if c.breaker is not None and _breaker_mode(c.breaker) == 0:
        return None
    if c.limiter is not None and (
        type(c.limiter) is not RateLimiter or c.limiter._clock not in (None, loop_time)
    ):
        return None
    if c.timeout is not None and type(c.timeout).call is not Timeout.call:
        return None
    if (c.bulkhead, c.retry, c.breaker, c.limiter, c.timeout) == (None,) * 5:
        return None  # nothing to fuse: the plain run is as short
    return _LaneStack(operation, components, counts, clock)


class _LaneStack(_Stack):
    """A compiled stack whose first attempt runs in one frame (see the module docstring)."""

    __slots__ = ("_attempt", "_breaker_mode", "_inner", "_permit", "_take_token")

    def __init__(self, operation: str, components: _Components, counts: _Counts, clock: Clock):
        super().__init__(operation, components, counts, clock)
        c = components
        self._breaker_mode = 0 if c.breaker is None else _breaker_mode(c.breaker)
        # The bulkhead's permit, taken and given back through its admission (core/_fused.py).
        self._permit: tuple[Callable[[], object], Callable[[object, Any, Any], None]] | None = None
        permits = None if c.bulkhead is None else admission_of(c.bulkhead)
        if permits is not None and permits.exit is not None:
            self._permit = (permits.enter, permits.exit)
        # The limiter's token, taken at the lane's own clock reading (TokenBucket.take).
        tokens = None if c.limiter is None else admission_of(c.limiter)
        self._take_token = None if tokens is None else tokens.take_at
        inner = [p for p in (c.breaker, c.limiter, c.timeout) if p is not None]
        calls = [policy.call for policy in fuse(inner)]
        # The later attempts' callee for Retry._retry_loop: the inner chain, as Retry.call sees it.
        self._attempt: Callable[..., Awaitable[Any]] | None = calls[0] if calls else None
        self._inner = tuple(calls[1:])

    async def run(self, ctx: OperationContext, op: Operation[T]) -> T:
        # -- the gate: asyncio or uvloop (the loop's sweeper and clock) ---------------------------
        state = running()
        if state is None:  # trio
            return await _Stack.run(self, ctx, op)
        sweeper = state.deadlines or _to._sweeper_of(state)
        clock = sweeper.time
        now = clock()
        # -- the operation's deadline: the call's, or the registered one if earlier --------------
        call = ctx
        limit = ctx.deadline
        if self._deadline is not None:
            own = now + self._deadline
            if limit is None or own < limit:
                ctx = replace(ctx, deadline=own)
                limit = own
        bound = _INF
        scoped = False
        if limit is not None:
            bound = limit
            scoped = bound < _deadline_get()
        c = self.components
        # -- check every admission without taking anything --------------------------------------
        breaker = c.breaker
        mode = self._breaker_mode
        if breaker is not None:
            core = breaker._core
            if (core.route < 0) if mode == _FAST else (core.state is not _CLOSED):
                return await _Stack.run(self, call, op)
        timeout = c.timeout
        deadline = _INF
        if timeout is not None:
            deadline = now + timeout._seconds
            outer = bound if scoped else _deadline_get()
            if outer < deadline:  # noqa: PLR1730 - min() costs a call on the hot path
                deadline = outer
            if deadline <= now:
                return await _Stack.run(self, call, op)
        # The permit and the token: each check is its take. A permit taken before a missing
        # token is given back at once (nobody waits for it: it was free).
        permit = self._permit
        if permit is not None and permit[0]() is WAIT:
            return await _Stack.run(self, call, op)
        take_token = self._take_token
        if take_token is not None and not take_token(now):
            if permit is not None:
                permit[1](None, None, None)
            return await _Stack.run(self, call, op)
        # -- take the rest -------------------------------------------------------------------------
        counts = self._counts
        counts.calls += 1
        token = _ctx_set(ctx)
        try:
            scope = None
            if scoped:  # as _Stack.run: the operation's deadline encloses the whole run
                scope_token = _deadline_set(bound)
                try:
                    scope = self._deadline_timeout._open()
                except BaseException:
                    _deadline_reset(scope_token)
                    raise
            try:
                ticket = 0
                if breaker is not None:
                    ticket = core.epoch
                    if mode == _GENERAL:
                        core.admitted += 1
                retry = c.retry
                try:
                    # -- the first attempt -----------------------------------------------------
                    try:
                        if deadline == _INF:
                            result = await op(ctx)
                        else:
                            # _Sweeper.open and .close, inlined (see policies/timeout.py)
                            # never None: a coroutine runs in a task
                            task: Any = current_task(sweeper.loop)
                            entry: list[Any] = [
                                deadline,
                                next(_seq),
                                task,
                                task.cancelling(),
                                _LIVE,
                            ]
                            heap = sweeper.heap
                            heappush(heap, entry)
                            sweeper.live += 1
                            if deadline < sweeper.armed_at:
                                sweeper.arm(deadline)
                            elif len(heap) > _COMPACT_MIN and len(heap) > 4 * sweeper.live:
                                sweeper.compact()
                            deadline_token = _deadline_set(deadline)
                            try:
                                result = await op(ctx)
                            except CancelledError as exc:
                                if entry[_STATE] == _FIRED:
                                    entry[_STATE] = _HANDLED
                                    if task.uncancel() <= entry[_CANCELLING]:
                                        expired = timeout._expired()  # type: ignore[union-attr]
                                        raise expired from exc
                                raise
                            finally:
                                _deadline_reset(deadline_token)
                                if entry[_STATE] == _LIVE:
                                    entry[_STATE] = _DONE
                                    sweeper.live -= 1
                                    heap = sweeper.heap  # compact() may have replaced it
                                    if heap[0] is entry:
                                        heappop(heap)
                                        while heap and heap[0][_STATE] != _LIVE:
                                            heappop(heap)
                                else:
                                    sweeper.close(entry)
                    except BaseException as exc:
                        if breaker is not None:
                            if mode == _FAST:
                                breaker._fast_exception(ticket, exc)
                            elif mode == _TIMED:
                                core.admit_late()
                                breaker._record_exception(ticket, exc, now)
                            else:
                                breaker._record_exception(
                                    ticket, exc, now if breaker._timed else None
                                )
                        if retry is None or not isinstance(exc, Exception):
                            if retry is not None:
                                retry._first_interrupted += 1
                            raise
                        failure: Exception | None = exc
                    else:
                        failure = None
                        end: float | None = None
                        if breaker is not None:
                            if mode == _GENERAL:
                                breaker._end(ticket, now if breaker._timed else None, result)
                            else:
                                if mode == _TIMED:
                                    end = clock()
                                    duration = end - now
                                    if duration >= 0.0:  # LatencyHistogram.observe, inlined
                                        histogram = breaker._histogram
                                        histogram.counts[
                                            bisect_left(histogram.bounds, duration)
                                        ] += 1
                                        histogram.count += 1
                                        histogram.sum += duration
                                if core.epoch == ticket:
                                    core.fast_successes += 1
                                    core.consecutive = 0
                                else:
                                    breaker._fast_stale()
                        if retry is not None:
                            retry._first_ok += 1
                    # -- later attempts: Retry's own loop around the inner chain ----------------
                    if failure is not None:
                        assert retry is not None
                        attempt = self._attempt
                        if attempt is None:
                            args: tuple[Any, ...] = (ctx,)
                            attempt = op
                        else:
                            args = (*self._inner, op, ctx)
                        result = await retry._retry_loop(
                            attempt, args, {}, failure, None, None, _INF
                        )
                        failure = None
                        end = None
                finally:
                    if permit is not None:
                        permit[1](None, None, None)
            except BaseException as exc:
                if scope is not None:
                    expired = self._deadline_timeout._close(scope, exc)
                    _deadline_reset(scope_token)
                    if expired is not None:
                        raise expired from exc
                raise
            if scope is not None:
                expired = self._deadline_timeout._close(scope, None)
                _deadline_reset(scope_token)
                if expired is not None:
                    raise expired  # noqa: TRY301 - raised in this frame on purpose
        except BaseException as exc:
            self._failed(exc, now)
            raise
        finally:
            _ctx_reset(token)
        counts.successes += 1
        budget = self._budget
        if budget is not None or self._measure:
            if end is None:
                end = clock()
            if budget is not None:
                budget.record(True, end if self._budget_shares_clock else None)
            latency = self._latency
            if latency is not None:
                latency.record(end - now)
        return result
