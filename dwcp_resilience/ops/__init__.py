"""Operations files shipped with the package: alert rules, their promtool tests, a Grafana dashboard.

- ``alerts.yml``: the Go design note's four alerts (one fixed), multi-window burn-rate alerts (SRE
  workbook) with their recording rules, degradation and latency-budget alerts;
- ``alerts_test.yml``: ``promtool test rules`` cases, a firing and a non-firing one per alert;
- ``dashboard.json``: a Grafana dashboard with a panel per metric family.

They are written for the default metric namespace ``dwcp``; every loader takes ``namespace=`` and
renames, for another one, everything that carries it: metric names, recording-rule prefixes, rule
group names, alert names (``DWCPCircuitBreakerOpen`` becomes ``AcmeCircuitBreakerOpen`` for
``acme``), the words "DWCP" in annotations and comments, and the dashboard's title, uid and tags.

Every alert has a ``runbook_url`` annotation: :data:`DEFAULT_RUNBOOK_URL` (``docs/runbook.md`` of
the project) plus ``#`` and the alert's section, whose heading is the alert name without its
namespace prefix. ``runbook_url=`` points them at your own copy of the runbook. ``print_ops`` is
what ``python -m dwcp_resilience ops alerts|dashboard|tests`` prints.
"""

from __future__ import annotations

import json
import re
import sys
from importlib import resources
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

__all__ = (
    "DEFAULT_NAMESPACE",
    "DEFAULT_RUNBOOK_URL",
    "FILES",
    "alert_tests",
    "alerts",
    "dashboard",
    "dashboard_queries",
    "path",
    "print_ops",
    "runbook_anchors",
    "write_ops",
)

FILES: dict[str, str] = {
    "alerts": "alerts.yml",
    "tests": "alerts_test.yml",
    "dashboard": "dashboard.json",
}
"""What :func:`print_ops` knows, and the file each one is."""

DEFAULT_NAMESPACE = "dwcp"
"""The metric namespace the shipped files are written for."""

DEFAULT_RUNBOOK_URL = "https://github.com/dwcp-resilience/dwcp-resilience/blob/main/docs/runbook.md"
"""Where the shipped alerts' ``runbook_url`` annotations point (before ``#section``)."""

_NAMESPACE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
# Rewrites for another namespace, in this order. "dwcp_resilience" (the package) is never renamed.
_QUOTED = re.compile(r'"dwcp"')  # the header's namespace, the dashboard's tag
_UID = re.compile(r'"dwcp-resilience"')  # the dashboard's uid
_ALERT_PREFIX = re.compile(r"\bDWCP(?=[A-Z][a-z])")  # DWCPCircuitBreakerOpen
_WORD = re.compile(r"\bDWCP\b")  # "DWCP circuit breaker db is open", the dashboard's title
_METRIC_PREFIX = re.compile(r"\bdwcp_(?!resilience\b)")  # metrics and rule group names
_RECORD_PREFIX = re.compile(r"\bdwcp:")
_RUNBOOK = re.compile(r"^\s*runbook_url: \"([^\"#]*)#([a-z0-9-]+)\"$", flags=re.MULTILINE)


def path(what: str) -> Path:
    """The installed file for ``what`` (``alerts``, ``tests`` or ``dashboard``).

    Raises:
        ValueError: for another ``what``.
    """
    if what not in FILES:
        raise ValueError(f"what must be one of {', '.join(FILES)}, got {what!r}")
    return Path(str(resources.files(__name__).joinpath(FILES[what])))


def _check_namespace(namespace: object) -> str:
    if not isinstance(namespace, str) or (namespace and not _NAMESPACE.match(namespace)):
        raise ValueError(f"namespace must be a valid metric name prefix, got {namespace!r}")
    return namespace


def _check_runbook_url(url: object) -> str:
    if isinstance(url, str) and not any(c.isspace() or c in '#"' for c in url):
        parts = urlsplit(url)
        if parts.scheme in {"http", "https"} and parts.netloc:
            return url
    raise ValueError(f"runbook_url must be an absolute http(s) URL without a '#' part, got {url!r}")


