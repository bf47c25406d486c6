"""Hedge delays that follow observed latency: :class:`Percentile` (the configuration) and
:class:`LatencyWindow` (the samples).

A :class:`LatencyWindow` keeps the last ``size`` latencies in a ring (arrival order) and the same
values in a sorted list, so a sample costs one ``insort`` and one ``del`` (two ``memmove`` s of at
most ``size`` pointers) and a quantile is one index: no sort per call.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from dataclasses import dataclass

from ..core.validate import check_int, check_number

__all__ = ("LatencyWindow", "Percentile")

_INF = math.inf


@dataclass(frozen=True, slots=True)
class Percentile:
    """A hedge delay that follows observed latency: the ``quantile`` of the last ``window``
    successful attempts' durations, or ``fallback`` seconds while fewer than ``min_samples`` are
    known.

    Args:
        quantile: in (0, 1] (0.95: hedge the calls slower than 95 % of recent successes).
        window: how many recent latencies are kept (1 to 100 000).
        min_samples: latencies needed before the quantile is used (1 to ``window``).
        fallback: the delay in seconds until then (finite, >= 0).
        minimum: the quantile's delay never goes below this (seconds, finite, >= 0; default 0).
            Set it to two ticks of a coarse loop clock: uvloop's counts whole milliseconds, so
            attempts of 0.3 ms are sampled as 0 or 1 ms, a p95 of 1 ms follows, and a 1 ms
            delay hedges every call that straddles a tick (the budget then runs dry for the slow
            ones). It is also the floor under which a hedge cannot pay for itself.

    The quantile is the nearest-rank one: the ``ceil(quantile * n)``-th smallest of ``n`` samples.
    Only successful attempts are sampled (a cancelled loser's duration is unknown), so the
    window leans towards fast attempts; the hedge budget bounds what that costs.

    Raises:
        ValueError, TypeError: a value out of range or of the wrong type (naming the field).
    """

    quantile: float = 0.95
    window: int = 200
    min_samples: int = 20
    fallback: float = 1.0
    minimum: float = 0.0

    def __post_init__(self) -> None:
        check_number(self.quantile, "quantile", min_value=0.0, allow_zero=False, max_value=1.0)
        check_int(self.window, "window", min_value=1, max_value=100_000)
        check_int(self.min_samples, "min_samples", min_value=1, max_value=self.window)
        check_number(self.fallback, "fallback", min_value=0.0)
        check_number(self.minimum, "minimum", min_value=0.0)


class LatencyWindow:
    """The last ``size`` latencies, kept in arrival order and sorted (for :class:`Percentile`)."""

    __slots__ = ("_next", "_ring", "_size", "_sorted")

    def __init__(self, size: int) -> None:
        self._size = check_int(size, "size", min_value=1)
        self._ring: list[float] = []
        self._sorted: list[float] = []
        self._next = 0

    def __len__(self) -> int:
        return len(self._ring)

    def add(self, latency: float) -> None:
        """Add one latency (negative or NaN readings count as 0, ``inf`` is dropped)."""
        if not latency > 0.0:  # also NaN: a clock that stepped back
            latency = 0.0
        elif latency == _INF:
            return
        ring, ordered = self._ring, self._sorted
        if len(ring) < self._size:
            ring.append(latency)
        else:
            slot = self._next
            del ordered[bisect_left(ordered, ring[slot])]
            ring[slot] = latency
            self._next = (slot + 1) % self._size
        insort(ordered, latency)

    def quantile(self, q: float) -> float | None:
        """The nearest-rank ``q``-quantile of the kept latencies, ``None`` when there are none."""
        ordered = self._sorted
        n = len(ordered)
        if n == 0:
            return None
        rank = math.ceil(q * n) - 1
        return ordered[min(max(rank, 0), n - 1)]

    def values(self) -> list[float]:
        """The kept latencies, oldest first."""
        return self._ring[self._next :] + self._ring[: self._next]
