"""What each primitive's ``statistics()`` snapshot contributes to the metric families.

The primitives are recognised by class, imported lazily (``importlib``) so that this module imports
nothing from the policies at import time and a primitive module that is absent only leaves its
families empty. A reader gets the snapshot, the folded identity labels and a :class:`Sink`.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from ._families import DEF_BUCKETS, FAMILY, Family

__all__ = ("READERS", "Sink", "classify", "duration_label")

_STATE_NAMES = ("closed", "half-open", "open")


class Sink:
    """Samples by family and labels; same labels combine by the family's merge rule."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[str, dict[tuple[str, ...], Any]] = {key: {} for key in FAMILY}

    def add(self, key: str, labels: tuple[str, ...], value: float) -> None:
        series = self.values[key]
        old = series.get(labels)
        if old is None:
            series[labels] = float(value)
            return
        merge = FAMILY[key].merge
        series[labels] = old + value if merge == "sum" else (
            max(old, value) if merge == "max" else min(old, value))  # fmt: skip

    def histogram(
        self,
        key: str,
        labels: tuple[str, ...],
        *,
        bounds: Sequence[float],
        cumulative: Sequence[int],
        count: int,
        total: float,
    ) -> None:
        """Add a histogram given as upper ``bounds`` with ``cumulative`` counts (no ``+Inf``)."""
        counts = _rebucket(FAMILY[key], bounds, cumulative)
        counts.append(count)
        series = self.values[key]
        old = series.get(labels)
        if old is not None:
            counts = [a + b for a, b in zip(old[0], counts, strict=True)]
            total += old[1]
        series[labels] = (counts, total)


def _rebucket(family: Family, bounds: Sequence[float], cumulative: Sequence[int]) -> list[int]:
    """Cumulative counts at the family's bounds (exact when the bounds match, else a lower bound)."""
    if tuple(bounds) == family.buckets and len(cumulative) >= len(bounds):
        return list(cumulative[: len(bounds)])
    out: list[int] = []
    i, last = 0, 0
    for bound in family.buckets:
        while i < len(bounds) and i < len(cumulative) and bounds[i] <= bound * (1 + 1e-9):
            last = cumulative[i]
            i += 1
        out.append(last)
    return out