def _renamed(text: str, namespace: str) -> str:
    """``text`` with every mark of the ``dwcp`` namespace changed to ``namespace``."""
    word = namespace or "resilience"
    camel = "".join(part[:1].upper() + part[1:] for part in word.split("_"))
    uid = f"{namespace}-resilience" if namespace else "resilience"
    text = _QUOTED.sub(f'"{namespace}"', text)
    text = _UID.sub(f'"{uid[:40]}"', text)  # Grafana uids have at most 40 characters
    text = _ALERT_PREFIX.sub(camel, text)
    text = _WORD.sub(word, text)
    text = _METRIC_PREFIX.sub(f"{namespace}_" if namespace else "", text)
    return _RECORD_PREFIX.sub(f"{word}:", text)


def _read(what: str, namespace: str, runbook_url: str | None = None) -> str:
    text = path(what).read_text(encoding="utf-8")
    if namespace != DEFAULT_NAMESPACE:
        text = _renamed(text, _check_namespace(namespace))
    if runbook_url is not None:
        base = _check_runbook_url(runbook_url)
        text = text.replace(f"{DEFAULT_RUNBOOK_URL}#", f"{base}#")
    return text


def runbook_anchors(text: str | None = None) -> dict[str, str]:
    """``{alert name: runbook section anchor}`` of the alert rules ``text`` (default: the shipped
    ones): the part after ``#`` of each alert's ``runbook_url``."""
    text = alerts() if text is None else text
    names = re.findall(r"^\s*- alert: (\w+)$", text, flags=re.MULTILINE)
    anchors = [anchor for _, anchor in _RUNBOOK.findall(text)]
    if len(names) != len(anchors):
        raise ValueError(f"{len(names)} alerts but {len(anchors)} runbook_url annotations")
    return dict(zip(names, anchors, strict=True))


def alerts(namespace: str = DEFAULT_NAMESPACE, *, runbook_url: str | None = None) -> str:
    """The alert and recording rules (YAML) for metrics under ``namespace``.

    Args:
        namespace: the metric namespace (see the module docstring for what it renames).
        runbook_url: where ``docs/runbook.md`` is served (default :data:`DEFAULT_RUNBOOK_URL`).

    Raises:
        ValueError: an invalid namespace, or a ``runbook_url`` that is not an absolute http(s)
            URL without a ``#`` part.
    """
    return _read("alerts", namespace, runbook_url)


def alert_tests(namespace: str = DEFAULT_NAMESPACE, *, runbook_url: str | None = None) -> str:
    """The promtool unit tests (YAML) of :func:`alerts` with the same arguments; they load
    ``alerts.yml`` from their folder."""
    return _read("tests", namespace, runbook_url)


def dashboard(namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
    """The Grafana dashboard, parsed."""
    data: dict[str, Any] = json.loads(_read("dashboard", namespace))
    return data


def dashboard_queries(namespace: str = DEFAULT_NAMESPACE) -> list[tuple[str, str]]:
    """Every ``(panel title, PromQL expression)`` of the dashboard, in order."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard(namespace)["panels"]
        for target in panel.get("targets", ())
    ]


def write_ops(
    directory: str | Path, namespace: str = DEFAULT_NAMESPACE, *, runbook_url: str | None = None
) -> dict[str, Path]:
    """Write the three files into ``directory`` (created if needed); return their paths by kind.

    Then ``promtool check rules alerts.yml`` and ``promtool test rules alerts_test.yml`` run there.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for what, name in FILES.items():
        target = folder / name
        target.write_text(_read(what, namespace, runbook_url), encoding="utf-8")
        written[what] = target
    return written


def print_ops(
    what: str,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    runbook_url: str | None = None,
    file: TextIO | None = None,
) -> None:
    """Print ``alerts``, ``tests`` or ``dashboard`` (for ``python -m dwcp_resilience ops ...``).

    Raises:
        ValueError: for another ``what``, an invalid namespace or an invalid ``runbook_url``.
    """
    text = _read(what, namespace, runbook_url)
    out = sys.stdout if file is None else file
    out.write(text if text.endswith("\n") else text + "\n")
