"""``KeyedRateLimiter``: one token bucket per key (peer, tenant, host), with a bounded key count.

Each key gets its own :class:`~dwcp_resilience.policies.ratelimit.RateLimiter` (same rate and burst),
created on first use. The key map stays bounded:

- **Idle eviction, without loss.** A key whose bucket is full again and has nobody waiting is dropped:
  a new bucket starts full, so dropping it changes no decision. Each new key sweeps a few of the
  least recently used keys (amortised O(1)); :meth:`KeyedRateLimiter.evict_idle` sweeps them all.
- **A hard cap.** When ``max_keys`` keys are live and none of them is idle, a *new* key is refused
  with :class:`~dwcp_resilience.RateLimited` (``retry_after``: when the least recently used bucket
  will be full again). Evicting a busy key instead would hand it a fresh, full bucket, so a flood of
  new keys could multiply the admitted rate; refusing keeps every promise of every bucket.

No per-key timer or task exists: eviction happens inside calls.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from ..core.clock import Clock, loop_time
from ..core.errors import RateLimited, not_callable
from ..core.validate import check_int, check_name, check_number
from .ratelimit import RateLimiter
from .ratelimit_core import TokenBucket

__all__ = ("KeyedRateLimiter", "KeyedRateLimiterStatistics")

P = ParamSpec("P")
T = TypeVar("T")

_SWEEP_BUDGET = 8


@dataclass(frozen=True, slots=True)
class KeyedRateLimiterStatistics:
    """A snapshot of a keyed limiter.

    :ivar name: the limiter's name.
    :ivar rate: tokens per second, per key.
    :ivar burst: bucket capacity, per key.
    :ivar keys: live keys now.
    :ivar max_keys: the cap on live keys.
    :ivar evicted: keys dropped as idle so far.
    :ivar allowed: requests admitted, over all keys (evicted ones included).
    :ivar rejected: requests refused, over all keys, plus new keys refused at the cap.
    :ivar rejected_keys: of which, new keys refused because the map was full of busy keys.
    :ivar cancelled: waiting requests whose task was cancelled.
    :ivar waiting: requests waiting now.
    """

    name: str
    rate: float
    burst: int
    keys: int
    max_keys: int
    evicted: int
    allowed: int
    rejected: int
    rejected_keys: int
    cancelled: int
    waiting: int


class KeyedRateLimiter:
    """Per-key token buckets with a bounded key count and lossless idle eviction.

    Args:
        name: the name used in errors, statistics and metrics.
        rate: tokens per second for each key; finite and > 0.
        burst: each key's bucket capacity; an int >= 1.
        max_keys: the most keys kept at once; an int >= 1.
        max_wait: as for :class:`RateLimiter` (the default wait bound of ``acquire`` and ``call``).
        clock: a monotonic clock; ``None`` means the running loop's.

    Raises:
        ValueError, TypeError: on bad configuration, naming the field.
    """

    __slots__ = (
        "_burst",
        "_clock",
        "_limiters",
        "_max_keys",
        "_max_wait",
        "_name",
        "_rate",
        "_retired",
        "evicted",
        "rejected_keys",
    )

    def __init__(
        self,
        name: str,
        *,
        rate: float,
        burst: int,
        max_keys: int = 10_000,
        max_wait: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._name = check_name(name)
        TokenBucket(rate, burst)  # validates rate and burst, naming the field
        self._rate = float(rate)
        self._burst = burst
        self._max_keys = check_int(max_keys, "max_keys", min_value=1)
        self._max_wait = (
            None
            if max_wait is None
            else check_number(max_wait, "max_wait", min_value=0.0, allow_inf=True)
        )
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a zero-argument callable, got {type(clock).__name__}")
        self._clock: Clock = loop_time if clock is None else clock
        self._limiters: OrderedDict[Hashable, RateLimiter] = OrderedDict()
        self._retired = [0, 0, 0]  # allowed, rejected, cancelled of evicted keys
        self.evicted = 0
        self.rejected_keys = 0

    @property
    def name(self) -> str:
        return self._name

    def __len__(self) -> int:
        return len(self._limiters)

    def __repr__(self) -> str:
        return (
            f"<KeyedRateLimiter {self._name!r} rate={self._rate:g}/s burst={self._burst} "
            f"[{len(self._limiters)}/{self._max_keys} keys]>"
        )

    # -- the key map -----------------------------------------------------------------------------

    @staticmethod
    def _idle(limiter: RateLimiter) -> bool:
        stats = limiter.statistics()
        return stats.waiting == 0 and stats.tokens >= stats.burst

    def _evict(self, key: Hashable, limiter: RateLimiter) -> None:
        del self._limiters[key]
        stats = limiter.statistics()
        retired = self._retired
        retired[0] += stats.allowed
        retired[1] += stats.rejected
        retired[2] += stats.cancelled
        self.evicted += 1

    def _sweep(self, budget: int) -> None:
        limiters = self._limiters
        while budget > 0 and limiters:
            key, limiter = next(iter(limiters.items()))
            if not self._idle(limiter):
                return
            self._evict(key, limiter)
            budget -= 1

    def evict_idle(self) -> int:
        """Drop every key whose bucket is full and idle; return how many were dropped."""
        idle = [(k, lim) for k, lim in self._limiters.items() if self._idle(lim)]
        for key, limiter in idle:
            self._evict(key, limiter)
        return len(idle)

    def _limiter(self, key: Hashable) -> RateLimiter:
        limiters = self._limiters
        limiter = limiters.get(key)
        if limiter is not None:
            limiters.move_to_end(key)
            return limiter
        self._sweep(_SWEEP_BUDGET)
        if len(limiters) >= self._max_keys:
            self.evict_idle()
            if len(limiters) >= self._max_keys:
                self.rejected_keys += 1
                oldest = next(iter(limiters.values())).statistics()
                wait = (oldest.burst - oldest.tokens) / oldest.rate  # when it will be full again
                raise RateLimited(self._name, wait if wait > 0.0 else None)
        limiter = RateLimiter(
            self._name,
            rate=self._rate,
            burst=self._burst,
            max_wait=self._max_wait,
            clock=self._clock,
        )
        limiters[key] = limiter
        return limiter

    def for_key(self, key: Hashable) -> RateLimiter | None:
        """The live limiter of ``key`` (``None`` if it has none); for inspection only: use the
        keyed methods to acquire, or an eviction may split one key over two buckets."""
        return self._limiters.get(key)

    # -- acquiring -------------------------------------------------------------------------------

    def try_acquire(self, key: Hashable, n: int = 1) -> bool:
        """Take ``n`` tokens from ``key`` 's bucket now if they are there; never waits.

        Raises:
            RateLimited: if ``key`` is new and the key map is full of busy keys.
            ValueError: if ``n`` < 1 or ``n`` > ``burst``.
        """
        return self._limiter(key).try_acquire(n)

    async def acquire(self, key: Hashable, n: int = 1, max_wait: float | None = None) -> None:
        """Take ``n`` tokens from ``key`` 's bucket, waiting (FIFO per key) up to ``max_wait``.

        Raises:
            RateLimited: if the tokens cannot be had in time, or ``key`` is new and the key map is
                full of busy keys.
            ValueError: if ``n`` < 1 or ``n`` > ``burst``.
        """
        await self._limiter(key).acquire(n, max_wait)

    async def call(
        self, key: Hashable, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Take one token from ``key`` 's bucket, then run ``fn(*args, **kwargs)``."""
        if not callable(fn):
            raise not_callable(fn)
        await self.acquire(key)
        return await fn(*args, **kwargs)

    def statistics(self) -> KeyedRateLimiterStatistics:
        """Totals over every key, live and evicted."""
        allowed, rejected, cancelled = self._retired
        waiting = 0
        for limiter in self._limiters.values():
            stats = limiter.statistics()
            allowed += stats.allowed
            rejected += stats.rejected
            cancelled += stats.cancelled
            waiting += stats.waiting
        return KeyedRateLimiterStatistics(
            name=self._name,
            rate=self._rate,
            burst=self._burst,
            keys=len(self._limiters),
            max_keys=self._max_keys,
            evicted=self.evicted,
            allowed=allowed,
            rejected=rejected + self.rejected_keys,
            rejected_keys=self.rejected_keys,
            cancelled=cancelled,
            waiting=waiting,
        )
