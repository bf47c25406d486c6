"""Prometheus metrics for ``dwcp_resilience`` (needs ``prometheus_client``).

- :class:`ResilienceCollector` exposes the 27 metrics of the Go package under their Go names, types
  and labels (namespace ``dwcp`` by default), plus the ones Go lacked, read from the primitives'
  ``statistics()`` at scrape time: no ``prometheus_client`` call on the hot path.
- :func:`serve_metrics` serves ``/metrics`` over HTTP on 127.0.0.1.

Example::

    registry = CollectorRegistry()
    collector = ResilienceCollector(registry=registry)
    collector.track_manager(manager)
    server = serve_metrics(registry)  # from inside the running loop; server.port, server.close()

Notes:

- A breaker fills ``dwcp_circuit_breaker_request_duration_seconds`` only with
  ``record_latency=True`` (or a ``slow_call_duration``): otherwise its calls read no clock.
- Families beyond Go's 27 (see :data:`FAMILIES`): ``circuit_breaker_failure_rate``,
  ``circuit_breaker_slow_call_rate``, ``retry_budget_*``, ``rate_limiter_keys``,
  ``error_budget_objective``/``requests_total``/``failures_total``/``burn_rate``,
  ``latency_budget_target_seconds``, ``degradation_*``, ``chaos_*``, ``adaptive_concurrency_*``
  (the current limit, in flight, queued, admitted, rejected by reason, window and baseline latency,
  probes, wait histogram), ``adaptive_throttle_*`` (rejection probability, window requests and
  accepts, allowed, rejected, outcomes), and
  ``operation_requests_total{manager, operation, result}`` for a tracked ``ResilienceManager``,
  and ``fleet_*`` for the Redis fleet primitives (``fleet_shared_state{kind, name}``,
  ``fleet_fallbacks_total``, ``fleet_members{kind, name}``, ``fleet_rate_limiter_*``,
  ``fleet_breaker_*``, ``fleet_budget_*`` with the fleet-wide ``fleet_budget_snapshot_*``). They
  are read from the primitives' cached state, which their own background tasks refresh: a scrape
  never calls Redis.
- Tracking holds a strong reference: :meth:`ResilienceCollector.untrack` what you drop.
- The alert rules and the dashboard for these metrics are in :mod:`dwcp_resilience.ops`.

This is the public module for metrics: import from here. The implementation lives in the private
package ``dwcp_resilience._metrics``, whose layout may change. The core never imports this module.
"""

from ._metrics import (
    BACKOFF_BUCKETS,
    DEF_BUCKETS,
    FAMILIES,
    GO_FAMILIES,
    OTHER,
    Family,
    MetricsServer,
    ResilienceCollector,
    serve_metrics,
)

__all__ = (
    "BACKOFF_BUCKETS",
    "DEF_BUCKETS",
    "FAMILIES",
    "GO_FAMILIES",
    "OTHER",
    "Family",
    "MetricsServer",
    "ResilienceCollector",
    "serve_metrics",
)
