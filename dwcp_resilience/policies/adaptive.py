"""``AdaptiveRateLimiter``: a token bucket whose rate follows the observed latency.

The Go package's rule (``NewAdaptiveRateLimiter``), kept as is:

- a sliding window of the last ``window_size`` latencies; nothing happens until it holds
  ``window_size // 2`` samples;
- then, on every sample: ``p95 = sorted[n * 95 // 100]`` and the mean over the window; if
  ``p95 > 1.2 * target`` the rate is multiplied by 0.9; else if ``p95 < 0.8 * target`` and
  ``mean < target``, by 1.05; the new rate is clamped to ``[min_rate, max_rate]``;
- the burst is ``int(rate)`` (at least 1) after every change.

What changed: the Go code bubble-sorted the whole window on every sample (O(n^2)). Here the window is
kept sorted as it slides (``bisect.insort`` in, a bisected delete out: O(n) memmove, O(log n)
compares), and the mean is a running sum (re-summed exactly once per window to stop float drift).
A rate change keeps the tokens in the bucket and the waiters' order (see ``RateLimiter.set_rate``).

``call`` and ``@limiter`` record each call's latency (success or failure; a cancelled call records
nothing). ``async with`` and ``acquire`` only admit: report latencies with ``record_latency``.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from ..core.clock import Clock
from ..core.errors import not_callable
from ..core.validate import check_int, check_number
from .ratelimit import RateLimiter, RateLimiterStatistics

__all__ = ("AdaptiveRateLimiter", "AdaptiveRateLimiterStatistics")

P = ParamSpec("P")
T = TypeVar("T")

DECREASE = 0.9
INCREASE = 1.05


@dataclass(frozen=True, slots=True)
class AdaptiveRateLimiterStatistics(RateLimiterStatistics):
    """A rate limiter snapshot plus the adaptation state.

    :ivar min_rate: the lowest rate allowed.
    :ivar max_rate: the highest rate allowed.
    :ivar target_latency: the latency target, in seconds.
    :ivar average_latency: the mean over the window (0.0 when empty).
    :ivar p95_latency: the window's 95th percentile (0.0 when empty).
    :ivar samples: latencies in the window.
    :ivar adjustments: rate changes made so far.
    """

    min_rate: float
    max_rate: float
    target_latency: float
    average_latency: float
    p95_latency: float
    samples: int
    adjustments: int


def _burst_for(rate: float) -> int:
    return max(1, int(rate))


class AdaptiveRateLimiter(RateLimiter):
    """A rate limiter that lowers its rate when latency rises and raises it when latency is low.

    Args:
        name: the name used in errors, statistics and metrics.
        initial_rate: the starting rate (tokens per second); within ``[min_rate, max_rate]``.
        min_rate: the lowest rate; finite and > 0.
        max_rate: the highest rate; finite and >= ``min_rate``.
        target_latency: the latency target in seconds; finite and > 0.
        window_size: how many recent latencies to keep; an int >= 2.
        max_wait: as for :class:`RateLimiter`.
        clock: as for :class:`RateLimiter` (also times ``call``).

    Raises:
        ValueError: if a rate or the target is NaN, infinite or <= 0, the rates are out of order,
            or ``window_size`` < 2.
        TypeError: if an argument has the wrong type.
    """

    __slots__ = (
        "_count",
        "_max_rate",
        "_min_rate",
        "_samples",
        "_sorted",
        "_sum",
        "_target",
        "adjustments",
    )

    def __init__(
        self,
        name: str,
        *,
        initial_rate: float,
        min_rate: float,
        max_rate: float,
        target_latency: float,
        window_size: int = 100,
        max_wait: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        min_rate = check_number(min_rate, "min_rate", min_value=0.0, allow_zero=False)
        max_rate = check_number(max_rate, "max_rate", min_value=min_rate)
        initial_rate = check_number(
            initial_rate, "initial_rate", min_value=min_rate, max_value=max_rate
        )
        self._target = check_number(
            target_latency, "target_latency", min_value=0.0, allow_zero=False
        )
        window = check_int(window_size, "window_size", min_value=2)
        super().__init__(
            name,
            rate=initial_rate,
            burst=_burst_for(initial_rate),
            max_wait=max_wait,
            clock=clock,
        )
        self._min_rate = min_rate
        self._max_rate = max_rate
        self._samples: deque[float] = deque(maxlen=window)
        self._sorted: list[float] = []
        self._sum = 0.0
        self._count = 0
        self.adjustments = 0

    @property
    def target_latency(self) -> float:
        return self._target

    def record_latency(self, seconds: float) -> None:
        """Add one latency sample and adapt the rate (the Go ``RecordLatency``).

        NaN and infinite samples are dropped; negative ones (a clock that stepped back) count as 0.
        """
        if not math.isfinite(seconds):
            return
        seconds = max(seconds, 0.0)
        samples = self._samples
        ordered = self._sorted
        if len(samples) == samples.maxlen:
            oldest = samples[0]
            del ordered[bisect_left(ordered, oldest)]
            self._sum -= oldest
        samples.append(seconds)
        insort(ordered, seconds)
        self._sum += seconds
        n = len(ordered)
        self._count += 1
        if self._count % n == 0:
            self._sum = math.fsum(ordered)  # re-sum once per window: a running float sum drifts
        if n < (samples.maxlen or 0) // 2:
            return
        p95 = ordered[n * 95 // 100]
        mean = self._sum / n
        target = self._target
        if p95 > 1.2 * target:
            rate = self.rate * DECREASE
        elif p95 < 0.8 * target and mean < target:
            rate = self.rate * INCREASE
        else:
            return
        rate = min(self._max_rate, max(self._min_rate, rate))
        if rate != self.rate:
            self.set_rate(rate, _burst_for(rate))
            self.adjustments += 1

    def statistics(self) -> AdaptiveRateLimiterStatistics:
        base = RateLimiter.statistics(self)
        ordered = self._sorted
        n = len(ordered)
        return AdaptiveRateLimiterStatistics(
            name=base.name,
            rate=base.rate,
            burst=base.burst,
            tokens=base.tokens,
            allowed=base.allowed,
            rejected=base.rejected,
            cancelled=base.cancelled,
            waiting=base.waiting,
            min_rate=self._min_rate,
            max_rate=self._max_rate,
            target_latency=self._target,
            average_latency=self._sum / n if n else 0.0,
            p95_latency=ordered[n * 95 // 100] if n else 0.0,
            samples=n,
            adjustments=self.adjustments,
        )

    def __repr__(self) -> str:
        return (
            f"<AdaptiveRateLimiter {self._name!r} rate={self.rate:g}/s "
            f"[{self._min_rate:g}..{self._max_rate:g}] target={self._target:g}s "
            f"adjustments={self.adjustments}>"
        )

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Take a token, run ``fn(*args, **kwargs)`` and record its latency.

        Raises:
            RateLimited: if no token can be had within ``max_wait``; ``fn`` is not run.
        """
        if not callable(fn):
            raise not_callable(fn)
        await self.acquire()
        start = self._now()
        try:
            result = await fn(*args, **kwargs)
        except Exception:
            self.record_latency(self._now() - start)
            raise
        self.record_latency(self._now() - start)
        return result
