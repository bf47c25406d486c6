"""Internal: the implementation behind :mod:`dwcp_resilience.prometheus`, the public metrics module.

A pull collector (``collector``), the metric families (``_families``), each primitive's reader
(``_readers``) and the HTTP endpoint (``server``). Import them from :mod:`dwcp_resilience.prometheus`;
this package's layout may change without notice. Inside the package, :mod:`dwcp_resilience.ops`
builds the dashboard from the families table imported from here.
"""

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
