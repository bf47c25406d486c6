"""Operations files shipped with the package: alert rules, their promtool tests, a Grafana dashboard.

- ``alerts.yml``: the Go design note's four alerts (one fixed), multi-window burn-rate alerts (SRE
  workbook) with their recording rules, degradation and latency-budget alerts;
- ``alerts_test.yml``: ``promtool test rules`` cases, a firing and a non-firing one per alert;
- ``dashboard.json``: a Grafana dashboard with a panel per metric family.

They are written for the default metric namespace ``dwcp``; every loader takes ``namespace=`` and
rewrites the metric names (and recording-rule prefixes) for another one. ``print_ops`` is what
``python -m dwcp_resilience ops alerts|dashboard|tests`` prints.
"""

from __future__ import annotations

import json
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

__all__ = (
    "FILES",
    "alert_tests",
    "alerts",
    "dashboard",
    "dashboard_queries",
    "path",
    "print_ops",
    "write_ops",
)

FILES: dict[str, str] = {
    "alerts": "alerts.yml",
    "tests": "alerts_test.yml",
    "dashboard": "dashboard.json",
}
"""What :func:`print_ops` knows, and the file each one is."""

_NAMESPACE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_METRIC_PREFIX = re.compile(r"\bdwcp_")
_RECORD_PREFIX = re.compile(r"\bdwcp:")


def path(what: str) -> Path:
    """The installed file for ``what`` (``alerts``, ``tests`` or ``dashboard``).

    Raises:
        ValueError: for another ``what``.
    """
    if what not in FILES:
        raise ValueError(f"what must be one of {', '.join(FILES)}, got {what!r}")
    return Path(str(resources.files(__name__).joinpath(FILES[what])))


def _read(what: str, namespace: str) -> str:
    text = path(what).read_text(encoding="utf-8")
    if namespace == "dwcp":
        return text
    if not isinstance(namespace, str) or (namespace and not _NAMESPACE.match(namespace)):
        raise ValueError(f"namespace must be a valid metric name prefix, got {namespace!r}")
    metric, record = f"{namespace}_" if namespace else "", f"{namespace or 'resilience'}:"
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if not line.lstrip().startswith("#"):  # comments keep naming the package
            lines[i] = _RECORD_PREFIX.sub(record, _METRIC_PREFIX.sub(metric, line))
    return "".join(lines)


def alerts(namespace: str = "dwcp") -> str:
    """The alert and recording rules (YAML) for metrics under ``namespace``."""
    return _read("alerts", namespace)


def alert_tests(namespace: str = "dwcp") -> str:
    """The promtool unit tests (YAML) of :func:`alerts`; they load ``alerts.yml`` from their folder."""
    return _read("tests", namespace)


def dashboard(namespace: str = "dwcp") -> dict[str, Any]:
    """The Grafana dashboard, parsed."""
    data: dict[str, Any] = json.loads(_read("dashboard", namespace))
    return data


def dashboard_queries(namespace: str = "dwcp") -> list[tuple[str, str]]:
    """Every ``(panel title, PromQL expression)`` of the dashboard, in order."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard(namespace)["panels"]
        for target in panel.get("targets", ())
    ]


def write_ops(directory: str | Path, namespace: str = "dwcp") -> dict[str, Path]:
    """Write the three files into ``directory`` (created if needed); return their paths by kind.

    Then ``promtool check rules alerts.yml`` and ``promtool test rules alerts_test.yml`` run there.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for what, name in FILES.items():
        target = folder / name
        target.write_text(_read(what, namespace), encoding="utf-8")
        written[what] = target
    return written


def print_ops(what: str, *, namespace: str = "dwcp", file: TextIO | None = None) -> None:
    """Print ``alerts``, ``tests`` or ``dashboard`` (for ``python -m dwcp_resilience ops ...``).

    Raises:
        ValueError: for another ``what`` or an invalid namespace.
    """
    text = _read(what, namespace)
    out = sys.stdout if file is None else file
    out.write(text if text.endswith("\n") else text + "\n")
