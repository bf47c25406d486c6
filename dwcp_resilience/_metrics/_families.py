"""The metric families: the 27 of the Go package (names, types, labels kept) and the added ones.

Names are relative to the namespace (``dwcp`` by default). Each family says how two series that end
up with the same labels combine (two primitives with the same name, or names folded into ``"other"``
by the cardinality cap): counters and histograms add up; each gauge names its rule (a breaker state
or a degradation level takes the worst, a health status the worst, a capacity adds up).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ("BACKOFF_BUCKETS", "DEF_BUCKETS", "FAMILIES", "FAMILY", "GO_FAMILIES", "Family")

DEF_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Go's ``prometheus.DefBuckets`` (request duration, health-check duration, bulkhead wait)."""

BACKOFF_BUCKETS: tuple[float, ...] = tuple(0.001 * 2**i for i in range(10))
"""Go's ``ExponentialBuckets(0.001, 2, 10)``: 1 ms to 512 ms (backoff delay)."""

Kind = Literal["counter", "gauge", "histogram"]
Merge = Literal["sum", "max", "min"]


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family.

    :ivar key: the name without the namespace (counters keep their ``_total``).
    :ivar type: ``counter``, ``gauge`` or ``histogram``.
    :ivar labels: the label names, identity labels first.
    :ivar merge: how two series with the same labels combine.
    :ivar buckets: a histogram's upper bounds (without ``+Inf``).
    :ivar go: True for the 27 families of the Go package.
    """

    key: str
    type: Kind
    help: str
    labels: tuple[str, ...]
    merge: Merge = "sum"
    buckets: tuple[float, ...] = ()
    go: bool = False

    def name(self, namespace: str) -> str:
        return f"{namespace}_{self.key}" if namespace else self.key


def _go(key: str, type_: Kind, help_: str, *labels: str, merge: Merge = "sum",
        buckets: tuple[float, ...] = ()) -> Family:  # fmt: skip
    return Family(key, type_, help_, labels, merge, buckets, go=True)


GO_FAMILIES: tuple[Family, ...] = (
    # circuit breaker (5)
    _go("circuit_breaker_state", "gauge",
        "Circuit breaker state (0=closed, 1=half-open, 2=open)", "name", merge="max"),
    _go("circuit_breaker_requests_total", "counter",
        "Requests seen by the circuit breaker, by result (success, failure, rejected)",
        "name", "result"),
    _go("circuit_breaker_failures_total", "counter",
        "Calls the circuit breaker counted as failures", "name"),
    _go("circuit_breaker_state_changes_total", "counter",
        "Circuit breaker state transitions", "name", "from_state", "to_state"),
    _go("circuit_breaker_request_duration_seconds", "histogram",
        "Duration of the calls the circuit breaker let through", "name", buckets=DEF_BUCKETS),
    # retry (4)
    _go("retry_attempts_total", "counter", "Attempts made, by attempt number", "policy", "attempt"),
    _go("retry_success_total", "counter", "Calls that succeeded (on any attempt)", "policy"),
    _go("retry_failures_total", "counter",
        "Calls that gave up, by reason (exhausted, not_retryable, rejected, deadline, budget, "
        "retry_after)",
        "policy", "reason"),
    _go("retry_backoff_delay_seconds", "histogram", "Backoff delays scheduled between attempts",
        "policy", buckets=BACKOFF_BUCKETS),
    # health (4)
    _go("health_check_status", "gauge", "Health check status (1=healthy, 0=unhealthy)",
        "checker", "check", merge="min"),
    _go("health_check_duration_seconds", "histogram", "Duration of health checks",
        "checker", "check", buckets=DEF_BUCKETS),
    _go("health_check_total", "counter", "Health checks run, by result (success, failure)",
        "checker", "check", "result"),
    _go("health_check_failures_total", "counter", "Health checks that failed", "checker", "check"),
    # rate limiter (3)
    _go("rate_limiter_allowed_total", "counter", "Requests the rate limiter admitted", "limiter"),
    _go("rate_limiter_rejected_total", "counter", "Requests the rate limiter refused", "limiter"),
    _go("rate_limiter_current_rate", "gauge", "Rate limit now (tokens per second)", "limiter"),
    # bulkhead (4)
    _go("bulkhead_concurrent", "gauge", "Calls running inside the bulkhead", "bulkhead"),
    _go("bulkhead_queued", "gauge", "Calls waiting for a bulkhead permit", "bulkhead"),
    _go("bulkhead_rejected_total", "counter", "Calls the bulkhead refused (full or wait timeout)",
        "bulkhead"),
    _go("bulkhead_wait_duration_seconds", "histogram", "Time calls waited for a bulkhead permit",
        "bulkhead", buckets=DEF_BUCKETS),
    # error budget (3)
    _go("error_budget_remaining", "gauge", "Error budget remaining (0-1)", "budget", merge="min"),
    _go("error_budget_consumed", "gauge", "Error budget consumed (0-1)", "budget", merge="max"),
    _go("error_budget_exhausted_total", "counter", "Times the error budget became exhausted",
        "budget"),
    # latency budget (4)
    _go("latency_budget_p50_seconds", "gauge", "Median latency over the budget's window",
        "budget", merge="max"),
    _go("latency_budget_p95_seconds", "gauge", "95th percentile latency over the budget's window",
        "budget", merge="max"),
    _go("latency_budget_p99_seconds", "gauge", "99th percentile latency over the budget's window",
        "budget", merge="max"),
    _go("latency_budget_violations_total", "counter", "Latencies recorded above the target",
        "budget"),
)  # fmt: skip

EXTRA_FAMILIES: tuple[Family, ...] = (
    Family("circuit_breaker_failure_rate", "gauge",
           "Failure rate over the circuit breaker's sliding window (0-1)", ("name",), "max"),
    Family("circuit_breaker_slow_call_rate", "gauge",
           "Slow-call rate over the circuit breaker's sliding window (0-1)", ("name",), "max"),
    Family("retry_budget_remaining", "gauge", "Retries the retry budget still allows in its window",
           ("budget",)),
    Family("retry_budget_requests_total", "counter", "Requests recorded by the retry budget",
           ("budget",)),
    Family("retry_budget_retries_total", "counter", "Retries the retry budget granted",
           ("budget",)),
    Family("retry_budget_rejected_total", "counter", "Retries the retry budget refused",
           ("budget",)),
    Family("rate_limiter_keys", "gauge", "Live keys of a keyed rate limiter", ("limiter",)),
    Family("error_budget_objective", "gauge", "The SLO target of the error budget (0-1)",
           ("budget",), "max"),
    Family("error_budget_requests_total", "counter", "Requests recorded by the error budget",
           ("budget",)),
    Family("error_budget_failures_total", "counter", "Failed requests recorded by the error budget",
           ("budget",)),
    Family("error_budget_burn_rate", "gauge",
           "Error budget burn rate over a window (1 = spending exactly the budget)",
           ("budget", "window"), "max"),
    Family("latency_budget_target_seconds", "gauge", "The latency budget's target", ("budget",),
           "min"),
    Family("degradation_level", "gauge",
           "Overall degradation level (0=normal, 1=degraded, 2=severely degraded, 3=emergency)",
           ("manager",), "max"),
    Family("degradation_component_level", "gauge", "Degradation level of one component",
           ("manager", "component"), "max"),
    Family("degradation_level_changes_total", "counter", "Changes of the overall degradation level",
           ("manager",)),
    Family("operation_requests_total", "counter",
           "Calls of a ResilienceManager operation, by outcome (success, failure, rejected, "
           "cancelled)", ("manager", "operation", "result")),
    Family("adaptive_concurrency_limit", "gauge",
           "Concurrency limit an adaptive concurrency limiter enforces now", ("limiter",)),
    Family("adaptive_concurrency_inflight", "gauge",
           "Calls holding a permit of an adaptive concurrency limiter", ("limiter",)),
    Family("adaptive_concurrency_queued", "gauge",
           "Calls waiting for a permit of an adaptive concurrency limiter", ("limiter",)),
    Family("adaptive_concurrency_admitted_total", "counter",
           "Calls an adaptive concurrency limiter admitted", ("limiter",)),
    Family("adaptive_concurrency_rejected_total", "counter",
           "Calls an adaptive concurrency limiter refused, by reason (full, timeout)",
           ("limiter", "reason")),
    Family("adaptive_concurrency_rtt_seconds", "gauge",
           "Mean latency of the last sample window of an adaptive concurrency limiter",
           ("limiter",), "max"),
    Family("adaptive_concurrency_baseline_rtt_seconds", "gauge",
           "Long-term latency baseline of a Gradient2 limiter (0 for AIMD)", ("limiter",), "max"),
    Family("adaptive_concurrency_probes_total", "counter",
           "Baseline probes an adaptive concurrency limiter ran (limit pinned to its minimum)",
           ("limiter",)),
    Family("adaptive_concurrency_wait_duration_seconds", "histogram",
           "Time calls waited for a permit of an adaptive concurrency limiter", ("limiter",),
           buckets=DEF_BUCKETS),
    Family("adaptive_throttle_rejection_probability", "gauge",
           "Probability that an adaptive throttle refuses a call now (0-1)", ("throttle",), "max"),
    Family("adaptive_throttle_requests", "gauge",
           "Requests in an adaptive throttle's window (local refusals included)", ("throttle",)),
    Family("adaptive_throttle_accepts", "gauge",
           "Requests the backend accepted in an adaptive throttle's window", ("throttle",)),
    Family("adaptive_throttle_allowed_total", "counter", "Calls an adaptive throttle let through",
           ("throttle",)),
    Family("adaptive_throttle_rejected_total", "counter",
           "Calls an adaptive throttle refused locally", ("throttle",)),
    Family("adaptive_throttle_outcomes_total", "counter",
           "Outcomes of the calls an adaptive throttle let through (accepted, refused, neutral)",
           ("throttle", "result")),
    Family("chaos_enabled", "gauge", "Chaos injection switched on (1) or off (0)", ("chaos",),
           "max"),
    Family("chaos_checks_total", "counter", "Calls chaos injection saw while enabled", ("chaos",)),
    Family("chaos_injections_total", "counter", "Faults injected, by fault kind",
           ("chaos", "fault")),
    Family("hedge_calls_total", "counter", "Calls through a hedge", ("policy",)),
    Family("hedge_attempts_started_total", "counter",
           "Hedged attempts started (beyond each call's first)", ("policy",)),
    Family("hedge_wins_total", "counter", "Calls won by a hedged attempt", ("policy",)),
    Family("hedge_budget_refused_total", "counter", "Hedged attempts the hedge budget refused",
           ("policy",)),
    Family("hedge_delay_seconds", "gauge",
           "Delay before the first hedge of a call starting now (a percentile follows latency)",
           ("policy",), "max"),
    Family("fallback_calls_total", "counter", "Calls through a fallback", ("policy",)),
    Family("fallback_used_total", "counter",
           "Calls the fallback answered, by reason (failure, rejected, degraded)",
           ("policy", "reason")),
    Family("fallback_handler_errors_total", "counter", "Fallback handlers that raised",
           ("policy",)),
    # fleet primitives on Redis (kind: limiter, breaker or budget); read from their statistics()
    # snapshots, never from Redis, so a scrape works (and says so) while Redis is down
    Family("fleet_shared_state", "gauge",
           "Fleet primitive on shared Redis state (1) or on its local fallback (0)",
           ("kind", "name"), "min"),
    Family("fleet_fallbacks_total", "counter",
           "Times a fleet primitive fell back from shared Redis state to local state",
           ("kind", "name")),
    Family("fleet_members", "gauge",
           "Live members of a fleet primitive as this instance last saw them, itself included "
           "(kind breaker: instances that polled the fleet breaker within its member TTL)",
           ("kind", "name"), "max"),
    Family("fleet_rate_limiter_admitted_total", "counter",
           "Requests a fleet rate limiter admitted, by who decided (shared: a Redis round trip, "
           "leased: this process' lease, local: the fallback limiter)", ("limiter", "source")),
    Family("fleet_rate_limiter_round_trips_total", "counter",
           "Script calls a fleet rate limiter made to Redis (failed ones included)",
           ("limiter",)),
    Family("fleet_rate_limiter_lease_tokens", "gauge",
           "Leased tokens this process may still use without a round trip", ("limiter",)),
    Family("fleet_breaker_reports_total", "counter",
           "Own breaker openings a fleet breaker published to Redis (re-publications included)",
           ("name",)),
    Family("fleet_breaker_reports_pending", "gauge",
           "Own openings waiting to be published (1 while one waits, e.g. during an outage)",
           ("name",), "max"),
    Family("fleet_breaker_quorum_trips_total", "counter",
           "Times a quorum of other instances' reports tripped the local breaker", ("name",)),
    Family("fleet_breaker_reporters", "gauge",
           "Other instances that reported an opening within the window, at the last poll",
           ("name",), "max"),
    Family("fleet_breaker_polls_total", "counter", "Successful polls of the fleet breaker's "
           "shared state", ("name",)),
    Family("fleet_breaker_reports_needed", "gauge",
           "Reports from other instances needed to trip the local breaker, at the last poll (an "
           "absolute quorum, or a share of the other live members)", ("name",), "max"),
    Family("fleet_budget_unflushed_records", "gauge",
           "Records of this process not yet confirmed by Redis (pending and in flight)",
           ("budget",)),
    Family("fleet_budget_dropped_records_total", "counter",
           "Records discarded before Redis confirmed them (too old for the window)",
           ("budget",)),
    Family("fleet_budget_batches_total", "counter", "Batches of records Redis confirmed",
           ("budget",)),
    Family("fleet_budget_duplicate_batches_total", "counter",
           "Confirmed batches Redis had already applied (a lost reply, sent again)",
           ("budget",)),
    # the fleet-wide figures of the latest shared snapshot (taken in the background by the
    # budget's own task group; absent before the first one and while the latest was local only)
    Family("fleet_budget_snapshot_requests", "gauge",
           "Requests of the whole fleet in the budget's window, at the latest snapshot",
           ("budget",), "max"),
    Family("fleet_budget_snapshot_failures", "gauge",
           "Failed requests of the whole fleet in the budget's window, at the latest snapshot",
           ("budget",), "max"),
    Family("fleet_budget_snapshot_remaining", "gauge",
           "Error budget remaining for the whole fleet (0-1), at the latest snapshot",
           ("budget",), "min"),
    Family("fleet_budget_snapshot_burn_rate", "gauge",
           "Error budget burn rate of the whole fleet over the budget's window (1 = spending "
           "exactly the budget), at the latest snapshot", ("budget",), "max"),
    Family("fleet_budget_snapshot_exhausted", "gauge",
           "Fleet error budget exhausted (1) or not (0), at the latest snapshot", ("budget",),
           "max"),
    Family("fleet_budget_snapshots_total", "counter",
           "Fleet-wide snapshots of the error budget taken from Redis", ("budget",)),
)  # fmt: skip

FAMILIES: tuple[Family, ...] = GO_FAMILIES + EXTRA_FAMILIES
FAMILY: dict[str, Family] = {family.key: family for family in FAMILIES}
