"""The pure core of the adaptive concurrency limiter: latency samples in, a concurrency limit out.

Plain ``def`` s that take ``now`` (no clock, no await); :class:`AdaptiveConcurrencyLimiter
<dwcp_resilience.AdaptiveConcurrencyLimiter>` is the async shell, and enforces the limit with a
:class:`~dwcp_resilience.Bulkhead` that it resizes.

**Sample windows.** Each admitted call that ends (success or failure) is one sample: its latency,
the calls in flight when it ended, and whether it was a *drop* (a failure the limiter's ``failure=``
matcher names: by default a timeout). Samples are gathered into windows of at least ``window``
seconds and ``min_samples`` samples (Netflix's ``WindowedLimit``); each window gives the algorithm one
update with the window's mean latency, its largest in-flight count and whether any sample dropped.

**The algorithms** (frozen settings; each limiter keeps its own state):

- :class:`Gradient2`, Netflix concurrency-limits' ``Gradient2Limit``: the *baseline* is a long
  exponential average of the window latencies (``long_window`` windows, the first 10 averaged
  plainly); ``gradient = clamp(tolerance * baseline / latency, 0.5, 1.0)`` and
  ``limit = limit * (1 - smoothing) + (limit * gradient + queue_size) * smoothing``. While latency
  stays within ``tolerance`` times the baseline the limit grows by ``queue_size * smoothing`` per
  window; above it, the limit shrinks towards the concurrency at which latency is back under the
  tolerance. The limit does not move while the calls in flight stay under half of it (the caller,
  not the backend, is the bottleneck), and when latency falls under half the baseline, the baseline
  decays by 5 % per window (a recovery after a long overload).
- :class:`AIMD`: additive increase, multiplicative decrease (``AIMDLimit``): a window with a drop
  or a mean latency above ``latency_threshold`` multiplies the limit by ``backoff_ratio``; otherwise,
  if the calls in flight reached half the limit, it grows by ``increase``.

**Baseline probes** (Gradient2, Envoy's minRTT measurement). Under a long overload the averaged
baseline follows the latency it is meant to judge, and the limit creeps up (concurrency-limits PR #134
and #165, failsafe-go #127). Every ``probe_interval`` seconds (jittered by up to ``probe_jitter`` of
it, and at once after 5 windows in a row at ``min_limit``), the limit is pinned to ``min_limit``
until ``probe_samples`` calls admitted after the pin have ended; their median latency becomes the
baseline, and the limit goes back to where it was. Samples of calls admitted before the pin
(an older *epoch*) are ignored during a probe: they ran at the old concurrency.

The enforced limit is ``int(estimate)`` within ``[min_limit, max_limit]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import median

from ..core.validate import check_int, check_number

__all__ = ("AIMD", "ConcurrencyCore", "Gradient2", "LimitAlgorithm")

WARMUP = 10
"""Windows averaged plainly before the baseline becomes an exponential average (Netflix's 10)."""

DECAY = 0.95
"""The baseline's decay per window while latency is under half of it (Netflix's rule)."""

STUCK_WINDOWS = 5
"""Windows in a row at ``min_limit`` after which a probe starts at once (Envoy's 5)."""


@dataclass(frozen=True, slots=True)
class Gradient2:
    """Netflix's Gradient2 limit: latency against a long-term baseline (see the module docstring).

    Args:
        tolerance: how far above the baseline latency may go before the limit shrinks (>= 1.0).
        smoothing: the weight of each window's new estimate, in (0, 1].
        queue_size: how much the limit may grow per window while latency is fine (>= 0).
        long_window: the baseline's averaging length, in windows (>= 1).
        probe_interval: seconds between baseline probes; ``None``: never probe (the baseline may
            then drift up under a long overload, as Netflix's does).
        probe_samples: calls measured per probe (>= 1).
        probe_jitter: the probe interval is lengthened by a random fraction up to this (0 to 1).

    Raises:
        ValueError, TypeError: a setting out of range or of the wrong type (the message names it).
    """

    tolerance: float = 1.5
    smoothing: float = 0.2
    queue_size: float = 4.0
    long_window: int = 600
    probe_interval: float | None = 60.0
    probe_samples: int = 10
    probe_jitter: float = 0.15

    def __post_init__(self) -> None:
        check_number(self.tolerance, "tolerance", min_value=1.0)
        check_number(self.smoothing, "smoothing", min_value=0.0, allow_zero=False, max_value=1.0)
        check_number(self.queue_size, "queue_size", min_value=0.0)
        check_int(self.long_window, "long_window", min_value=1)
        if self.probe_interval is not None:
            check_number(self.probe_interval, "probe_interval", min_value=0.0, allow_zero=False)
        check_int(self.probe_samples, "probe_samples", min_value=1)
        check_number(self.probe_jitter, "probe_jitter", min_value=0.0, max_value=1.0)

    @property
    def label(self) -> str:
        return "gradient2"


@dataclass(frozen=True, slots=True)
class AIMD:
    """Additive increase, multiplicative decrease on drops and slow windows.

    Args:
        latency_threshold: a window whose mean latency is above this many seconds counts as a drop
            (finite, > 0).
        backoff_ratio: the limit's factor on a drop, in [0.5, 1.0).
        increase: what the limit gains per window without a drop (> 0).

    Raises:
        ValueError, TypeError: a setting out of range or of the wrong type (the message names it).
    """

    latency_threshold: float
    backoff_ratio: float = 0.9
    increase: float = 1.0

    def __post_init__(self) -> None:
        check_number(self.latency_threshold, "latency_threshold", min_value=0.0, allow_zero=False)
        ratio = check_number(self.backoff_ratio, "backoff_ratio", min_value=0.5, max_value=1.0)
        if ratio == 1.0:
            raise ValueError("backoff_ratio must be < 1.0, got 1.0")
        check_number(self.increase, "increase", min_value=0.0, allow_zero=False)

    @property
    def label(self) -> str:
        return "aimd"


LimitAlgorithm = Gradient2 | AIMD
"""The algorithms a limiter can run."""


class ConcurrencyCore:
    """Windows of samples, the algorithm's state, probes, and the limit they give.

    Args:
        algorithm: a :class:`Gradient2` or :class:`AIMD`.
        initial_limit, min_limit, max_limit: ints with ``1 <= min <= initial <= max``.
        window: the shortest window in seconds (finite, >= 0; 0: ``min_samples`` samples each).
        min_samples: the fewest samples in a window (>= 1).
        random: a uniform draw in ``[0, 1)`` for the probe jitter.

    Raises:
        ValueError, TypeError: a setting out of range or of the wrong type (the message names it).
    """

    __slots__ = (
        "_algorithm",
        "_min_samples",
        "_next_probe",
        "_probe",
        "_random",
        "_stuck",
        "_w_drop",
        "_w_inflight",
        "_w_n",
        "_w_start",
        "_w_sum",
        "_warm_sum",
        "_window",
        "baseline",
        "changes",
        "drops",
        "epoch",
        "estimate",
        "limit",
        "max_limit",
        "min_limit",
        "previous",
        "probes",
        "reason",
        "rtt",
        "samples",
        "stale",
        "updates",
    )

    def __init__(
        self,
        algorithm: LimitAlgorithm,
        *,
        initial_limit: int,
        min_limit: int,
        max_limit: int,
        window: float,
        min_samples: int,
        random: Callable[[], float],
    ) -> None:
        if not isinstance(algorithm, Gradient2 | AIMD):
            raise TypeError(f"algorithm must be Gradient2(...) or AIMD(...), got {algorithm!r}")
        self._algorithm = algorithm
        self.min_limit = check_int(min_limit, "min_limit", min_value=1)
        self.max_limit = check_int(max_limit, "max_limit", min_value=self.min_limit)
        initial = check_int(
            initial_limit, "initial_limit", min_value=self.min_limit, max_value=self.max_limit
        )
        self._window = check_number(window, "window", min_value=0.0)
        self._min_samples = check_int(min_samples, "min_samples", min_value=1)
        self._random = random
        self.estimate = float(initial)  # the algorithm's limit, a float
        self.limit = initial  # the enforced limit (min_limit while probing)
        self.epoch = 0  # bumped when a probe pins the limit
        self.baseline = 0.0  # Gradient2's long-term latency (0.0 until the first window)
        self._warm_sum = 0.0  # the window means of the warm-up
        self.rtt = 0.0  # the last window's mean latency
        self._probe: list[float] | None = None  # a probe's samples while one runs
        self._next_probe = math.nan  # scheduled at the first sample
        self._stuck = 0
        self._w_start = math.nan
        self._w_sum = 0.0
        self._w_n = 0
        self._w_inflight = 0
        self._w_drop = False
        self.samples = self.drops = self.stale = self.updates = self.changes = self.probes = 0
        self.reason = ""  # why ``limit`` last changed: "update", "probe" or "probe_done"
        self.previous = initial  # the limit before its last change

    @property
    def algorithm(self) -> LimitAlgorithm:
        return self._algorithm

    @property
    def probing(self) -> bool:
        """True while a probe pins the limit to ``min_limit``."""
        return self._probe is not None

    def sample(self, now: float, rtt: float, inflight: int, dropped: bool, epoch: int) -> bool:
        """Record one ended call (admitted in ``epoch``) at ``now``; True when ``limit`` changed.

        ``rtt`` is its latency (a negative one, from a clock that stepped back, counts as 0; NaN is
        ignored), ``inflight`` the calls in flight when it ended, itself included.
        """
        if rtt != rtt:  # noqa: PLR0124 - NaN, without a call on the hot path
            return False
        if rtt < 0.0:  # noqa: PLR1730 - max() costs a call on the hot path
            rtt = 0.0
        if self._probe is not None:
            return self._probe_sample(now, rtt, epoch)
        self.samples += 1
        if dropped:
            self.drops += 1
            self._w_drop = True
        n = self._w_n + 1
        self._w_n = n
        if n == 1:
            self._w_start = now
        self._w_sum += rtt
        if inflight > self._w_inflight:  # noqa: PLR1730 - max() costs a call on the hot path
            self._w_inflight = inflight
        if n < self._min_samples or now - self._w_start < self._window:
            return False
        mean = self._w_sum / self._w_n
        peak, drop = self._w_inflight, self._w_drop
        self._w_sum, self._w_n, self._w_inflight, self._w_drop = 0.0, 0, 0, False
        old = self.limit
        self._update(mean, peak, drop)
        reason = "update"
        interval = self._probe_interval()
        if interval is not None:
            if self._next_probe != self._next_probe:  # the first window: schedule the first probe
                self._schedule(now, interval)
            self._stuck = self._stuck + 1 if self.limit == self.min_limit else 0
            if now >= self._next_probe or self._stuck >= STUCK_WINDOWS:
                self._start_probe()
                reason = "probe"
        return self._changed(old, reason)

    def _probe_interval(self) -> float | None:
        algorithm = self._algorithm
        return algorithm.probe_interval if isinstance(algorithm, Gradient2) else None

    def _schedule(self, now: float, interval: float) -> None:
        jitter = self._algorithm.probe_jitter if isinstance(self._algorithm, Gradient2) else 0.0
        self._next_probe = now + interval * (1.0 + jitter * self._random())

    def _update(self, rtt: float, inflight: int, dropped: bool) -> None:
        """One window's update of the estimate (and, for Gradient2, of the baseline)."""
        self.updates += 1
        self.rtt = rtt
        estimate = self.estimate
        algorithm = self._algorithm
        if isinstance(algorithm, AIMD):
            if dropped or rtt > algorithm.latency_threshold:
                estimate = min(estimate - 1.0, estimate * algorithm.backoff_ratio)
            elif inflight * 2 >= estimate:
                estimate += algorithm.increase
        else:
            n = self.updates
            if n <= WARMUP:  # a plain mean of the first windows (a decay does not carry over)
                self._warm_sum += rtt
                self.baseline = self._warm_sum / n
            else:
                self.baseline += (rtt - self.baseline) * 2.0 / (algorithm.long_window + 1)
            baseline = self.baseline
            if baseline > 2.0 * rtt:  # got much faster: let the baseline fall faster
                self.baseline = baseline = baseline * DECAY
            if inflight * 2 >= estimate:  # else app-limited: the limit stays
                ratio = algorithm.tolerance * baseline / rtt if rtt > 0.0 else 1.0
                gradient = 0.5 if ratio < 0.5 else min(ratio, 1.0)
                target = estimate * gradient + algorithm.queue_size
                smoothing = algorithm.smoothing
                estimate = estimate * (1.0 - smoothing) + target * smoothing
        self.estimate = min(max(estimate, float(self.min_limit)), float(self.max_limit))
        self.limit = int(self.estimate)

    def _start_probe(self) -> None:
        self.probes += 1
        self.epoch += 1
        self._probe = []
        self._stuck = 0
        self.limit = self.min_limit
        self._w_sum, self._w_n, self._w_inflight, self._w_drop = 0.0, 0, 0, False

    def _probe_sample(self, now: float, rtt: float, epoch: int) -> bool:
        probe = self._probe
        assert probe is not None
        if epoch != self.epoch:  # admitted before the pin: it ran at the old concurrency
            self.stale += 1
            return False
        self.samples += 1
        probe.append(rtt)
        algorithm = self._algorithm
        assert isinstance(algorithm, Gradient2)
        if len(probe) < algorithm.probe_samples:
            return False
        self._probe = None
        self.baseline = median(probe)
        self.updates = max(self.updates, WARMUP)  # the baseline is measured: no plain warm-up
        old = self.limit
        self.limit = int(self.estimate)
        interval = algorithm.probe_interval
        assert interval is not None
        self._schedule(now, interval)
        return self._changed(old, "probe_done")

    def _changed(self, old: int, reason: str) -> bool:
        if self.limit != old:
            self.changes += 1
            self.reason = reason
            self.previous = old
            return True
        return False
