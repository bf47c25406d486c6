"""``LatencyBudget``: a latency target at a percentile, over the last ``max_samples`` calls.

Semantics kept from the Go package (``go-original.md`` section 1.7):

- the percentile is on a **0-100 scale** and the value read is ``sorted[int(n * p / 100)]`` (clamped to
  the last sample; 0.0 with no samples);
- a sample *violates* the target when it is strictly greater than it;
- the budget is *exhausted* when the chosen percentile is strictly greater than the target.

What changed, and why:

- ``percentile`` values in (0, 1] are rejected with a ``ValueError``: the Go example passed ``0.95``
  meaning p95 to the 0-100 scale and silently watched the 1st percentile.
- p50, p95 and p99 are all available (Go computed one percentile).
- Recording is O(1): the sample goes into a ring and a violation counter for the window is kept up to
  date. Percentiles sort the window lazily, on read, and the sorted copy is cached until the next
  sample, so reading p50, p95 and p99 together sorts once (Go bubble-sorted twice per read: 1.39 ms
  with 1000 samples).
- ``exhausted`` needs no sort either: ``sorted[i] > target`` exactly when at most ``i`` samples of the
  window are ``<= target``, and that count is kept. So exhausted / recovered listeners fire inline on
  the very sample that flips it.
- ``compliance_rate`` is over the window; the lifetime rate (Go's only one) is kept as
  ``lifetime_compliance_rate``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..core.clock import Clock, loop_time
from ..core.events import Event, Listeners
from ..core.validate import check_int, check_name, check_number

__all__ = (
    "LatencyBudget",
    "LatencyBudgetEvent",
    "LatencyBudgetExhausted",
    "LatencyBudgetRecovered",
    "LatencyBudgetStatistics",
    "check_percentile",
)


def check_percentile(value: object, field: str = "percentile") -> float:
    """Validate a percentile on the 0-100 scale; reject the ambiguous fractions (0, 1].

    Raises:
        ValueError: if the value is not in (1, 100], naming ``field``; for a value in (0, 1] the
            message explains the scale (``0.95`` is p0.95 on this scale, pass ``95`` for p95).
        TypeError: if the value is not a number.
    """
    number = check_number(value, field, min_value=0.0, allow_zero=False, max_value=100.0)
    if number <= 1.0:
        raise ValueError(
            f"{field}={number!r} is ambiguous: percentiles are on a 0-100 scale, so {number!r} "
            f"would mean the {number:g}th percentile, not p{number * 100:g}. Pass "
            f"{number * 100:g} for p{number * 100:g} (values in (0, 1] are refused)."
        )
    return number


@dataclass(frozen=True, slots=True)
class LatencyBudgetEvent(Event):
    """Base of the latency-budget events: the chosen percentile's value at the transition."""

    percentile_latency: float
    target: float


@dataclass(frozen=True, slots=True)
class LatencyBudgetExhausted(LatencyBudgetEvent):
    """The chosen percentile rose above the target."""


@dataclass(frozen=True, slots=True)
class LatencyBudgetRecovered(LatencyBudgetEvent):
    """The chosen percentile is back at or below the target."""


@dataclass(frozen=True, slots=True)
class LatencyBudgetStatistics:
    """A snapshot of a :class:`LatencyBudget` (what the Prometheus collector reads).

    :ivar violations: samples ever recorded above the target (a counter).
    :ivar window_violations: samples above the target among those in the window.
    """

    name: str
    target: float
    percentile: float
    samples: int
    p50: float
    p95: float
    p99: float
    percentile_latency: float
    total: int
    violations: int
    window_violations: int
    compliance_rate: float
    lifetime_compliance_rate: float
    exhausted: bool
    exhausted_count: int


def _index(n: int, percentile: float) -> int:
    return min(int(n * percentile / 100.0), n - 1)


