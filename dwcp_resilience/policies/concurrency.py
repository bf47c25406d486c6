"""``AdaptiveConcurrencyLimiter``: a bulkhead whose size follows the backend's latency.

The limit comes from :class:`~dwcp_resilience.policies.concurrency_core.ConcurrencyCore` (Gradient2
by default, AIMD as the simple alternative, see that module); it is enforced by a
:class:`~dwcp_resilience.Bulkhead` that this shell holds and resizes, so admission, the bounded FIFO
queue, ``max_wait``, the hand-off and the exactly-once release are the bulkhead's own (one home).

- A call takes a permit at once, or waits in the queue (``max_queue`` places, at most ``max_wait``
  seconds), or is refused with :class:`~dwcp_resilience.ConcurrencyLimited` (a ``BulkheadFull``).
  ``max_queue=0`` (the default) never waits.
- Each admitted call that ends is a latency sample: from admission to its end, queue wait excluded;
  successes and failures alike. A failure that ``failure=`` names (default: ``TimeoutError``, which
  ``DeadlineExceeded`` is) is also a *drop*, AIMD's signal. A cancelled call, one of our own
  rejections from an inner policy (it returned at once, the backend never saw it), and what
  ``ignore=`` names record nothing.
- A smaller limit interrupts nothing: calls in flight finish, and no call is admitted until fewer
  than the limit run.

Idioms: ``await limiter.call(fn, ...)``, ``@limiter``, ``async with limiter:`` (the block is the
sample), and ``permit = await limiter.acquire()`` then ``permit.record()`` (latency since admission),
``permit.record_latency(seconds)`` (one measured elsewhere) or ``permit.release()`` (no sample), for
code that cannot be wrapped.

Cost per call beyond the bulkhead's: two clock reads and the core's ``sample`` (a few float adds; a
window's update once per ``window``).
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import ParamSpec, TypeVar

from ..core._fused import WAIT, admission_of
from ..core.clock import Clock, loop_time
from ..core.errors import BulkheadFull, ConcurrencyLimited, not_callable
from ..core.events import Event, Listeners
from ..core.outcome import Classifier, ExceptionMatcher, Outcome
from ..core.policy import PolicyBase, TaskLocalStack
from ..core.validate import check_name
from .bulkhead import Bulkhead
from .concurrency_core import AIMD, ConcurrencyCore, Gradient2, LimitAlgorithm
from .concurrency_events import (
    ConcurrencyLimitChanged,
    ConcurrencyLimiterOptions,
    ConcurrencyLimiterStatistics,
    ConcurrencyRejected,
)

__all__ = (
    "AIMD",
    "AdaptiveConcurrencyLimiter",
    "ConcurrencyLimitChanged",
    "ConcurrencyLimiterOptions",
    "ConcurrencyLimiterStatistics",
    "ConcurrencyPermit",
    "ConcurrencyRejected",
    "Gradient2",
    "LimitAlgorithm",
)

P = ParamSpec("P")
T = TypeVar("T")

_NEUTRAL = Outcome.NEUTRAL
_FAILURE = Outcome.FAILURE


class ConcurrencyPermit:
    """One admitted call's permit, from :meth:`AdaptiveConcurrencyLimiter.acquire`.

    End it exactly once (later calls do nothing): :meth:`record` (its latency is the time since
    admission), :meth:`record_latency` (a latency measured elsewhere) or :meth:`release` (no sample).
    """

    __slots__ = ("_epoch", "_limiter", "_start")

    def __init__(self, limiter: AdaptiveConcurrencyLimiter, epoch: int, start: float) -> None:
        self._limiter: AdaptiveConcurrencyLimiter | None = limiter
        self._epoch = epoch
        self._start = start

    def record(self, *, dropped: bool = False) -> None:
        """End the call: a sample of the time since admission (``dropped``: it was a drop)."""
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter._finish(self._start, None, self._epoch, dropped)

    def record_latency(self, seconds: float, *, dropped: bool = False) -> None:
        """End the call with a latency measured elsewhere (NaN records no sample)."""
        limiter, self._limiter = self._limiter, None
        if limiter is None:
            pass
        elif math.isnan(seconds):
            limiter._discard()
        else:
            limiter._finish(None, seconds, self._epoch, dropped)

    def release(self) -> None:
        """End the call without a sample (it was cancelled, or says nothing of the backend)."""
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter._discard()


class AdaptiveConcurrencyLimiter(PolicyBase):
    """Limit concurrent calls to a limit that follows the measured latency.

    Args:
        name: the name used in errors, events, statistics and metrics.
        algorithm: :class:`~dwcp_resilience.Gradient2` (the default, ``Gradient2()``) or
            :class:`~dwcp_resilience.AIMD`.
        initial_limit: the limit to start from (``min_limit <= initial_limit <= max_limit``).
        min_limit: the lowest limit, and a baseline probe's concurrency (an int >= 1).
        max_limit: the highest limit.
        window: the shortest sample window, in seconds (finite, >= 0; 0: a window is
            ``min_samples`` samples, however short).
        min_samples: the fewest samples in a window (an int >= 1).
        max_queue: how many calls may wait for a permit (an int >= 0; 0: never wait).
        max_wait: the longest wait for a permit in seconds; ``None`` or ``inf``: no limit.
        failure: which exceptions are drops (default ``TimeoutError``): an exception type, a tuple
            of them, or a predicate.
        ignore: which exceptions record no sample at all (default: none beyond cancellation and
            our own rejections).
        clock: the monotonic clock for latency and waits (default: the running loop's).
        rng: the random source of the probe jitter (default: a fresh ``random.Random()``).
        listeners: callables receiving :class:`ConcurrencyLimitChanged` and
            :class:`ConcurrencyRejected`.

    Raises:
        ValueError: a limit, window, count or wait out of range (NaN included).
        TypeError: an argument of the wrong type (``True`` as a number included).
    """

    __slots__ = (
        "_bulkhead",
        "_classifier",
        "_clock",
        "_core",
        "_enter",
        "_exit",
        "_listeners",
        "_name",
        "_stack",
        "_wait",
        "ignored",
    )

    def __init__(
        self,
        name: str,
        *,
        algorithm: LimitAlgorithm | None = None,
        initial_limit: int = 20,
        min_limit: int = 1,
        max_limit: int = 1000,
        window: float = 1.0,
        min_samples: int = 10,
        max_queue: int = 0,
        max_wait: float | None = None,
        failure: ExceptionMatcher = TimeoutError,
        ignore: ExceptionMatcher | None = None,
        clock: Clock | None = None,
        rng: _random.Random | None = None,
        listeners: Iterable[Callable[[Event], None]] = (),
    ) -> None:
        self._name = check_name(name)
        if rng is not None and not isinstance(rng, _random.Random):
            raise TypeError(f"rng must be a random.Random, got {type(rng).__name__}")
        self._core = ConcurrencyCore(
            Gradient2() if algorithm is None else algorithm,
            initial_limit=initial_limit,
            min_limit=min_limit,
            max_limit=max_limit,
            window=window,
            min_samples=min_samples,
            random=(_random.Random() if rng is None else rng).random,
        )
        # The permits, the queue and the waits: a bulkhead sized to the current limit.
        self._bulkhead = Bulkhead(
            name,
            max_concurrent=self._core.limit,
            max_queue=max_queue,
            max_wait=max_wait,
            clock=clock,
        )
        self._clock: Clock = loop_time if clock is None else clock
        self._classifier = Classifier(failure, ignore=ignore)
        self._listeners: Listeners[Event] = Listeners(listeners)
        self._stack: TaskLocalStack[tuple[int, float]] = TaskLocalStack(f"concurrency-{name}")
        admission = admission_of(self._bulkhead)
        assert admission is not None and admission.exit is not None  # a plain Bulkhead fuses
        self._enter, self._wait, self._exit = admission.enter, admission.wait, admission.exit
        self.ignored = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def limit(self) -> int:
        """The enforced limit now."""
        return self._core.limit

    @property
    def inflight(self) -> int:
        """Calls holding a permit now."""
        return self._bulkhead.in_use

    @property
    def max_wait(self) -> float:
        return self._bulkhead.max_wait

    @property
    def max_queue(self) -> int:
        return self._bulkhead.max_queue

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Register a listener for :class:`ConcurrencyLimitChanged` and
        :class:`ConcurrencyRejected`."""
        self._listeners.add(listener)

    def remove_listener(self, listener: Callable[[Event], None]) -> None:
        """Unregister a listener (``ValueError`` if it was not registered)."""
        self._listeners.remove(listener)

    def __repr__(self) -> str:
        core = self._core
        return (
            f"<AdaptiveConcurrencyLimiter {self._name!r} {core.algorithm.label} "
            f"limit={core.limit} [{core.min_limit}..{core.max_limit}] inflight={self.inflight} "
            f"queued={self._bulkhead.queued}>"
        )

    def statistics(self) -> ConcurrencyLimiterStatistics:
        """A snapshot of the limit, the algorithm's state, the counters and the wait histogram."""
        core = self._core
        bulk = self._bulkhead.statistics()
        return ConcurrencyLimiterStatistics(
            name=self._name,
            algorithm=core.algorithm.label,
            limit=core.limit,
            estimate=core.estimate,
            min_limit=core.min_limit,
            max_limit=core.max_limit,
            inflight=bulk.concurrent,
            queued=bulk.queued,
            max_queue=bulk.max_queue,
            admitted=bulk.admitted,
            rejected=bulk.rejected,
            rejected_full=bulk.rejected_full,
            timed_out=bulk.timed_out,
            cancelled=bulk.cancelled,
            samples=core.samples,
            drops=core.drops,
            ignored=self.ignored,
            stale=core.stale,
            updates=core.updates,
            limit_changes=core.changes,
            probes=core.probes,
            probing=core.probing,
            rtt=core.rtt,
            baseline=core.baseline,
            wait_buckets=bulk.wait_buckets,
            wait_sum=bulk.wait_sum,
            wait_count=bulk.wait_count,
        )

    # -- admission and samples ------------------------------------------------------------------

    async def _queue(self) -> None:
        """The waiting path: the bulkhead's queue; its refusal becomes ours."""
        try:
            await self._wait()
        except BulkheadFull as exc:
            raise self._refused(exc.reason) from None

    def _refused(self, reason: str) -> ConcurrencyLimited:
        core = self._core
        retry_after = None
        if core.rtt > 0.0:
            retry_after = core.rtt * (self._bulkhead.queued + 1) / core.limit
        if self._listeners:
            event = ConcurrencyRejected(self._name, self._clock(), reason, core.limit, retry_after)
            self._listeners.emit(event)
        return ConcurrencyLimited(self._name, retry_after, reason)

    def _finish(
        self, start: float | None, latency: float | None, epoch: int, dropped: bool
    ) -> None:
        """Record one admitted call's sample (before its permit goes back, so that the calls in
        flight include it), resize the bulkhead if the limit moved, and give the permit back."""
        try:
            now = self._clock()
            rtt = now - start if start is not None else latency
            assert rtt is not None
            if self._core.sample(now, rtt, self._bulkhead.in_use, dropped, epoch):
                self._moved(now)
        finally:
            self._exit(None, None, None)

    def _moved(self, now: float) -> None:
        core = self._core
        self._bulkhead.resize(core.limit)
        if self._listeners:
            event = ConcurrencyLimitChanged(
                self._name, now, core.previous, core.limit, core.reason, core.rtt, core.baseline
            )
            self._listeners.emit(event)

    def _discard(self) -> None:
        self.ignored += 1
        self._exit(None, None, None)

    def _ended(self, start: float, epoch: int, exc: BaseException) -> None:
        """An admitted call raised: a sample (a drop if ``failure=`` names it), or none."""
        outcome = self._classifier.of_exception(exc)
        if outcome is _NEUTRAL:
            self._discard()
        else:
            self._finish(start, None, epoch, outcome is _FAILURE)

    # -- the idioms ------------------------------------------------------------------------------

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` holding a permit; its latency is a sample.

        Raises:
            ConcurrencyLimited: no permit within the limit (queue full, or ``max_wait`` ran out);
                ``fn`` is not run.
        """
        if not callable(fn):
            raise not_callable(fn)
        if self._enter() is WAIT:
            await self._queue()
        epoch = self._core.epoch
        start = self._clock()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._ended(start, epoch, exc)
            raise
        self._finish(start, None, epoch, False)
        return result

    async def acquire(self) -> ConcurrencyPermit:
        """Wait for a permit (as :meth:`call` does) and return it; end it exactly once.

        Raises:
            ConcurrencyLimited: no permit within the limit.
        """
        if self._enter() is WAIT:
            await self._queue()
        return ConcurrencyPermit(self, self._core.epoch, self._clock())

    async def __aenter__(self) -> AdaptiveConcurrencyLimiter:
        if self._enter() is WAIT:
            await self._queue()
        self._stack.push((self._core.epoch, self._clock()))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        epoch, start = self._stack.pop()
        if exc is None:
            self._finish(start, None, epoch, False)
        else:
            self._ended(start, epoch, exc)
