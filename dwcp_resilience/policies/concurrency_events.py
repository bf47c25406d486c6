"""The adaptive concurrency limiter's options, events and statistics snapshot: no behaviour.

:class:`ConcurrencyLimitChanged` and :class:`ConcurrencyRejected` are what an
:class:`~dwcp_resilience.AdaptiveConcurrencyLimiter` sends its listeners;
:class:`ConcurrencyLimiterStatistics` is what its ``statistics()`` returns;
:class:`ConcurrencyLimiterOptions` types the options the manager passes on.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypedDict

from ..core.events import Event
from ..core.outcome import ExceptionMatcher
from .concurrency_core import LimitAlgorithm

__all__ = (
    "ConcurrencyLimitChanged",
    "ConcurrencyLimiterOptions",
    "ConcurrencyLimiterStatistics",
    "ConcurrencyRejected",
)


class ConcurrencyLimiterOptions(TypedDict, total=False):
    """The keyword options of :class:`AdaptiveConcurrencyLimiter` but ``clock``: what
    :meth:`~dwcp_resilience.ResilienceManager.register_adaptive_concurrency_limiter` passes on."""

    algorithm: LimitAlgorithm | None
    initial_limit: int
    min_limit: int
    max_limit: int
    window: float
    min_samples: int
    max_queue: int
    max_wait: float | None
    failure: ExceptionMatcher
    ignore: ExceptionMatcher | None
    rng: random.Random | None
    listeners: Iterable[Callable[[Event], None]]


@dataclass(frozen=True, slots=True)
class ConcurrencyLimitChanged(Event):
    """The enforced limit moved: ``reason`` is ``"update"`` (a window's update), ``"probe"`` (a
    baseline probe pinned it to ``min_limit``) or ``"probe_done"`` (the probe ended)."""

    old: int
    new: int
    reason: str
    rtt: float
    baseline: float


@dataclass(frozen=True, slots=True)
class ConcurrencyRejected(Event):
    """A call was refused with :class:`~dwcp_resilience.ConcurrencyLimited` (``reason`` is
    ``"full"`` or ``"timeout"``)."""

    reason: str
    limit: int
    retry_after: float | None


@dataclass(frozen=True, slots=True)
class ConcurrencyLimiterStatistics:
    """A snapshot of an adaptive concurrency limiter.

    :ivar name: the limiter's name.
    :ivar algorithm: ``"gradient2"`` or ``"aimd"``.
    :ivar limit: the enforced limit now (``adaptive_concurrency_limit``).
    :ivar estimate: the algorithm's limit, before rounding down (kept while a probe pins ``limit``).
    :ivar min_limit: the lowest limit.
    :ivar max_limit: the highest limit.
    :ivar inflight: calls holding a permit now (above ``limit`` for a while after it shrank).
    :ivar queued: calls waiting for a permit.
    :ivar max_queue: the wait-queue capacity.
    :ivar admitted: calls admitted (at once or after waiting).
    :ivar rejected: calls refused: queue full plus wait timeouts.
    :ivar rejected_full: of which, refused because the queue was full (or ``max_queue`` is 0).
    :ivar timed_out: of which, refused because ``max_wait`` ran out.
    :ivar cancelled: waiting calls whose task was cancelled.
    :ivar samples: latency samples recorded (probe samples included).
    :ivar drops: samples that were drops (failures ``failure=`` names).
    :ivar ignored: admitted calls that ended without a sample (cancelled, ignored, inner rejection,
        or ``release()``).
    :ivar stale: samples ignored during a probe (calls admitted before it).
    :ivar updates: windows that updated the limit.
    :ivar limit_changes: changes of the enforced limit.
    :ivar probes: baseline probes started.
    :ivar probing: a probe pins the limit now.
    :ivar rtt: the last window's mean latency, in seconds (0.0 before the first).
    :ivar baseline: Gradient2's long-term latency, in seconds (0.0 for AIMD and before the first
        window).
    :ivar wait_buckets: ``(upper bound, cumulative count)`` of the queue waits, ``inf`` last.
    :ivar wait_sum: total seconds waited by admitted calls.
    :ivar wait_count: admitted calls observed (equals ``admitted``).
    """

    name: str
    algorithm: str
    limit: int
    estimate: float
    min_limit: int
    max_limit: int
    inflight: int
    queued: int
    max_queue: int
    admitted: int
    rejected: int
    rejected_full: int
    timed_out: int
    cancelled: int
    samples: int
    drops: int
    ignored: int
    stale: int
    updates: int
    limit_changes: int
    probes: int
    probing: bool
    rtt: float
    baseline: float
    wait_buckets: tuple[tuple[float, int], ...]
    wait_sum: float
    wait_count: int