class LatencyBudget:
    """Watch a latency percentile against a target over a sliding window of samples.

    Args:
        name: the budget's name (events, metrics).
        target: the target latency in seconds (> 0).
        percentile: the percentile that must stay at or below ``target``, on a 0-100 scale, in
            (1, 100] (default 95.0).
        max_samples: the window: how many of the latest samples count (default 1000).
        clock: the clock used to timestamp events (default: the running loop's).
        listeners: called with :class:`LatencyBudgetExhausted` / :class:`LatencyBudgetRecovered`.

    Raises:
        ValueError: for an ambiguous or out-of-range ``percentile``, a non-positive ``target`` or
            ``max_samples``.
        TypeError: if an argument has the wrong type.
    """

    __slots__ = (
        "_clock",
        "_exhausted",
        "_exhausted_count",
        "_full_index",
        "_listeners",
        "_n",
        "_pos",
        "_ring",
        "_sorted",
        "_total",
        "_violations",
        "_window_violations",
        "max_samples",
        "name",
        "percentile",
        "target",
    )

    def __init__(
        self,
        name: str,
        *,
        target: float,
        percentile: float = 95.0,
        max_samples: int = 1000,
        clock: Clock | None = None,
        listeners: Iterable[Callable[[LatencyBudgetEvent], None]] = (),
    ) -> None:
        self.name = check_name(name)
        self.target = check_number(target, "target", min_value=0.0, allow_zero=False)
        self.percentile = check_percentile(percentile)
        self.max_samples = check_int(max_samples, "max_samples", min_value=1)
        self._full_index = _index(self.max_samples, self.percentile)
        self._clock = loop_time if clock is None else clock
        self._listeners: Listeners[LatencyBudgetEvent] = Listeners(listeners)
        self.reset()

    def reset(self) -> None:
        """Forget every sample and counter."""
        self._ring = [0.0] * self.max_samples
        self._pos = 0
        self._n = 0
        self._sorted: list[float] | None = None
        self._total = 0
        self._violations = 0
        self._window_violations = 0
        self._exhausted = False
        self._exhausted_count = 0

    def add_listener(self, listener: Callable[[LatencyBudgetEvent], None]) -> None:
        """Call ``listener`` (inline) on every exhausted / recovered transition."""
        self._listeners.add(listener)

    def remove_listener(self, listener: Callable[[LatencyBudgetEvent], None]) -> None:
        """Stop calling ``listener``; ``ValueError`` if it was not registered."""
        self._listeners.remove(listener)

    def record(self, latency: float) -> None:
        """Record one call's latency in seconds. O(1).

        Raises:
            ValueError: if ``latency`` is negative or NaN.
        """
        if not latency >= 0.0:
            raise ValueError(f"latency must be >= 0, got {latency!r}")
        target = self.target
        pos = self._pos
        ring = self._ring
        if latency <= target and ring[pos] <= target and self._n == self.max_samples:
            # A full window where neither the new sample nor the one it replaces is over the
            # target: the counts and the verdict stay as they are (the steady state).
            ring[pos] = latency
            pos += 1
            self._pos = pos if pos < self.max_samples else 0
            self._sorted = None
            self._total += 1
            return
        over = self._window_violations
        n = self._n
        if n == self.max_samples:
            if ring[pos] > target:
                over -= 1
            limit = self._full_index
        else:
            n = self._n = n + 1
            limit = _index(n, self.percentile)
        ring[pos] = latency
        pos += 1
        self._pos = pos if pos < self.max_samples else 0
        self._sorted = None
        self._total += 1
        if latency > target:
            over += 1
            self._violations += 1
        self._window_violations = over
        # sorted[limit] > target  <=>  at most `limit` samples are <= target.
        exhausted = n - over <= limit
        if exhausted is not self._exhausted:
            self._transition(exhausted)

    def _transition(self, exhausted: bool) -> None:
        self._exhausted = exhausted
        if exhausted:
            self._exhausted_count += 1
        if self._listeners:
            kind = LatencyBudgetExhausted if exhausted else LatencyBudgetRecovered
            value = self.percentile_latency()
            self._listeners.emit(kind(self.name, self._clock(), value, self.target))

    # --- reads -----------------------------------------------------------------------------------

    def _window(self) -> list[float]:
        cached = self._sorted
        if cached is None:
            n = self._n
            cached = self._sorted = sorted(self._ring if n == self.max_samples else self._ring[:n])
        return cached

    def percentile_latency(self, percentile: float | None = None) -> float:
        """The latency at ``percentile`` (default: the budget's own) over the window; 0.0 when
        empty.

        Raises:
            ValueError: for an ambiguous or out-of-range ``percentile``.
        """
        p = self.percentile if percentile is None else check_percentile(percentile)
        window = self._window()
        if not window:
            return 0.0
        return window[_index(len(window), p)]

    @property
    def p50(self) -> float:
        """The median latency over the window."""
        return self.percentile_latency(50.0)

    @property
    def p95(self) -> float:
        """The 95th-percentile latency over the window."""
        return self.percentile_latency(95.0)

    @property
    def p99(self) -> float:
        """The 99th-percentile latency over the window."""
        return self.percentile_latency(99.0)

    @property
    def samples(self) -> int:
        """How many samples the window holds."""
        return self._n

    @property
    def total(self) -> int:
        """Every sample ever recorded."""
        return self._total

    @property
    def violations(self) -> int:
        """Samples ever recorded above the target."""
        return self._violations

    @property
    def compliance_rate(self) -> float:
        """The share of the window's samples at or below the target (1.0 when empty)."""
        return 1.0 - self._window_violations / self._n if self._n else 1.0

    @property
    def lifetime_compliance_rate(self) -> float:
        """The share of every sample ever recorded at or below the target (Go's rate)."""
        return 1.0 - self._violations / self._total if self._total else 1.0

    @property
    def exhausted(self) -> bool:
        """True when the chosen percentile is strictly above the target."""
        return self._exhausted

    def statistics(self) -> LatencyBudgetStatistics:
        """A consistent snapshot (sorts the window at most once)."""
        return LatencyBudgetStatistics(
            name=self.name,
            target=self.target,
            percentile=self.percentile,
            samples=self._n,
            p50=self.p50,
            p95=self.p95,
            p99=self.p99,
            percentile_latency=self.percentile_latency(),
            total=self._total,
            violations=self._violations,
            window_violations=self._window_violations,
            compliance_rate=self.compliance_rate,
            lifetime_compliance_rate=self.lifetime_compliance_rate,
            exhausted=self._exhausted,
            exhausted_count=self._exhausted_count,
        )

    def __repr__(self) -> str:
        state = "exhausted" if self._exhausted else "ok"
        return (
            f"<LatencyBudget {self.name!r} p{self.percentile:g}<={self.target:g}s "
            f"[{self._n} samples, {self._window_violations} over, {state}]>"
        )