def duration_label(seconds: float) -> str:
    """``300.0`` -> ``"5m"``, ``3600.0`` -> ``"1h"``: a Prometheus-style duration."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and math.isclose(seconds % size, 0.0, abs_tol=1e-9):
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


Fold = Callable[[str, tuple[str, ...]], tuple[str, ...]]


def _breaker(s: Any, fold: Fold, out: Sink) -> None:
    name = fold("breaker", (s.name,))
    out.add("circuit_breaker_state", name, int(s.state))
    out.add("circuit_breaker_requests_total", (*name, "success"), s.successes)
    out.add("circuit_breaker_requests_total", (*name, "failure"), s.failures)
    out.add("circuit_breaker_requests_total", (*name, "rejected"), s.rejected)
    out.add("circuit_breaker_failures_total", name, s.failures)
    for (old, new), count in s.state_changes.items():
        out.add("circuit_breaker_state_changes_total",
                (*name, _STATE_NAMES[int(old)], _STATE_NAMES[int(new)]), count)  # fmt: skip
    bounds = s.latency_buckets
    out.histogram("circuit_breaker_request_duration_seconds", name, bounds=bounds,
                  cumulative=s.latency_counts[: len(bounds)], count=s.latency_count,
                  total=s.latency_sum)  # fmt: skip
    out.add("circuit_breaker_failure_rate", name, s.failure_rate)
    out.add("circuit_breaker_slow_call_rate", name, s.slow_call_rate)


def _retry(s: Any, fold: Fold, out: Sink) -> None:
    policy = fold("retry", (s.name,))
    slots = len(s.attempts)
    for i, count in enumerate(s.attempts):
        number = str(i + 1) if i + 1 < slots or slots >= s.max_attempts else f"{i + 1}+"
        out.add("retry_attempts_total", (*policy, number), count)
    out.add("retry_success_total", policy, s.successes)
    for reason, count in s.failures:
        out.add("retry_failures_total", (*policy, reason), count)
    out.histogram("retry_backoff_delay_seconds", policy, bounds=s.backoff_buckets,
                  cumulative=s.backoff_counts, count=s.backoff_count,
                  total=s.backoff_sum)  # fmt: skip


def _retry_budget(s: Any, fold: Fold, out: Sink) -> None:
    budget = fold("retry_budget", (s.name,))
    out.add("retry_budget_remaining", budget, s.remaining)
    out.add("retry_budget_requests_total", budget, s.total_requests)
    out.add("retry_budget_retries_total", budget, s.total_retries)
    out.add("retry_budget_rejected_total", budget, s.total_rejected)


def _health(s: Any, fold: Fold, out: Sink) -> None:
    for check in s.checks:
        labels = fold("health", (s.name, check.name))
        if check.healthy is not None:
            out.add("health_check_status", labels, 1.0 if check.healthy else 0.0)
        counts = check.duration_buckets
        out.histogram("health_check_duration_seconds", labels, bounds=DEF_BUCKETS,
                      cumulative=counts[: len(DEF_BUCKETS)], count=counts[-1],
                      total=check.duration_sum)  # fmt: skip
        out.add("health_check_total", (*labels, "success"), check.checks - check.failures)
        out.add("health_check_total", (*labels, "failure"), check.failures)
        out.add("health_check_failures_total", labels, check.failures)


def _limiter(s: Any, fold: Fold, out: Sink) -> None:
    limiter = fold("limiter", (s.name,))
    out.add("rate_limiter_allowed_total", limiter, s.allowed)
    out.add("rate_limiter_rejected_total", limiter, s.rejected)
    out.add("rate_limiter_current_rate", limiter, s.rate)


def _keyed_limiter(s: Any, fold: Fold, out: Sink) -> None:
    _limiter(s, fold, out)
    out.add("rate_limiter_keys", fold("limiter", (s.name,)), s.keys)


def _bulkhead(s: Any, fold: Fold, out: Sink) -> None:
    bulkhead = fold("bulkhead", (s.name,))
    out.add("bulkhead_concurrent", bulkhead, s.concurrent)
    out.add("bulkhead_queued", bulkhead, s.queued)
    out.add("bulkhead_rejected_total", bulkhead, s.rejected)
    pairs = [(bound, count) for bound, count in s.wait_buckets if bound != math.inf]
    out.histogram("bulkhead_wait_duration_seconds", bulkhead, bounds=[b for b, _ in pairs],
                  cumulative=[c for _, c in pairs], count=s.wait_count,
                  total=s.wait_sum)  # fmt: skip


def _concurrency(s: Any, fold: Fold, out: Sink) -> None:
    limiter = fold("adaptive_concurrency", (s.name,))
    out.add("adaptive_concurrency_limit", limiter, s.limit)
    out.add("adaptive_concurrency_inflight", limiter, s.inflight)
    out.add("adaptive_concurrency_queued", limiter, s.queued)
    out.add("adaptive_concurrency_admitted_total", limiter, s.admitted)
    out.add("adaptive_concurrency_rejected_total", (*limiter, "full"), s.rejected_full)
    out.add("adaptive_concurrency_rejected_total", (*limiter, "timeout"), s.timed_out)
    out.add("adaptive_concurrency_rtt_seconds", limiter, s.rtt)
    out.add("adaptive_concurrency_baseline_rtt_seconds", limiter, s.baseline)
    out.add("adaptive_concurrency_probes_total", limiter, s.probes)
    pairs = [(bound, count) for bound, count in s.wait_buckets if bound != math.inf]
    out.histogram("adaptive_concurrency_wait_duration_seconds", limiter,
                  bounds=[b for b, _ in pairs], cumulative=[c for _, c in pairs],
                  count=s.wait_count, total=s.wait_sum)  # fmt: skip


def _throttle(s: Any, fold: Fold, out: Sink) -> None:
    throttle = fold("adaptive_throttle", (s.name,))
    out.add("adaptive_throttle_rejection_probability", throttle, s.probability)
    out.add("adaptive_throttle_requests", throttle, s.requests)
    out.add("adaptive_throttle_accepts", throttle, s.accepts)
    out.add("adaptive_throttle_allowed_total", throttle, s.admitted)
    out.add("adaptive_throttle_rejected_total", throttle, s.rejected)
    for result, count in (("accepted", s.accepted), ("refused", s.refused),
                          ("neutral", s.neutral)):  # fmt: skip
        out.add("adaptive_throttle_outcomes_total", (*throttle, result), count)


def _error_budget(s: Any, fold: Fold, out: Sink) -> None:
    budget = fold("error_budget", (s.name,))
    out.add("error_budget_remaining", budget, s.remaining)
    out.add("error_budget_consumed", budget, s.consumed)
    out.add("error_budget_exhausted_total", budget, s.exhausted_count)
    out.add("error_budget_objective", budget, s.slo)
    out.add("error_budget_requests_total", budget, s.lifetime_total)
    out.add("error_budget_failures_total", budget, s.lifetime_failed)
    for status in s.burn_rates:
        alert = status.alert
        out.add("error_budget_burn_rate", (*budget, duration_label(alert.long_window)),
                status.long_rate)  # fmt: skip
        out.add("error_budget_burn_rate", (*budget, duration_label(alert.short_window)),
                status.short_rate)  # fmt: skip


def _latency_budget(s: Any, fold: Fold, out: Sink) -> None:
    budget = fold("latency_budget", (s.name,))
    out.add("latency_budget_p50_seconds", budget, s.p50)
    out.add("latency_budget_p95_seconds", budget, s.p95)
    out.add("latency_budget_p99_seconds", budget, s.p99)
    out.add("latency_budget_violations_total", budget, s.violations)
    out.add("latency_budget_target_seconds", budget, s.target)


def _degradation(s: Any, fold: Fold, out: Sink) -> None:
    manager = fold("degradation", (s.name,))
    out.add("degradation_level", manager, int(s.level))
    out.add("degradation_level_changes_total", manager, s.level_changes)
    for component, level in s.component_levels.items():
        labels = fold("degradation_component", (s.name, component))
        out.add("degradation_component_level", labels, int(level))


def _chaos(s: Any, fold: Fold, out: Sink) -> None:
    chaos = fold("chaos", (s.name,))
    out.add("chaos_enabled", chaos, 1.0 if s.enabled else 0.0)
    out.add("chaos_checks_total", chaos, s.checks)
    for fault, count in s.injections_by_type.items():
        out.add("chaos_injections_total", (*chaos, fault), count)


def _hedge(s: Any, fold: Fold, out: Sink) -> None:
    policy = fold("hedge", (s.name,))
    out.add("hedge_calls_total", policy, s.calls)
    out.add("hedge_attempts_started_total", policy, s.hedges_started)
    out.add("hedge_wins_total", policy, s.hedge_wins)
    out.add("hedge_budget_refused_total", policy, s.budget_refusals)
    out.add("hedge_delay_seconds", policy, s.delay)


def _fallback(s: Any, fold: Fold, out: Sink) -> None:
    policy = fold("fallback", (s.name,))
    out.add("fallback_calls_total", policy, s.calls)
    for reason, count in s.fallbacks:
        out.add("fallback_used_total", (*policy, reason), count)
    out.add("fallback_handler_errors_total", policy, s.handler_errors)


def _operation(s: Any, fold: Fold, out: Sink) -> None:
    manager, stats = s
    labels = fold("operation", (manager, stats.operation))
    for result, count in (("success", stats.successes), ("failure", stats.failures),
                          ("rejected", stats.rejected), ("cancelled", stats.cancelled)):  # fmt: skip
        out.add("operation_requests_total", (*labels, result), count)


def _fleet(kind: str, ident: tuple[str, ...], shared: bool, fallbacks: int, out: Sink) -> None:
    out.add("fleet_shared_state", (kind, *ident), 1.0 if shared else 0.0)
    out.add("fleet_fallbacks_total", (kind, *ident), fallbacks)


def _fleet_limiter(s: Any, fold: Fold, out: Sink) -> None:
    limiter = fold("limiter", (s.name,))
    out.add("rate_limiter_allowed_total", limiter, s.admitted)
    out.add("rate_limiter_rejected_total", limiter, s.rejected)
    out.add("rate_limiter_current_rate", limiter, s.rate)
    _fleet("limiter", limiter, s.on_shared, s.fallbacks, out)
    for source, count in (("shared", s.shared), ("leased", s.leased), ("local", s.local)):
        out.add("fleet_rate_limiter_admitted_total", (*limiter, source), count)
    out.add("fleet_rate_limiter_round_trips_total", limiter, s.round_trips)
    out.add("fleet_rate_limiter_lease_tokens", limiter, s.lease_left)


def _fleet_breaker(s: Any, fold: Fold, out: Sink) -> None:
    name = fold("breaker", (s.name,))
    _fleet("breaker", name, s.shared, s.fallbacks, out)
    out.add("fleet_breaker_reports_total", name, s.reports_published)
    out.add("fleet_breaker_reports_pending", name, s.reports_pending)
    out.add("fleet_breaker_quorum_trips_total", name, s.quorum_trips)
    out.add("fleet_breaker_reporters", name, s.last_reporters)
    out.add("fleet_breaker_polls_total", name, s.polls)
    out.add("fleet_members", ("breaker", *name), s.members)
    out.add("fleet_breaker_reports_needed", name, s.reports_needed)


def _fleet_budget(s: Any, fold: Fold, out: Sink) -> None:
    budget = fold("error_budget", (s.name,))
    _fleet("budget", budget, s.shared, s.fallbacks, out)
    out.add("fleet_budget_unflushed_records", budget, s.pending_records + s.inflight_records)
    out.add("fleet_budget_dropped_records_total", budget, s.dropped_records)
    out.add("fleet_budget_batches_total", budget, s.batches)
    out.add("fleet_budget_duplicate_batches_total", budget, s.duplicates)
    out.add("fleet_budget_snapshots_total", budget, s.snapshots)
    snapshot = s.snapshot
    if snapshot is not None and snapshot.shared:  # a local-only figure is not the fleet's
        out.add("fleet_budget_snapshot_requests", budget, snapshot.total)
        out.add("fleet_budget_snapshot_failures", budget, snapshot.failed)
        out.add("fleet_budget_snapshot_remaining", budget, snapshot.remaining)
        out.add("fleet_budget_snapshot_burn_rate", budget, snapshot.burn_rate)
        out.add("fleet_budget_snapshot_exhausted", budget, 1.0 if snapshot.exhausted else 0.0)


Reader = Callable[[Any, Fold, Sink], None]

READERS: dict[str, Reader] = {
    "breaker": _breaker,
    "retry": _retry,
    "retry_budget": _retry_budget,
    "health": _health,
    "limiter": _limiter,
    "keyed_limiter": _keyed_limiter,
    "bulkhead": _bulkhead,
    "adaptive_concurrency": _concurrency,
    "adaptive_throttle": _throttle,
    "error_budget": _error_budget,
    "latency_budget": _latency_budget,
    "degradation": _degradation,
    "chaos": _chaos,
    "hedge": _hedge,
    "fallback": _fallback,
    "operation": _operation,
    "fleet_limiter": _fleet_limiter,
    "fleet_breaker": _fleet_breaker,
    "fleet_budget": _fleet_budget,
}

# (module, class, kind); subclasses first (an adaptive limiter is read as a limiter).
_CLASSES = (
    ("dwcp_resilience.policies.breaker", "CircuitBreaker", "breaker"),
    ("dwcp_resilience.policies.retry", "Retry", "retry"),
    ("dwcp_resilience.policies.retry_budget", "RetryBudget", "retry_budget"),
    ("dwcp_resilience.slo.health", "HealthMonitor", "health"),
    ("dwcp_resilience.policies.adaptive", "AdaptiveRateLimiter", "limiter"),
    ("dwcp_resilience.policies.ratelimit", "RateLimiter", "limiter"),
    ("dwcp_resilience.policies.keyed", "KeyedRateLimiter", "keyed_limiter"),
    ("dwcp_resilience.policies.bulkhead", "Bulkhead", "bulkhead"),
    ("dwcp_resilience.policies.concurrency", "AdaptiveConcurrencyLimiter", "adaptive_concurrency"),
    ("dwcp_resilience.policies.throttle", "AdaptiveThrottle", "adaptive_throttle"),
    ("dwcp_resilience.slo.error_budget", "ErrorBudget", "error_budget"),
    ("dwcp_resilience.slo.latency_budget", "LatencyBudget", "latency_budget"),
    ("dwcp_resilience.slo.degradation", "DegradationManager", "degradation"),
    ("dwcp_resilience.policies.chaos", "Chaos", "chaos"),
    ("dwcp_resilience.policies.hedge", "Hedge", "hedge"),
    ("dwcp_resilience.policies.fallback", "Fallback", "fallback"),
    ("dwcp_resilience.manager", "ResilienceManager", "manager"),
)

# The fleet primitives need the ``redis`` extra. They are looked up in ``sys.modules`` only, never
# imported: an instance's module is loaded already, and tracking anything else must not import
# ``redis.asyncio`` (nor fail without it). A FleetBreaker's local breaker and a FleetErrorBudget's
# local budget are read with it (see the collector's ``_expand``).
_FLEET_CLASSES = (
    ("dwcp_resilience.redis.limiter", "RedisRateLimiter", "fleet_limiter"),
    ("dwcp_resilience.redis.breaker", "FleetBreaker", "fleet_breaker"),
    ("dwcp_resilience.redis.budget", "FleetErrorBudget", "fleet_budget"),
)


@cache
def _known() -> tuple[tuple[type, str], ...]:
    found: list[tuple[type, str]] = []
    for module, name, kind in _CLASSES:
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):  # a primitive not written (or renamed): no samples
            continue
        found.append((cls, kind))
    return tuple(found)


def classify(obj: object) -> str | None:
    """The kind of ``obj`` (a key of :data:`READERS`, or ``"manager"``), or ``None``."""
    for cls, kind in _known():
        if isinstance(obj, cls):
            return kind
    for module, name, kind in _FLEET_CLASSES:
        fleet_cls = getattr(sys.modules.get(module), name, None)
        if isinstance(fleet_cls, type) and isinstance(obj, fleet_cls):
            return kind
    return None
