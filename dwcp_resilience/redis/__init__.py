"""Fleet state on Redis: rate limits, breaker decisions and error budgets shared across processes.

Needs the ``redis`` extra (``redis.asyncio``) and runs on asyncio and uvloop. Every Redis call goes
through a :class:`RedisBackend` (a guard breaker plus a per-call timeout); when Redis is down or slow
each primitive falls back to local state with a :class:`FleetFallback` event, and returns to shared
state, with a :class:`FleetRestored` event, once Redis answers again.
"""

from __future__ import annotations

from ._backend import (
    BackendUnavailable,
    FallbackTracker,
    FleetFallback,
    FleetRestored,
    RedisBackend,
)
from ._quorum import QuorumShare
from .breaker import FleetBreaker, FleetBreakerFollowed, FleetBreakerStatistics
from .budget import FleetBudgetSnapshot, FleetBudgetStatistics, FleetErrorBudget
from .limiter import RedisRateLimiter, RedisRateLimiterStatistics

__all__ = (
    "BackendUnavailable",
    "FallbackTracker",
    "FleetBreaker",
    "FleetBreakerFollowed",
    "FleetBreakerStatistics",
    "FleetBudgetSnapshot",
    "FleetBudgetStatistics",
    "FleetErrorBudget",
    "FleetFallback",
    "FleetRestored",
    "QuorumShare",
    "RedisBackend",
    "RedisRateLimiter",
    "RedisRateLimiterStatistics",
)
