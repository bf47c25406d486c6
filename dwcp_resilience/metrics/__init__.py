"""Prometheus metrics for the primitives: a pull collector, the metric families, an HTTP endpoint."""

from ._families import BACKOFF_BUCKETS, DEF_BUCKETS, FAMILIES, GO_FAMILIES, Family
from .collector import OTHER, ResilienceCollector
from .server import MetricsServer, serve_metrics

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
