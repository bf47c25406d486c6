"""Build ``dashboard.json`` from the metric families (one panel per family, a row per primitive).

Regenerate after adding a family: ``python -m dwcp_resilience.ops._dashboard > dashboard.json``
(in this folder); a test checks that the shipped file matches.
"""

from __future__ import annotations

import json
from typing import Any

from .._metrics import FAMILIES, Family

__all__ = ("build_dashboard", "render_dashboard")

RATE = "$__rate_interval"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# (row title, family-key prefix or prefixes, identity labels of the kind: a panel uses those its
# family has)
ROWS: tuple[tuple[str, str | tuple[str, ...], str], ...] = (
    ("Circuit breakers", "circuit_breaker_", "name"),
    ("Retries", "retry_", "policy"),
    ("Retry budgets", "retry_budget_", "budget"),
    ("Health checks", "health_check_", "checker, check"),
    ("Rate limiters", "rate_limiter_", "limiter"),
    ("Bulkheads", "bulkhead_", "bulkhead"),
    ("Adaptive concurrency limiters", "adaptive_concurrency_", "limiter"),
    ("Adaptive throttles", "adaptive_throttle_", "throttle"),
    ("Error budgets", "error_budget_", "budget"),
    ("Latency budgets", "latency_budget_", "budget"),
    ("Degradation", "degradation_", "manager"),
    ("Chaos", "chaos_", "chaos"),
    ("Hedges", "hedge_", "policy"),
    ("Fallbacks", "fallback_", "policy"),
    ("Manager operations", "operation_", "manager, operation"),
    ("Fleet state (Redis)", "fleet_", "kind, name"),
    ("Fleet membership and quorum", ("fleet_members", "fleet_breaker_reports_needed"),
     "kind, name"),
    ("Fleet rate limiters", "fleet_rate_limiter_", "limiter"),
    ("Fleet breakers", "fleet_breaker_", "name"),
    ("Fleet error budgets", "fleet_budget_", "budget"),
    ("Fleet error budgets, fleet-wide (latest snapshot)", "fleet_budget_snapshot", "budget"),
)  # fmt: skip


def _row_of(family: Family) -> int:
    """The row of the longest matching prefix (``retry_budget_`` before ``retry_``)."""
    matches = [(len(prefix), i) for i, (_, prefixes, _) in enumerate(ROWS)
               for prefix in ((prefixes,) if isinstance(prefixes, str) else prefixes)
               if family.key.startswith(prefix)]  # fmt: skip
    return max(matches)[1]


def _panel(family: Family, by: str, panel_id: int, x: int, y: int) -> dict[str, Any]:
    name = f"dwcp_{family.key}"
    ident = [label for label in by.split(", ") if label in family.labels]
    extra = [label for label in family.labels if label not in ident]
    group = ", ".join([*ident, *extra])
    by = ", ".join(ident)
    legend = " ".join("{{%s}}" % label for label in [*ident, *extra])  # noqa: UP031 - braces
    unit = "short"
    if family.type == "histogram":
        targets = [
            {"expr": f"histogram_quantile({q}, sum by (le, {by}) (rate({name}_bucket[{RATE}])))",
             "legendFormat": f"p{round(q * 100)} {legend}", "refId": ref}
            for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
        ]  # fmt: skip
        unit = "s"
        title = family.key.replace("_", " ")
    elif family.type == "counter":
        expr = f"sum by ({group}) (rate({name}[{RATE}]))"
        targets = [{"expr": expr, "legendFormat": legend, "refId": "A"}]
        unit = "ops"
        title = family.key.removesuffix("_total").replace("_", " ") + " (per second)"
    else:
        targets = [{"expr": name, "legendFormat": legend, "refId": "A"}]
        if family.key.endswith("_seconds"):
            unit = "s"
        elif family.key.endswith(("failure_rate", "call_rate", "remaining", "consumed",
                                  "objective", "probability")) and not family.key.startswith(
                                      "retry_budget"):  # fmt: skip
            unit = "percentunit"
        title = family.key.replace("_", " ")
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": title,
        "description": family.help,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 8, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom"},
            "tooltip": {"mode": "multi"},
        },
        "targets": [{**target, "datasource": DATASOURCE} for target in targets],
    }


def build_dashboard() -> dict[str, Any]:
    """The Grafana dashboard (namespace ``dwcp``) as a JSON-ready dict."""
    rows: list[list[Family]] = [[] for _ in ROWS]
    for family in FAMILIES:
        rows[_row_of(family)].append(family)
    panels: list[dict[str, Any]] = []
    panel_id, y = 1, 0
    for (title, _, by), families in zip(ROWS, rows, strict=True):
        panels.append({"id": panel_id, "type": "row", "title": title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})  # fmt: skip
        panel_id += 1
        y += 1
        for i, family in enumerate(families):
            panels.append(_panel(family, by, panel_id, (i % 3) * 8, y + (i // 3) * 8))
            panel_id += 1
        y += (len(families) + 2) // 3 * 8
    return {
        "title": "DWCP resilience",
        "uid": "dwcp-resilience",
        "tags": ["dwcp", "resilience"],
        "description": (
            "Circuit breakers, retries, health checks, rate limiters, bulkheads, adaptive "
            "concurrency limiters and throttles, error and latency budgets, degradation, chaos, "
            "hedges, fallbacks and fleet (Redis) state of dwcp_resilience (one panel per metric "
            "family)."
        ),
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def render_dashboard() -> str:
    """:func:`build_dashboard` as the text of ``dashboard.json``."""
    return json.dumps(build_dashboard(), indent=2) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render_dashboard(), end="")
